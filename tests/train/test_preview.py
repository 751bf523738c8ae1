"""``umt.train.preview``: the kept cells drawn are exactly the kept indices, and the PNG is written
atomically, never over a file it did not make."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.train_utils import TRAIN_RUN, tiny_cfg
from umt.train.preview import GREY, render_clip


def test_kept_cells_drawn_are_exactly_the_kept_indices() -> None:
    t, grid, cell = 3, 4, 8
    size = grid * cell
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    pix = torch.rand(3, t, size, size, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1  # no pure grey
    video = (pix - 0.5) / 0.25
    kept = torch.tensor([0, 5, 15, 16 + 3, 16 + 6, 32 + 10, 32 + 11])  # clip-level, T-major
    img = render_clip(video, mean, std, grid, None, {"semantic": kept})
    assert img.shape == (2 * size, t * size, 3)
    frames = (pix * 255).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()  # [T, S, S, 3]
    mask_row = img[size:]
    for f in range(t):
        for p in range(grid * grid):
            y, x = divmod(p, grid)
            got = mask_row[y * cell:(y + 1) * cell, f * size + x * cell:f * size + (x + 1) * cell].astype(int)
            src = frames[f, y * cell:(y + 1) * cell, x * cell:(x + 1) * cell].astype(int)
            if f * grid * grid + p in kept.tolist():
                assert np.array_equal(got, src), (f, p)  # kept: the frame itself
            else:
                assert np.abs(got - (0.25 * src + 0.75 * GREY)).max() <= 1, (f, p)  # masked: greyed
    assert np.array_equal(img[:size], np.concatenate(list(frames), axis=1))  # first row: the frames


def test_png_written_atomically_and_never_over_another_file(tmp_path: Path) -> None:
    from PIL import Image

    from umt.train.preview import _write_png

    out = tmp_path / "p.png"
    img = np.zeros((4, 6, 3), np.uint8)
    _write_png(img, out, overwrite=False)
    assert np.array_equal(np.asarray(Image.open(out)), img) and [p.name for p in tmp_path.iterdir()] == ["p.png"]
    with pytest.raises(FileExistsError, match="--overwrite"):
        _write_png(img + 1, out, overwrite=False)
    assert np.array_equal(np.asarray(Image.open(out)), img)  # untouched
    _write_png(img + 1, out, overwrite=True)
    assert np.asarray(Image.open(out)).max() == 1


@pytest.mark.dali
def test_preview_through_the_loader_is_deterministic(tmp_path: Path, good_shard_set: Path) -> None:
    from PIL import Image

    from umt.train.preview import main

    shards = good_shard_set
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    args = ["--shards", str(shards), "--clips", "2", "--seed", "3", "--set", "data.input_size=64",
            "--set", "model.teacher_image_size=64"]
    assert main([*args, "--out", str(a)]) == 0 and main([*args, "--out", str(b)]) == 0
    assert a.read_bytes() == b.read_bytes()
    w, h = Image.open(a).size
    assert (w, h) == (4 * 64, 2 * 5 * 64 + 8)  # the demo recipe's T=4 columns; 2 clips × 5 rows, one separator
    assert main([*args, "--out", str(a)]) == 2  # exists, no --overwrite


def test_training_logs_the_panel_from_the_steps_own_tensors(tmp_path: Path) -> None:
    """``log.image_every_steps``: rank 0 logs the first clip's panel on those steps only, without another teacher
    pass (the panel's pixels are checked by ``test_kept_cells_drawn_are_exactly_the_kept_indices``)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from umt.train.trainer import Trainer

    t = Trainer(tiny_cfg(*TRAIN_RUN, "optim.max_steps=4", "log.tensorboard=true", "log.image_every_steps=2"), tmp_path / "run")
    calls = []
    forward = t.teacher.forward
    t.teacher.forward = lambda v: (calls.append(1), forward(v))[1]  # type: ignore[method-assign]
    t.fit()
    t.close()
    assert len(calls) == 4  # one teacher pass per step, none for the images
    ev = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"images": 0}).Reload()
    imgs = ev.Images("preview/first_clip")
    assert [i.step for i in imgs] == [2, 4]
    from io import BytesIO

    from PIL import Image

    w, h = Image.open(BytesIO(imgs[0].encoded_image_string)).size
    assert (w, h) == (2 * 32, 3 * 32)  # T=2 frames of 32 px; rows: frames, attention, the semantic mask
