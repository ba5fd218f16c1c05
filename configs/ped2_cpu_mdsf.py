"""UCSD Ped2 at 96×96 with MDSF, the teacher–student discrepancy fusion detector
(`jaxvad/model/mdsf.py`), sized for the 2-core CPU.

    python -m jaxvad.data_prep --dataset=ped2 --source=../shared/data/ped2 --output=data --size=96
    python -m jaxvad.train --config=configs/ped2_cpu_mdsf.py --workdir=runs/ped2_cpu_mdsf
    python -m jaxvad.evaluate --config=configs/ped2_cpu_mdsf.py --workdir=runs/ped2_cpu_mdsf

Widths 32-64-128 (teacher two convs per stage, student one), Adam at 1e-3 (the paper's 1e-4
is for its 50–100 epochs; this run has ≈ 7.6) with warm-up and cosine decay, 1,200 steps of
batch 16; the measured time and results are in the README's results table. α = 0: MDSF has
no motion component.
"""

from jaxvad.config import base_config, finalize, set_model


def get_config(arg=None):
    config = base_config()
    config.data.dataset = "ped2"
    config.data.source = "../shared/data/ped2"
    config.data.size = 96
    set_model(config, "mdsf")
    config.score.alpha = 0.0
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 100
    config.train.update(batch_size=16, num_steps=1200, log_every=20, checkpoint_every=400)
    return finalize(config, arg)
