"""Tests of `jaxvad.scoring`'s score arithmetic on hand-made errors (no model)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from jaxvad import config as config_lib
from jaxvad import scoring


def split(rgb, flow, videos, scored=None, label=None) -> scoring.SplitErrors:
    rgb, flow, videos = (np.asarray(x, np.float64) for x in (rgb, flow, videos))
    videos = videos.astype(np.int32)
    frames = np.concatenate([np.arange(1, (videos == v).sum() + 1) for v in np.unique(videos)])
    return scoring.SplitErrors(
        names=[f"v{v}" for v in np.unique(videos)],
        video=videos,
        frame=frames.astype(np.int32),
        scored=np.ones(len(rgb), bool) if scored is None else np.asarray(scored, bool),
        rgb=rgb,
        flow=flow,
        label=None if label is None else np.asarray(label, np.int32),
    )


def setting(**fields) -> scoring.ScoreSettings:
    base = {
        "variant": "error",
        "alpha": 1.0,
        "normalisation": "none",
        "smoothing_sigma": 0.0,
        "threshold_quantile": 0.5,
    }
    return scoring.ScoreSettings(**base | fields)


NORMAL = split(rgb=[1.0, 2.0, 3.0], flow=[10.0, 10.0, 40.0], videos=[0, 0, 0])


def test_train_normalisation_is_a_z_score_of_the_training_errors():
    # Training rgb 1, 2, 3: mean 2, std sqrt(2/3); flow 10, 10, 40: mean 20, std sqrt(200).
    errors = split(rgb=[0.0, 2.0, 5.0], flow=[20.0, 0.0, 50.0], videos=[0, 0, 1])
    scores = scoring.frame_scores(errors, setting(normalisation="train", alpha=2.0), NORMAL)
    z_rgb = (np.array([0.0, 2.0, 5.0]) - 2) / np.sqrt(2 / 3)
    z_flow = (np.array([20.0, 0.0, 50.0]) - 20) / np.sqrt(200)
    np.testing.assert_allclose(scores.rgb, z_rgb)
    np.testing.assert_allclose(scores.flow, z_flow)
    np.testing.assert_allclose(scores.score, z_rgb + 2 * z_flow)


def test_minmax_is_per_video_over_scored_frames_and_unscored_frames_are_nan():
    errors = split(
        rgb=[9.0, 1.0, 3.0, 2.0, 5.0, 5.0, 7.0],
        flow=[0.0] * 7,
        videos=[0, 0, 0, 0, 1, 1, 1],
        scored=[0, 1, 1, 1, 1, 1, 1],
    )
    scores = scoring.frame_scores(errors, setting(normalisation="minmax", alpha=0.0), NORMAL)
    # Video 0 scored: 1, 3, 2 → (x − 1) / 2; video 1: 5, 5, 7 → (x − 5) / 2; the unscored 9 is
    # neither min nor max. A constant component (flow) maps to 0.
    np.testing.assert_array_equal(np.isnan(scores.score), [1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(scores.rgb[1:], [0.0, 1.0, 0.5, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(scores.flow[1:], 0.0)


def test_psnr_variant_is_minus_psnr_with_the_peaks():
    errors = split(rgb=[0.04, 0.4], flow=[0.01, 1.0], videos=[0, 0])
    scores = scoring.frame_scores(errors, setting(variant="psnr"), NORMAL)
    # −PSNR = 10·log10(E / P²): rgb P = 2 → 10·log10(0.01) = −20, 10·log10(0.1) = −10;
    # flow P = 1 → −20, 0.
    np.testing.assert_allclose(scores.rgb, [-20.0, -10.0])
    np.testing.assert_allclose(scores.flow, [-20.0, 0.0])


def test_smoothing_stays_inside_each_video_and_keeps_the_sum():
    rgb = [0.0, 0.0, 0.0, 10.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    errors = split(rgb=rgb, flow=rgb[::-1], videos=[0] * 7 + [1] * 3)
    scores = scoring.frame_scores(errors, setting(smoothing_sigma=1.0, alpha=0.5), NORMAL)
    # The spike of video 0 spreads inside it (its mass is kept: mode "nearest" at the far
    # edges barely matters for a central spike) and never into video 1, whose constant 1s stay.
    assert scores.rgb[3] < 10 and scores.rgb[2] > 0 and scores.rgb[4] > 0
    np.testing.assert_allclose(scores.rgb[7:], 1.0)
    assert scores.rgb[:7].sum() == pytest.approx(10.0, rel=1e-3)
    np.testing.assert_allclose(scores.score, scores.rgb + 0.5 * scores.flow, rtol=0, atol=1e-12)


def test_threshold_is_the_quantile_of_the_training_scores():
    normal = split(rgb=[1.0, 2.0, 3.0, 4.0, 100.0], flow=[0.0] * 5, videos=[0] * 5)
    assert scoring.training_threshold(normal, setting(threshold_quantile=0.5)) == 3.0
    assert scoring.training_threshold(normal, setting(threshold_quantile=1.0)) == 100.0
    # "train" normalisation: the training scores are their own z-scores.
    z = (np.array([1.0, 2, 3, 4, 100]) - 22) / np.std([1.0, 2, 3, 4, 100])
    got = scoring.training_threshold(normal, setting(normalisation="train", threshold_quantile=0.5))
    assert got == pytest.approx(z[2])


@pytest.mark.parametrize("normalisation", ["none", "train", "minmax"])
@pytest.mark.parametrize("variant", ["error", "psnr"])
def test_scores_and_threshold_never_read_labels(normalisation, variant):
    rng = np.random.default_rng(0)
    errors = split(
        rgb=rng.random(20), flow=rng.random(20), videos=[0] * 12 + [1] * 8, label=[0, 1] * 10
    )
    config = setting(normalisation=normalisation, variant=variant, smoothing_sigma=2.0)
    reference = scoring.frame_scores(errors, config, NORMAL)
    for label in (None, 1 - errors.label, np.zeros(20, np.int32)):
        other = scoring.frame_scores(dataclasses.replace(errors, label=label), config, NORMAL)
        np.testing.assert_array_equal(other.score, reference.score)


@pytest.mark.parametrize("normalisation", ["none", "train", "minmax"])
def test_pixel_map_mean_is_the_unsmoothed_error_score(normalisation):
    rng = np.random.default_rng(1)
    maps_rgb = rng.random((6, 4, 4)).astype(np.float16)
    maps_flow = rng.random((6, 4, 4)).astype(np.float16)
    errors = dataclasses.replace(
        split(
            rgb=maps_rgb.astype(np.float64).mean((1, 2)),
            flow=maps_flow.astype(np.float64).mean((1, 2)),
            videos=[0, 0, 0, 1, 1, 1],
            scored=[0, 1, 1, 1, 1, 1],
        ),
        maps={"rgb": maps_rgb, "flow": maps_flow, "mask": np.zeros((6, 4, 4), np.uint8)},
    )
    config = setting(normalisation=normalisation, alpha=3.0, variant="psnr", smoothing_sigma=1.0)
    scores = scoring.frame_scores(errors, config, NORMAL)
    maps = scoring.anomaly_maps(errors, scores, alpha=3.0)
    unsmoothed = scoring.frame_scores(
        errors, setting(normalisation=normalisation, alpha=3.0), NORMAL
    )
    assert maps.shape == (5, 4, 4)
    np.testing.assert_allclose(maps.mean((1, 2)), unsmoothed.score[1:], rtol=1e-5)
    blurred = scoring.anomaly_maps(errors, scores, alpha=3.0, sigma=1.0)
    assert blurred.std() < maps.std()


def test_score_settings_hold_exactly_the_configs_score_fields():
    config = config_lib.base_config()
    settings = scoring.ScoreSettings(**config.score)  # A field missing on either side fails.
    fields = dataclasses.asdict(settings)
    assert fields.pop("object_samples") is False  # config.objects.samples, set beside them.
    assert fields == config.score.to_dict()
