"""ShanghaiTech Campus (RGB, 13 scenes, 274k training frames) at 224×224, bfloat16 compute:
for several GPUs (`launch/`).

    python -m jaxvad.data_prep --dataset=shanghaitech --source=/path/to/shanghaitech --output=data
    python -m jaxvad.train --config=configs/shanghaitech.py --workdir=runs/shanghaitech

Measured: not yet run (see the README's results).
"""

from jaxvad.config import base_config, finalize


def get_config(arg=None):
    config = base_config()
    config.data.dataset = "shanghaitech"
    config.data.size = 224
    config.data.channels = 3
    config.model.dtype = "bfloat16"
    config.train.update(batch_size=64, num_epochs=5, log_every=50, checkpoint_every=1000)
    return finalize(config, arg)
