"""Which modality failed: appearance or motion, from the training-normalised errors.

Raw errors are not comparable (E_flow is tens of times smaller than E_rgb), so each is first
z-normalised with the mean and standard deviation of its values on the training (normal) video,
whatever normalisation the score itself uses: z_c = (E_c − μ_c) / σ_c. The larger z names the
modality: "motion" (an abnormal motion pattern) or "appearance" (an unusual appearance).
"""

from __future__ import annotations

import numpy as np

from jaxvad import scoring

SENTENCES = {
    "motion": (
        "Abnormal motion pattern: the motion error is {z_flow:+.1f} σ from its mean on normal "
        "video, the appearance error {z_rgb:+.1f} σ."
    ),
    "appearance": (
        "Unusual appearance: the appearance error is {z_rgb:+.1f} σ from its mean on normal "
        "video, the motion error {z_flow:+.1f} σ."
    ),
}


def training_z(errors: scoring.SplitErrors, normal: scoring.SplitErrors) -> dict[str, np.ndarray]:
    """z_rgb, z_flow `[N]` of `errors`' frames under the training statistics of `normal`."""
    return {
        name: scoring.normaliser(
            getattr(errors, name), errors, "train", getattr(normal, name)[normal.scored]
        )(getattr(errors, name))
        for name in scoring.COMPONENTS
    }


def modality(z_rgb: float, z_flow: float) -> str:
    """ "motion" when the normalised flow error is the larger, else "appearance"."""
    return "motion" if z_flow > z_rgb else "appearance"


def sentence(z_rgb: float, z_flow: float) -> str:
    """The attribution in words, with both normalised errors."""
    return SENTENCES[modality(z_rgb, z_flow)].format(z_rgb=z_rgb, z_flow=z_flow)
