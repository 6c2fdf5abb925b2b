# shellcheck shell=bash
# CPU-list helpers shared by deploy/pin.sh and deploy/entrypoint.sh (sourced, never run).
#
# A CPU list is the kernel's format: "0-3,8,10-11". Every function prints its
# result on stdout and returns non-zero on bad input, so callers can `|| die`.
# The file locations can be redirected for tests:
#   REPRISE_PIN_PROC_STATUS  (default /proc/self/status)  -> Cpus_allowed_list
#   REPRISE_PIN_CGROUP       (default /sys/fs/cgroup)     -> cpuset and CPU quota
#   REPRISE_PIN_SYSFS        (default /sys)               -> NUMA node cpulists

# "0-3,8" -> "0 1 2 3 8" (sorted, unique).
cpus_expand() {
  local list=$1 part lo hi i out=() parts=()
  [[ $list =~ ^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$ ]] || return 1
  IFS=, read -ra parts <<<"$list"
  for part in "${parts[@]}"; do
    if [[ $part == *-* ]]; then
      lo=${part%-*} hi=${part#*-}
      ((10#$lo <= 10#$hi)) || return 1
      for ((i = 10#$lo; i <= 10#$hi; i++)); do out+=("$i"); done
    else
      out+=("$((10#$part))")
    fi
  done
  printf '%s\n' "${out[@]}" | sort -n -u | paste -s -d ' ' -
}

# "0 1 2 3 8" -> "0-3,8".
cpus_compress() {
  local cpu start='' prev='' out=''
  for cpu in $1; do
    if [[ -z $start ]]; then
      start=$cpu
    elif ((cpu != prev + 1)); then
      out+="${out:+,}$start$([[ $prev != "$start" ]] && echo "-$prev")"
      start=$cpu
    fi
    prev=$cpu
  done
  [[ -n $start ]] && out+="${out:+,}$start$([[ $prev != "$start" ]] && echo "-$prev")"
  printf '%s\n' "$out"
}

# Expanded CPUs present in both expanded lists.
cpus_intersect() {
  local a b out=()
  for a in $1; do
    for b in $2; do [[ $a == "$b" ]] && out+=("$a"); done
  done
  echo "${out[*]}"
}

# The CPUs this process may run on: its affinity mask (what sched_getaffinity returns).
allowed_cpus() {
  local status=${REPRISE_PIN_PROC_STATUS:-/proc/self/status} line
  line=$(grep -m1 '^Cpus_allowed_list:' "$status" 2>/dev/null) || return 1
  cpus_expand "$(echo "${line#*:}" | tr -d '[:space:]')"
}

# The container's cpuset from its cgroup (v2, then v1); nothing when unreadable.
cgroup_cpuset() {
  local root=${REPRISE_PIN_CGROUP:-/sys/fs/cgroup} f raw
  for f in "$root/cpuset.cpus.effective" "$root/cpuset/cpuset.effective_cpus" "$root/cpuset/cpuset.cpus"; do
    if [[ -r $f ]]; then
      raw=$(tr -d '[:space:]' <"$f")
      [[ -n $raw ]] && cpus_expand "$raw" && return 0
    fi
  done
  return 0
}

# CPUs the CFS quota allows, rounded up (cgroup v2 cpu.max, then v1); nothing when unlimited.
cgroup_quota_cpus() {
  local root=${REPRISE_PIN_CGROUP:-/sys/fs/cgroup} quota period
  if [[ -r $root/cpu.max ]]; then
    read -r quota period <"$root/cpu.max"
  elif [[ -r $root/cpu/cpu.cfs_quota_us && -r $root/cpu/cpu.cfs_period_us ]]; then
    quota=$(<"$root/cpu/cpu.cfs_quota_us") period=$(<"$root/cpu/cpu.cfs_period_us")
  else
    return 0
  fi
  [[ $quota =~ ^[0-9]+$ && $period =~ ^[0-9]+$ && $period -gt 0 ]] || return 0
  echo $(((quota + period - 1) / period))
}

# NUMA nodes holding any of the expanded CPUs, as a list ("0" or "0,1"); nothing without NUMA info.
numa_nodes_of() {
  local sysfs=${REPRISE_PIN_SYSFS:-/sys} dir node cpus nodes=()
  for dir in "$sysfs"/devices/system/node/node[0-9]*; do
    [[ -r $dir/cpulist ]] || continue
    node=${dir##*/node}
    cpus=$(cpus_expand "$(tr -d '[:space:]' <"$dir/cpulist")") || continue
    [[ -n $(cpus_intersect "$1" "$cpus") ]] && nodes+=("$node")
  done
  ((${#nodes[@]})) || return 0
  cpus_compress "$(printf '%s\n' "${nodes[@]}" | sort -n | paste -s -d ' ' -)"
}

pin_log() { echo "reprise-pin: $*" >&2; }
