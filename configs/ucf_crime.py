"""AADC-Net (`aadc`) on UCF-Crime's CLIP snippet features, one GPU.

    python -m jaxvad.train --config=configs/ucf_crime.py --workdir=runs/ucf_crime \
        --config.data.features=UCFClipFeatures --config.data.source=UCF_Crime \
        --config.model.clip=clip-vit-base-patch16
    python -m jaxvad.evaluate --config=configs/ucf_crime.py --workdir=runs/ucf_crime
    python -m jaxvad.explain --config=configs/ucf_crime.py --workdir=runs/ucf_crime --split=test

`data.features`: VadCLIP's published features (ViT-B/16, one file per crop `<video>__<k>.npy`,
512 wide) with their `train.csv`/`test.csv`, or this project's own (`python -m jaxvad.features
--dataset=ucf_crime ...`). `data.source`: the folder holding
`Temporal_Anomaly_Annotation_for_Testing_Videos.txt` (and, for the captions of `jaxvad.explain`,
the videos with `Anomaly_Train.txt`/`Anomaly_Test.txt`). `model.clip`: the local Hugging Face
CLIPModel folder the features came from (its text tower names the classes). Training and
evaluation restore these from the workdir's stored config.

The AADC-Net paper gives no training settings; these are VadCLIP's for UCF-Crime
(`src/ucf_option.py`): 256 snippets of 16 frames, batch 64, learning rate 2e-5, 10 epochs.
Measured: not yet run (no UCF-Crime features on the development machine).
"""

from jaxvad.config import base_config, finalize, set_model


def get_config(arg=None):
    config = base_config()
    set_model(config, "aadc")
    config.data.dataset = "ucf_crime"
    config.data.objects = "none"  # Published features are frame-only.
    config.data.snippet_frames = 16
    config.data.snippets = 256
    config.optimizer.learning_rate = 2e-5
    config.optimizer.warmup_steps = 20
    config.train.update(batch_size=64, num_epochs=10, log_every=10, checkpoint_every=100)
    config.eval.batch_size = 64
    return finalize(config, arg)
