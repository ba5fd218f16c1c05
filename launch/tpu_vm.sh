#!/usr/bin/env bash
# Run the same command on every worker of a Cloud TPU VM pod (one JAX process per worker;
# jax.distributed.initialize() detects the pod by itself), through `gcloud ... ssh --worker=all`.
set -euo pipefail

usage() {
  cat <<EOF
Usage: ${0##*/} [--dry-run] --tpu NAME --zone ZONE [--project P] [--repo DIR_ON_VM] -- COMMAND [ARG...]

Runs "cd DIR_ON_VM && COMMAND ARG..." on all workers of the TPU VM NAME:
  gcloud compute tpus tpu-vm ssh NAME --zone ZONE [--project P] --worker=all --command "..."

  --tpu NAME       TPU VM (pod slice) name
  --zone ZONE      its zone, e.g. us-central2-b
  --project P      GCP project (default: gcloud's configured project)
  --repo DIR       jaxvad checkout on every worker (default: jaxvad, i.e. ~/jaxvad)
  --dry-run        print the gcloud command, run nothing (gcloud need not be installed)
  -h, --help       show this help

Example:
  ${0##*/} --tpu my-v4-32 --zone us-central2-b -- \\
    python -m jaxvad.train --config=configs/ped2.py --workdir=/mnt/shared/runs/ped2
EOF
}

die() { echo "${0##*/}: $*" >&2; echo >&2; usage >&2; exit 2; }

# POSIX shell quoting (for the remote shell and for display): plain words stay as they are.
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}
quote_all() {
  local out="" arg
  for arg in "$@"; do out+="$(quote "$arg") "; done
  printf '%s' "${out% }"
}

dry_run=0 tpu="" zone="" project="" repo=jaxvad
while (($#)); do
  case $1 in
    --dry-run) dry_run=1; shift ;;
    --tpu | --zone | --project | --repo)
      (($# >= 2)) || die "$1 needs a value"
      case $1 in
        --tpu) tpu=$2 ;;
        --zone) zone=$2 ;;
        --project) project=$2 ;;
        --repo) repo=$2 ;;
      esac
      shift 2 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unexpected argument '$1' (the command goes after --)" ;;
  esac
done
[[ -n $tpu ]] || die "missing --tpu NAME"
[[ -n $zone ]] || die "missing --zone ZONE"
(($#)) || die "missing -- COMMAND"

# ssh starts in the remote home directory, so "~/x" is the same as "x" (and needs no expansion).
if [[ $repo == "~" ]]; then repo=.; fi
repo=${repo#"~/"}
remote="cd $(quote "$repo") && $(quote_all "$@")"

cmd=(gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone")
[[ -z $project ]] || cmd+=(--project "$project")
cmd+=(--worker=all --command "$remote")

if ((dry_run)); then
  quote_all "${cmd[@]}"
  echo
  exit 0
fi
command -v gcloud >/dev/null || { echo "${0##*/}: gcloud not found (try --dry-run)" >&2; exit 127; }
exec "${cmd[@]}"
