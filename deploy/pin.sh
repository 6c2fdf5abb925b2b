#!/usr/bin/env bash
# Pin a command to CPUs (and their NUMA memory), size its thread pools, then exec it.
#
#   deploy/pin.sh <cpu-list> -- <command...>        e.g. deploy/pin.sh 2-3 -- python -m inference_svc
#
# The same script pins the services in Kubernetes (through deploy/entrypoint.sh,
# which derives the list from the container's allowed CPUs) and in `make up`
# (devtools/devstack.py), so what is measured locally is what ships.
#
# How it pins (REPRISE_PIN_MODE=auto, the default):
#   1. numactl --physcpubind=<cpus> --membind=<nodes of those cpus>, when numactl
#      is installed, NUMA nodes are visible and a dry run is permitted. Inside a
#      container the dry run fails without the SYS_NICE capability: the default
#      seccomp profile allows set_mempolicy/mbind only to containers granted it.
#      --physcpubind, not --cpunodebind: the node may hold CPUs that the kubelet's
#      static CPU manager gave to other pods.
#   2. otherwise taskset -c <cpus> (CPUs pinned, memory placement left to the
#      kernel), with one log line saying why.
#   3. otherwise unpinned, with a log line.
# REPRISE_PIN_MODE=numactl makes step 1 mandatory (exit 69 when impossible),
# =taskset skips it, =none only sizes threads.
#
# Threads: OMP/MKL/OpenBLAS pools default to the number of CPUs in the list,
# capped by the cgroup CPU quota (a pod limited to 2 CPUs but allowed on 64
# must not start 64 threads); variables already set are respected.
# REPRISE_PINNED_CPUS and REPRISE_THREADS tell the command what was applied.
# Exits 64 on a malformed or disallowed CPU list.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=deploy/lib/cpus.sh
source "$here/lib/cpus.sh"

if [[ $# -lt 3 || $2 != -- ]]; then
  echo "usage: $0 <cpu-list> -- <command...>   (cpu-list like 0-3,8)" >&2
  exit 64
fi
requested=$1
shift 2

if ! cpus=$(cpus_expand "$requested"); then
  pin_log "invalid CPU list '$requested' (expected the kernel's format, e.g. 0-3,8)"
  exit 64
fi
if allowed=$(allowed_cpus) && [[ -n $allowed ]]; then
  inside=$(cpus_intersect "$cpus" "$allowed")
  if [[ $inside != "$cpus" ]]; then
    pin_log "CPUs '$requested' are not all allowed here (allowed: $(cpus_compress "$allowed"))"
    exit 64
  fi
fi

list=$(cpus_compress "$cpus")
count=$(wc -w <<<"$cpus")
threads=$count
quota=$(cgroup_quota_cpus)
if [[ -n $quota ]] && ((quota >= 1 && quota < threads)); then
  threads=$quota
fi
export REPRISE_PINNED_CPUS=$list REPRISE_THREADS=$threads
for var in OMP_NUM_THREADS MKL_NUM_THREADS OPENBLAS_NUM_THREADS; do
  [[ -n ${!var:-} ]] || export "$var=$threads"
done

mode=${REPRISE_PIN_MODE:-auto}
case $mode in
  auto | numactl | taskset) ;;
  none)
    pin_log "pinning off (REPRISE_PIN_MODE=none); $threads threads"
    exec "$@"
    ;;
  *)
    pin_log "REPRISE_PIN_MODE must be auto, numactl, taskset or none, not '$mode'"
    exit 64
    ;;
esac

reason="REPRISE_PIN_MODE=taskset"
if [[ $mode != taskset ]]; then
  nodes=$(numa_nodes_of "$cpus")
  if ! command -v numactl >/dev/null 2>&1; then
    reason="numactl is not installed"
  elif [[ -z $nodes ]]; then
    reason="no NUMA topology visible under ${REPRISE_PIN_SYSFS:-/sys}/devices/system/node"
  elif err=$(numactl --physcpubind="$list" --membind="$nodes" true 2>&1); then
    pin_log "cpus $list ($count), memory node $nodes, $threads threads: numactl --physcpubind --membind"
    exec numactl --physcpubind="$list" --membind="$nodes" -- "$@"
  else
    reason="numactl is not permitted here ($(echo "$err" | head -n1)); --membind needs the SYS_NICE capability in a container"
  fi
  if [[ $mode == numactl ]]; then
    pin_log "REPRISE_PIN_MODE=numactl but $reason"
    exit 69
  fi
fi

if command -v taskset >/dev/null 2>&1; then
  pin_log "$reason; falling back to taskset: cpus $list ($count) pinned, memory not bound, $threads threads"
  exec taskset -c "$list" "$@"
fi
pin_log "$reason and taskset is missing: running UNPINNED, $threads threads"
exec "$@"
