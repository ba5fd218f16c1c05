#!/usr/bin/env bash
# Usage: bash data_prep/synthetic.sh OUTPUT [extra flags, e.g. --synthetic=tiny --seed=1]
set -euo pipefail
output_dir=${1:?usage: $0 OUTPUT [flags]}
shift
python -m jaxvad.data_prep --dataset=synthetic --output="$output_dir" "$@"
