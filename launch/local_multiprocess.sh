#!/usr/bin/env bash
# Run N copies of a command on this machine as one multi-process JAX job (CPU only), to test
# multi-process code without a cluster. Process i gets the jaxvad environment contract:
#   JAXVAD_COORDINATOR=127.0.0.1:PORT JAXVAD_NUM_PROCESSES=N JAXVAD_PROCESS_ID=i
#   JAX_PLATFORMS=cpu XLA_FLAGS="$XLA_FLAGS --xla_force_host_platform_device_count=D"
set -euo pipefail

usage() {
  cat <<EOF
Usage: ${0##*/} [--dry-run] [--processes N] [--devices D] [--port P] [--logdir DIR] -- COMMAND [ARG...]

Starts N processes of COMMAND on this machine (CPU only), each with D virtual CPU devices,
coordinated through 127.0.0.1:P. Output lines are prefixed with "[process i] ".

  --processes N  number of processes (default 2)
  --devices D    CPU devices per process (default 4)
  --port P       coordinator port (default: a free port picked with python3, else 12355)
  --logdir DIR   also write each process's output, unprefixed, to DIR/process_i.log
  --dry-run      print the environment and command of each process, run nothing
  -h, --help     show this help

Exit status: 0 if all processes succeed, else the status of the first one to fail (the others
are then killed). Example:
  ${0##*/} --processes 2 -- python -m jaxvad.train --config=configs/ped2_cpu.py --workdir=runs/mp
EOF
}

die() { echo "${0##*/}: $*" >&2; echo >&2; usage >&2; exit 2; }

is_uint() { [[ $1 =~ ^[0-9]+$ ]] && (( 10#$1 > 0 )); }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' \
    2>/dev/null || echo 12355
}

dry_run=0 processes=2 devices=4 port="" logdir=""
while (($#)); do
  case $1 in
    --dry-run) dry_run=1; shift ;;
    --processes | --devices | --port | --logdir)
      (($# >= 2)) || die "$1 needs a value"
      case $1 in
        --processes) processes=$2 ;;
        --devices) devices=$2 ;;
        --port) port=$2 ;;
        --logdir) logdir=$2 ;;
      esac
      shift 2 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unexpected argument '$1' (the command goes after --)" ;;
  esac
done
(($#)) || die "missing -- COMMAND"
is_uint "$processes" || die "--processes must be a positive integer, got '$processes'"
is_uint "$devices" || die "--devices must be a positive integer, got '$devices'"
port=${port:-$(free_port)}
{ is_uint "$port" && ((10#$port < 65536)); } || die "--port must be in 1..65535, got '$port'"

xla_flags="${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$devices"
env_of() {  # the environment assignments of process $1
  printf '%s\n' "JAXVAD_COORDINATOR=127.0.0.1:$port" "JAXVAD_NUM_PROCESSES=$processes" \
    "JAXVAD_PROCESS_ID=$1" "JAX_PLATFORMS=cpu" "XLA_FLAGS=$xla_flags"
}

if ((dry_run)); then
  for ((i = 0; i < processes; i++)); do
    line=""
    while IFS= read -r assignment; do
      line+="${assignment%%=*}=$(printf %q "${assignment#*=}") "
    done < <(env_of "$i")
    for arg in "$@"; do line+="$(printf %q "$arg") "; done
    echo "${line% }"
  done
  exit 0
fi

[[ -z $logdir ]] || mkdir -p "$logdir"

run_one() {  # process $1: run the command, prefix its output, return the command's status
  local i=$1 assignment
  shift
  while IFS= read -r assignment; do export "${assignment?}"; done < <(env_of "$i")
  set +e
  if [[ -n $logdir ]]; then
    "$@" </dev/null 2>&1 | tee "$logdir/process_$i.log" | sed -u "s/^/[process $i] /"
  else
    "$@" </dev/null 2>&1 | sed -u "s/^/[process $i] /"
  fi
  return "${PIPESTATUS[0]}"
}

# Job control puts each process (with its tee/sed and any children) in its own process group,
# so that `kill -- -PID` stops all of it.
set -m
pids=()
kill_all() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
}
# shellcheck disable=SC2317  # (only called from the traps below)
on_signal() {
  trap '' INT TERM
  echo "${0##*/}: interrupted, stopping all processes" >&2
  kill_all
  wait
  exit "$1"
}
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

for ((i = 0; i < processes; i++)); do
  run_one "$i" "$@" &
  pids+=("$!")
done
set +m  # the process groups stay; this only silences bash's job-status messages

status=0
for ((n = 0; n < processes; n++)); do
  rc=0
  wait -n || rc=$?
  if ((rc != 0 && status == 0)); then
    status=$rc
    echo "${0##*/}: a process exited with status $rc, stopping the others" >&2
    kill_all
  fi
done
exit "$status"
