"""UCSD Ped2 in the paper's setting: Adam, learning rate 1e-4, batch 4, 50 epochs, T = 4,
224×224 (`../shared/papers/explainable_transformer_vad.txt`); float32, no schedule, no clipping.

    python -m jaxvad.data_prep --dataset=ped2 --source=../shared/data/ped2 --output=data
    python -m jaxvad.train --config=configs/ped2_paper.py --workdir=runs/ped2_paper

Measured: not yet run (31,000 steps of batch 4: a GPU job).
"""

from jaxvad.config import base_config, finalize


def get_config(arg=None):
    config = base_config()
    config.history = 4
    config.data.dataset = "ped2"
    config.data.source = "../shared/data/ped2"
    config.data.size = 224
    config.optimizer.update(
        name="adam", learning_rate=1e-4, schedule="constant", grad_clip_norm=0.0
    )
    config.train.update(batch_size=4, num_epochs=50, log_every=50, checkpoint_every=2000)
    return finalize(config, arg)
