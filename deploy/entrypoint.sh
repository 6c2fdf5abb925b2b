#!/usr/bin/env bash
# Container entrypoint of every Reprise image: pin the service to the CPUs this
# container may use, size its threads from them, then exec the service.
#
#   ENTRYPOINT ["/app/deploy/entrypoint.sh"]
#   CMD ["python", "-m", "inference_svc"]
#
# The CPU list is the container's allowed CPUs: its affinity mask (what
# sched_getaffinity returns) intersected with the cgroup cpuset. Under the
# kubelet's static CPU manager, a Guaranteed pod with whole CPUs gets an
# exclusive cpuset, so this is exactly the CPUs the kubelet assigned; with the
# topology manager's single-numa-node policy they share one NUMA node, whose
# memory deploy/pin.sh then binds with numactl.
#
# Environment:
#   REPRISE_PIN_CPUS   use this CPU list instead of deriving it (e.g. "2-3")
#   REPRISE_PIN_MODE   auto (default) | numactl | taskset | none   (see deploy/pin.sh)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=deploy/lib/cpus.sh
source "$here/lib/cpus.sh"

if [[ $# -lt 1 ]]; then
  echo "usage: $0 <command...>" >&2
  exit 64
fi

if [[ -n ${REPRISE_PIN_CPUS:-} ]]; then
  list=$REPRISE_PIN_CPUS
else
  if ! allowed=$(allowed_cpus) || [[ -z $allowed ]]; then
    pin_log "cannot read the allowed CPUs (${REPRISE_PIN_PROC_STATUS:-/proc/self/status}); running unpinned"
    exec "$@"
  fi
  cpus=$allowed
  cpuset=$(cgroup_cpuset)
  if [[ -n $cpuset ]]; then
    both=$(cpus_intersect "$allowed" "$cpuset")
    # An affinity mask outside the cpuset cannot happen; if the files disagree, trust the mask.
    [[ -n $both ]] && cpus=$both
  fi
  list=$(cpus_compress "$cpus")
fi
exec "$here/pin.sh" "$list" -- "$@"
