"""AADC-Net (`aadc`) on ShanghaiTech's weakly supervised split (Zhong et al., as RTFM lists
it), one GPU.

    python -m jaxvad.features --clip=clip-vit-base-patch16 --dataset=shanghaitech \
        --source=shanghaitech --output=SHTClipFeatures
    python -m jaxvad.train --config=configs/shanghaitech_weak.py --workdir=runs/shanghaitech_weak \
        --config.data.features=SHTClipFeatures --config.data.source=shanghaitech \
        --config.model.clip=clip-vit-base-patch16
    python -m jaxvad.evaluate --config=configs/shanghaitech_weak.py --workdir=runs/shanghaitech_weak

`data.features`: the features with their `train.csv`/`test.csv` (this project's, above, or
RTFM's published I3D features with their lists); `data.source`: the official layout (the test
frame masks, `test_frame_mask/`). The AADC-Net paper gives no training settings; these follow
VadCLIP's UCF-Crime ones (256 snippets of 16 frames, batch 64, learning rate 2e-5, 10 epochs).
Measured: not yet run.
"""

from jaxvad.config import base_config, finalize, set_model


def get_config(arg=None):
    config = base_config()
    set_model(config, "aadc")
    config.data.dataset = "shanghaitech"
    config.data.objects = "none"
    config.data.snippet_frames = 16
    config.data.snippets = 256
    config.optimizer.learning_rate = 2e-5
    config.optimizer.warmup_steps = 20
    config.train.update(batch_size=64, num_epochs=10, log_every=10, checkpoint_every=100)
    config.eval.batch_size = 64
    return finalize(config, arg)
