"""UCSD Ped2 at 96×96 with the motion-enhanced masked autoencoder (`jaxvad/model/motion_mae.py`),
sized for the 2-core CPU.

    python -m jaxvad.data_prep --dataset=ped2 --source=../shared/data/ped2 --output=data --size=96
    python -m jaxvad.train --config=configs/ped2_cpu_motion_mae.py \
        --workdir=runs/ped2_cpu_motion_mae
    python -m jaxvad.evaluate --config=configs/ped2_cpu_motion_mae.py \
        --workdir=runs/ped2_cpu_motion_mae

The paper's Table 1 network (widths 32-64-128, 332,801 parameters on gray frames), Adam at
1e-3 (the paper's) with our warm-up and cosine decay, 1,500 steps of batch 32 (≈ 19 epochs of
the 2,534 training windows); the measured time and results are in the README's results table.
"""

from jaxvad.config import base_config, finalize, set_model


def get_config(arg=None):
    config = base_config()
    config.data.dataset = "ped2"
    config.data.source = "../shared/data/ped2"
    config.data.size = 96
    set_model(config, "motion_mae")
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 100
    config.train.update(batch_size=32, num_steps=1500, log_every=20, checkpoint_every=500)
    return finalize(config, arg)
