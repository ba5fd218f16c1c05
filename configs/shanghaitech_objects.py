"""ShanghaiTech Campus in object mode (RGB, 224×224, bfloat16): for several GPUs.

    python -m jaxvad.data_prep --dataset=shanghaitech --source=/path/to/shanghaitech \
        --output=data --size=224 --objects=auto
    python -m jaxvad.train --config=configs/shanghaitech_objects.py \
        --workdir=runs/shanghaitech_objects
    python -m jaxvad.evaluate --config=configs/shanghaitech_objects.py \
        --workdir=runs/shanghaitech_objects

Frames are scored from their objects (`jaxvad/object_scores.py`, the README's "Objects"), with
the settings measured on Ped2 at 240×360 (`configs/ped2_cpu_objects.py`); the detector's
thresholds (`jaxvad.data.objects.BoxSettings`) were chosen on Ped2 and the synthetic scene.
Measured: not yet run.
"""

from jaxvad.config import base_config, finalize, set_object_mode


def get_config(arg=None):
    config = base_config()
    config.data.dataset = "shanghaitech"
    config.data.size = 224
    config.data.channels = 3
    config.model.dtype = "bfloat16"
    config.train.update(batch_size=64, num_epochs=5, log_every=50, checkpoint_every=1000)
    set_object_mode(config)
    config.objects.size = 64  # 4×4 patches of 16 per crop.
    return finalize(config, arg)
