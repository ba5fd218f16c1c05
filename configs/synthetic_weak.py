"""AADC-Net (`aadc`) on the weakly labelled synthetic set, 2-core CPU.

    python -m jaxvad.train --config=configs/synthetic_weak.py --workdir=runs/synthetic_weak
    python -m jaxvad.evaluate --config=configs/synthetic_weak.py --workdir=runs/synthetic_weak

Videos carry only their labels (normal, or the categories of the anomalies in them); test
videos carry the frames of their anomalies. On first use a tiny random CLIP (32×32 input,
4×4 patches, E = 32) is written under data/ (`model.clip` empty; point it at a real CLIP folder
for real features) and the snippet features of both splits are computed with it, object-fused
(`data.objects = "auto"`: [centre view of the frame, max over its motion-detected objects'
crops], 2E = 64 wide; the same files as `python -m jaxvad.features --dataset=synthetic_weak
--synthetic=full --snippet=2 --objects=auto`). The synthetic anomalies are objects (rider,
vehicle, runner, against the flow, lawn crossing), a few pixels in a 32×32 view of the whole
frame but whole in an object's crop.

The feature variant was chosen on the TRAINING split only: the video-level AUC (top-5 mean
snippet score vs. the video label) of the trained model on the training videos, seeds 0 and 1:
frame-only features 0.789 / 0.772, object-fused 0.944 / 0.926; a 64×64-input random CLIP
(8×8 patches) 0.701 / 0.743 frame-only, 0.895 / 0.911 object-fused. Test numbers played no part.

Measured on the 2-core CPU from an empty data root: features of 200 videos ≈ 26 s (≈ 40 s
before object boxes skipped their velocities, 2026-12-05), 300 steps and evaluation ≈ 20 s.
Test split (seed 0 / 1 / 2): frame AUC 0.634 / 0.686 / 0.646 (the
untrained model, the trainer's initial parameters: 0.427 / 0.551 / 0.652), frame AP 0.619 /
0.688 / 0.650, category accuracy 0.15 / 0.15 / 0.20, mAP average 0.103 / 0.122 / 0.079.
Frame-only features give 0.631 / 0.712 (untrained 0.542 / 0.476), category accuracy 0.0 /
0.05. The untrained model's AUC swings with its initialisation (0.43-0.65), so training's gain
over it is +0.21 / +0.14 / −0.01: this config shows the pipeline, not the method's accuracy.
γ = 1 (the paper's best, Table IX) scales cosine similarities, so the class logits stay in
[−1, 1]; VadCLIP's scale 1/0.07 (γ ≈ 14.3) gives category accuracy 0.30 (seed 0, objects).
"""

from jaxvad.config import base_config, finalize, set_model


def get_config(arg=None):
    config = base_config()
    set_model(config, "aadc")
    config.data.dataset = "synthetic_weak"
    config.data.synthetic = "full"
    config.data.objects = "auto"  # Object-fused features (chosen on the training split).
    config.data.snippet_frames = 2  # Short clips: 24-48 snippets a video.
    config.data.snippets = 32
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 20
    config.train.update(batch_size=8, num_steps=300, log_every=20, checkpoint_every=100)
    config.eval.batch_size = 8
    return finalize(config, arg)
