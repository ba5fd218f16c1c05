"""UCSD Ped2 in object mode at full size (224×224, bfloat16): for a GPU.

    python -m jaxvad.data_prep --dataset=ped2 --source=../shared/data/ped2 --output=data \
        --size=224 --objects=auto
    python -m jaxvad.train --config=configs/ped2_objects.py --workdir=runs/ped2_objects
    python -m jaxvad.evaluate --config=configs/ped2_objects.py --workdir=runs/ped2_objects

Frames are scored from their objects (`jaxvad/object_scores.py`, the README's "Objects"), with
the settings measured on Ped2 at 240×360 (`configs/ped2_cpu_objects.py`); the detector's
thresholds (`jaxvad.data.objects.BoxSettings`) were chosen on Ped2 and the synthetic scene.
Measured: not yet run.
"""

from jaxvad.config import base_config, finalize, set_object_mode


def get_config(arg=None):
    config = base_config()
    config.data.dataset = "ped2"
    config.data.source = "../shared/data/ped2"
    config.data.size = 224
    config.model.dtype = "bfloat16"
    config.optimizer.learning_rate = 3e-4
    config.train.update(batch_size=32, num_epochs=60, log_every=20, checkpoint_every=500)
    set_object_mode(config)
    return finalize(config, arg)
