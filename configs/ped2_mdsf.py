"""UCSD Ped2 with MDSF at its paper's size: 256×256 frames, Adam at 1e-4, 100 epochs (the
paper's range is 50–100), batch 32, bfloat16 compute; for a GPU.

    python -m jaxvad.data_prep --dataset=ped2 --source=../shared/data/ped2 --output=data --size=256
    python -m jaxvad.train --config=configs/ped2_mdsf.py --workdir=runs/ped2_mdsf

Widths 64-128-256 (the paper's networks are unspecified beyond "convolutional encoder–decoder";
its 14 M parameters are not reproduced). Measured: not yet run on a GPU (see the README's
results).
"""

from jaxvad.config import base_config, finalize, set_model


def get_config(arg=None):
    config = base_config()
    config.data.dataset = "ped2"
    config.data.source = "../shared/data/ped2"
    config.data.size = 256
    set_model(config, "mdsf")
    config.model.widths = (64, 128, 256)
    config.model.dtype = "bfloat16"
    config.score.alpha = 0.0
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-4
    config.train.update(batch_size=32, num_epochs=100, log_every=20, checkpoint_every=1000)
    return finalize(config, arg)
