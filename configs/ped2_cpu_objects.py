"""UCSD Ped2 in object mode on the 2-core CPU: frames scored from their objects.

    python -m jaxvad.data_prep --dataset=ped2 --source=../shared/data/ped2 --output=data \
        --size=224 --objects=auto
    python -m jaxvad.train --config=configs/ped2_cpu_objects.py --workdir=runs/ped2_cpu_objects
    python -m jaxvad.evaluate --config=configs/ped2_cpu_objects.py --workdir=runs/ped2_cpu_objects

Each frame's objects come from the weight-free motion detector (`jaxvad/data/objects.py`); a
frame's score is the max over its objects. Which components make an object's score is chosen
without test labels (`score.components=("auto",)`, `jaxvad/component_choice.py`): training
objects turned into pseudo-anomalies (faster, reversed, grown, moved, scrambled), the set of
components that best separates them from the training frames. A quarter of the training
videos is held out of the model's training (`objects.holdout`): the choice, the error
component's calibration and the threshold use them. On this run it picks
('speed', 'position', 'deep'); `--config.score.components="('faster',)"` sets them by hand.
The predictor is trained on object samples (each box cut from its window of 224×224 frames,
resized to 64×64): its per-object error is the component "error", and its Grad-CAM runs inside
the crop in `jaxvad.explain`. How each setting was chosen, and what it measures: the README's
"Objects" section.
"""

from jaxvad.config import CPU_MODEL, base_config, finalize, set_object_mode


def get_config(arg=None):
    config = base_config()
    config.data.dataset = "ped2"
    config.data.source = "../shared/data/ped2"
    config.data.size = 224
    config.model.update(CPU_MODEL)
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 100
    config.train.update(batch_size=32, num_steps=1500, log_every=20, checkpoint_every=500)
    set_object_mode(config)
    # 64×64 crops: of 32 and 64, the one with the higher validation of the component choice on
    # the held-out training videos (README, "How each default was chosen"; no test label).
    config.objects.size = 64
    return finalize(config, arg)
