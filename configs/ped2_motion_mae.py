"""UCSD Ped2 with the motion-enhanced masked autoencoder at its paper's size: 200×200 gray
frames, the Table 1 network (332,801 parameters), Adam at 1e-3, batch 32; for a GPU.

    python -m jaxvad.data_prep --dataset=ped2 --source=../shared/data/ped2 --output=data --size=200
    python -m jaxvad.train --config=configs/ped2_motion_mae.py --workdir=runs/ped2_motion_mae

The paper decays the rate by 0.95 every 10 epochs and stops early on a validation loss it does
not define; this config runs 100 epochs with warm-up and cosine decay. Measured: not yet run on
a GPU (see the README's results).
"""

from jaxvad.config import base_config, finalize, set_model


def get_config(arg=None):
    config = base_config()
    config.data.dataset = "ped2"
    config.data.source = "../shared/data/ped2"
    config.data.size = 200
    set_model(config, "motion_mae")
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-3
    config.train.update(batch_size=32, num_epochs=100, log_every=20, checkpoint_every=1000)
    return finalize(config, arg)
