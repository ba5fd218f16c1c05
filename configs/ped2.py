"""UCSD Ped2 at full size (224×224, patch 16), bfloat16 compute: for a GPU.

    python -m jaxvad.data_prep --dataset=ped2 --source=../shared/data/ped2 --output=data
    python -m jaxvad.train --config=configs/ped2.py --workdir=runs/ped2

Measured: not yet run on a GPU (see the README's results).
"""

from jaxvad.config import base_config, finalize


def get_config(arg=None):
    config = base_config()
    config.data.dataset = "ped2"
    config.data.source = "../shared/data/ped2"
    config.data.size = 224
    config.model.dtype = "bfloat16"
    config.optimizer.learning_rate = 3e-4
    config.train.update(batch_size=32, num_epochs=60, log_every=20, checkpoint_every=500)
    return finalize(config, arg)
