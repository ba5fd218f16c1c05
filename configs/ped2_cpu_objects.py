"""UCSD Ped2 in object mode on the 2-core CPU: frames scored from their objects' speeds.

    python -m jaxvad.data_prep --dataset=ped2 --source=../shared/data/ped2 --output=data \
        --size=96 --objects=auto
    python -m jaxvad.train --config=configs/ped2_cpu_objects.py --workdir=runs/ped2_cpu_objects
    python -m jaxvad.evaluate --config=configs/ped2_cpu_objects.py --workdir=runs/ped2_cpu_objects

Each frame's objects come from the weight-free motion detector (`jaxvad/data/objects.py`); an
object's score is the kNN density of its speed among the training objects, calibrated
leave-one-video-out (`jaxvad/object_scores.py`); a frame's score is the max over its objects.
The frame model (`ped2_cpu`'s) does not enter the object score: it is trained for 300 steps
only, for the run's checkpoint and the `score_rgb` / `score_flow` columns (with
`--config.objects.samples=True` it trains on object samples instead, and "error", each object's
model error, may join the components); `configs/ped2_cpu.py` trains it fully. How each
setting was chosen, and what it measures: the README's "Objects" section.
"""

from jaxvad.config import CPU_MODEL, base_config, finalize, set_object_mode


def get_config(arg=None):
    config = base_config()
    config.data.dataset = "ped2"
    config.data.source = "../shared/data/ped2"
    config.data.size = 96
    config.model.update(CPU_MODEL)
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 100
    config.train.update(batch_size=16, num_steps=300, log_every=20, checkpoint_every=300)
    set_object_mode(config, components=("speed",), k=1)
    return finalize(config, arg)
