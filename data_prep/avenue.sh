#!/usr/bin/env bash
# Usage: bash data_prep/avenue.sh SOURCE OUTPUT [extra flags, e.g. --size=224 --flow=dis]
set -euo pipefail
source_dir=${1:?usage: $0 SOURCE OUTPUT [flags]}
output_dir=${2:?usage: $0 SOURCE OUTPUT [flags]}
shift 2
python -m jaxvad.data_prep --dataset=avenue --source="$source_dir" --output="$output_dir" "$@"
