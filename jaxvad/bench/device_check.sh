#!/usr/bin/env bash
# The GPU numbers of the README in one run (≤ 8 minutes on one GPU), from the repository root:
#   bash jaxvad/bench/device_check.sh
# 1. `ped2` (224×224, full predictor, bf16) train samples/s and MFU, the 3D convolution as taps
#    and native (frame mode: configs/ped2.py trains on object samples otherwise);
# 2. the evaluation step (model only) and the streaming step, frames/s per batch of 1 and 64
#    (jaxvad.bench.watch: the full-window step is what jaxvad.evaluate runs);
# 3. watch frames/s with 1 and 64 synthetic 240×360 cameras, flow included.
# Packages missing on the machine (grain, tensorflow-datasets, ml-collections, ...) travel as
# wheels in .whl/ (see ../.library/device/README.md); they are installed first when present.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
# A fresh folder each run: what an earlier run installed (another version) is not imported.
if compgen -G ".whl/*.whl" >/dev/null; then
  site=$(mktemp -d)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .whl/*.whl || exit 1
  export PYTHONPATH=$site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
frame_mode=(--config.data.objects=none --config.objects.samples=False
            "--config.score.components=('error',)")
python3 -c "import jax; print('devices:', jax.devices())"
for conv in taps native; do
  echo "== ped2 train step, conv3d=$conv"
  timeout 150 python3 -m jaxvad.bench.train --config=configs/ped2.py "${frame_mode[@]}" \
    --config.model.conv3d="$conv" --steps=20
done
echo "== ped2 evaluation and streaming steps, and watch with 1 and 64 cameras"
timeout 200 python3 -m jaxvad.bench.watch --config=configs/ped2.py "${frame_mode[@]}" \
  --cameras=1,64 --frames=30
