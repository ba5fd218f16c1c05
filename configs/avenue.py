"""CUHK Avenue (RGB) at 224×224, bfloat16 compute: for a GPU. Frame labels: the mask-derived
version (3,712 abnormal frames) unless `--config.data.label_version=interval`.

    python -m jaxvad.data_prep --dataset=avenue --source=/path/to/avenue --output=data
    python -m jaxvad.train --config=configs/avenue.py --workdir=runs/avenue

Measured: not yet run (see the README's results).
"""

from jaxvad.config import base_config, finalize


def get_config(arg=None):
    config = base_config()
    config.data.dataset = "avenue"
    config.data.size = 224
    config.data.channels = 3
    config.model.dtype = "bfloat16"
    config.train.update(batch_size=32, num_epochs=20, log_every=50, checkpoint_every=1000)
    return finalize(config, arg)
