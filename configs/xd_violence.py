"""AADC-Net (`aadc`) on XD-Violence's CLIP snippet features, one GPU.

    python -m jaxvad.train --config=configs/xd_violence.py --workdir=runs/xd_violence \
        --config.data.features=XDClipFeatures --config.data.source=XD_Violence \
        --config.model.clip=clip-vit-base-patch16
    python -m jaxvad.evaluate --config=configs/xd_violence.py --workdir=runs/xd_violence
    python -m jaxvad.explain --config=configs/xd_violence.py --workdir=runs/xd_violence --split=test

`data.features`: VadCLIP's published features (ViT-B/16, `<video>__<k>.npy`, 512 wide) with
their `train.csv`/`test.csv`, or this project's own (`python -m jaxvad.features
--dataset=xd_violence ...`). `data.source`: the folder holding `annotations.txt` (and, for the
captions of `jaxvad.explain`, the videos under `train/` and `test/`). `model.clip`: the local
Hugging Face CLIPModel folder the features came from.

The AADC-Net paper gives no training settings; these are VadCLIP's for XD-Violence
(`src/xd_option.py`): 256 snippets of 16 frames, batch 96, learning rate 1e-5, 10 epochs.
Measured: not yet run (no XD-Violence features on the development machine).
"""

from jaxvad.config import base_config, finalize, set_model


def get_config(arg=None):
    config = base_config()
    set_model(config, "aadc")
    config.data.dataset = "xd_violence"
    config.data.objects = "none"  # Published features are frame-only.
    config.data.snippet_frames = 16
    config.data.snippets = 256
    config.optimizer.learning_rate = 1e-5
    config.optimizer.warmup_steps = 20
    config.train.update(batch_size=96, num_epochs=10, log_every=10, checkpoint_every=100)
    config.eval.batch_size = 64
    return finalize(config, arg)
