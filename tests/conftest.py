"""Writers of tiny datasets in the official layouts of Ped2, Avenue and ShanghaiTech, shared by
`test_readers.py` and `test_data_prep_errors.py` (through the `vad_writers` fixture).

Every frame is uniform grey at `frame_value(k)` (k 0-based), so the frame order survives a lossy
codec; colour sources add a red block on the left half. Masks mark a block whose width grows
with the frame number, so mask order is checkable too.
"""

from __future__ import annotations

import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

H, W = 24, 32


def frame_value(k: int) -> int:
    """Grey level of frame k (0-based): distinct, 20 levels apart; up to 11 frames."""
    assert 0 <= k <= 10, "fixture clips hold at most 11 frames"
    return 20 + 20 * k


def frames_of(n: int, colour: bool) -> np.ndarray:
    """`[n, H, W, 3]` BGR (colour) or `[n, H, W]` gray uint8 frames."""
    gray = np.stack([np.full((H, W), frame_value(k), np.uint8) for k in range(n)])
    if not colour:
        return gray
    bgr = np.repeat(gray[..., None], 3, axis=-1)
    bgr[:, :, : W // 2] = (0, 0, 200)
    return bgr


def mask_of(k: int, anomalous: bool) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    if anomalous:
        mask[4:12, 2 : 3 + k] = 1
    return mask


def write_video(path: Path, n: int, fourcc: str, colour: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Gray videos are written as gray (isColor=False): they then decode with three exactly equal
    # channels, like the repackaged Ped2; OpenCV's colour path would tint them by a level or two.
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (W, H), colour)
    assert writer.isOpened(), path
    for frame in frames_of(n, colour):
        writer.write(frame)
    writer.release()


def write_images(folder: Path, images: np.ndarray, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in zip(names, images, strict=True):
        assert cv2.imwrite(str(folder / name), image), folder / name


def write_ped2(root: Path, ranges, lengths=(11,), train=(4,), repackaged=False) -> Path:
    """Ped2, official (`.tif` folders, `.bmp` masks `001.bmp`) or repackaged (`mp4v` videos,
    `.png` masks `frame1.png`…, so lexical ≠ numeric order); `ranges`: per test clip, 1-based
    inclusive anomalous ranges, written to `Test/UCSDped2.m`."""
    for i, n in enumerate(train, 1):
        if repackaged:
            write_video(root / "Train" / f"Train{i:03d}.mp4", n, "mp4v", colour=False)
        else:
            names = [f"{k:03d}.tif" for k in range(1, n + 1)]
            write_images(root / "Train" / f"Train{i:03d}", frames_of(n, False), names)
    lines = ["TestVideoFile = {};"]
    for i, (n, clip_ranges) in enumerate(zip(lengths, ranges, strict=True), 1):
        name = f"Test{i:03d}"
        flags = [any(a <= k <= b for a, b in clip_ranges) for k in range(1, n + 1)]
        masks = np.stack([mask_of(k, f) * 255 for k, f in enumerate(flags)])
        if repackaged:
            write_video(root / "Test" / f"{name}.mp4", n, "mp4v", colour=False)
            write_images(
                root / "Test" / f"{name}_gt", masks, [f"frame{k}.png" for k in range(1, n + 1)]
            )
        else:
            names = [f"{k:03d}" for k in range(1, n + 1)]
            write_images(root / "Test" / name, frames_of(n, False), [f"{s}.tif" for s in names])
            write_images(root / "Test" / f"{name}_gt", masks, [f"{s}.bmp" for s in names])
        lines.append(
            f"TestVideoFile{{end+1}}.gt_frame = [{', '.join(f'{a}:{b}' for a, b in clip_ranges)}];"
        )
    (root / "Test" / "UCSDped2.m").write_text("\n".join(lines) + "\n")
    return root


def write_avenue(root: Path, lengths=(5, 6), train=(4,)) -> dict:
    """Avenue: MJPG `.avi` videos, `N_label.mat` masks (`volLabel` 1×N cells), and the interval
    file `frame_labels_avenue.npy` `[1, total]`. Returns the expected per-video labels."""
    for i, n in enumerate(train, 1):
        write_video(root / "training_videos" / f"{i:02d}.avi", n, "MJPG", colour=True)
    (root / "testing_label_mask").mkdir(parents=True)
    mask_labels, interval_labels = [], []
    for v, n in enumerate(lengths, 1):
        write_video(root / "testing_videos" / f"{v:02d}.avi", n, "MJPG", colour=True)
        flags = [(k + v) % 3 == 0 for k in range(n)]
        cells = np.empty((1, n), dtype=object)
        for k, flag in enumerate(flags):
            cells[0, k] = mask_of(k, flag)
        scipy.io.savemat(root / "testing_label_mask" / f"{v}_label.mat", {"volLabel": cells})
        mask_labels.append(np.array(flags, np.int32))
        interval_labels.append((np.arange(n) >= n // 2).astype(np.int32))
    np.save(root / "frame_labels_avenue.npy", np.concatenate(interval_labels)[None].astype(np.int8))
    return {"mask": mask_labels, "interval": interval_labels}


SHT_CLIPS = {"01_0014": 5, "01_0015": 4}


def write_shanghaitech(root: Path, masks_under_testing=False, clips=SHT_CLIPS) -> dict:
    """ShanghaiTech: `training/videos/01_001.avi`, `testing/frames/<clip>/000.jpg`… (0-based),
    `test_frame_mask/<clip>.npy` and `test_pixel_mask/<clip>.npy` (at the top or under
    `testing/`). Returns the expected per-clip labels."""
    write_video(root / "training" / "videos" / "01_001.avi", 4, "MJPG", colour=True)
    mask_root = root / "testing" if masks_under_testing else root
    (mask_root / "test_frame_mask").mkdir(parents=True)
    (mask_root / "test_pixel_mask").mkdir(parents=True)
    labels = {}
    for c, (clip, n) in enumerate(clips.items()):
        names = [f"{k:03d}.jpg" for k in range(n)]
        write_images(root / "testing" / "frames" / clip, frames_of(n, True), names)
        flags = np.array([(k + c) % 2 for k in range(n)], np.int32)
        np.save(mask_root / "test_frame_mask" / f"{clip}.npy", flags.astype(np.int8))
        masks = np.stack([mask_of(k, bool(f)) for k, f in enumerate(flags)])
        np.save(mask_root / "test_pixel_mask" / f"{clip}.npy", masks)
        labels[clip] = flags
    return labels


@pytest.fixture
def vad_writers() -> types.SimpleNamespace:
    return types.SimpleNamespace(
        ped2=write_ped2,
        avenue=write_avenue,
        shanghaitech=write_shanghaitech,
        frame_value=frame_value,
        mask_of=mask_of,
        size=(H, W),
    )
