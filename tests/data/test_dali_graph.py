"""The DALI graph alone (``umt.data.dali.clips.build_pipeline``) on hand-made source outputs: exact values.

A stand-in source hands the graph frames whose expected output is known in closed form: a constant frame stays
constant through crop and resize, so the normalised value must equal ``(v − 255·mean) / (255·std)`` to float
precision; a horizontal ramp shows the window and the mirror.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from umt.data import DataConfig

pytestmark = pytest.mark.dali

T, H, W = 4, 40, 60


class _Source:
    """Per-sample outputs in ClipSource's layout: (frames, meta, anchor, shape, flip) per clip, decode=True."""

    decode = True

    def __init__(self, frames: np.ndarray, windows: list[tuple[int, int, int, int, int]]) -> None:
        self.frames, self.windows = frames, windows

    def __call__(self, info: Any) -> tuple[np.ndarray, ...]:
        if info.idx_in_epoch >= 2:
            raise StopIteration
        out = [self.frames, np.arange(8, dtype=np.int32)]
        for x, y, w, h, flip in self.windows:
            out += [np.array([x, y], np.int32), np.array([w, h], np.int32), np.array(flip, np.int32)]
        return tuple(out)


def _run(cfg: DataConfig, src: _Source) -> list[torch.Tensor]:
    from umt.data.dali.clips import build_pipeline

    pipe = build_pipeline(cfg, src, device_id=None)
    pipe.build()
    outs = pipe.run()
    return [torch.from_numpy(np.array(o.as_tensor())) for o in outs]


def test_constant_frames_normalise_exactly() -> None:
    cfg = DataConfig(batch_size=2, num_frames=T, input_size=16, num_workers=0)
    v = np.array([200, 90, 17], np.uint8)
    src = _Source(np.broadcast_to(v, (T, H, W, 3)).copy(), [(5, 3, 30, 30, 0)])
    clip, meta = _run(cfg, src)
    assert clip.shape == (2, 3, T, 16, 16)  # [B, C, T, S, S]
    want = (torch.tensor(v, dtype=torch.float32) - 255 * torch.tensor(cfg.mean)) / (255 * torch.tensor(cfg.std))
    assert torch.allclose(clip, want.view(1, 3, 1, 1, 1).expand_as(clip), atol=1e-4), (clip[0, :, 0, 0, 0], want)
    assert meta[0].tolist() == list(range(8))


def test_window_and_mirror_follow_the_source() -> None:
    cfg = DataConfig(batch_size=2, num_frames=T, input_size=20, num_workers=0, num_sample=2)
    ramp = np.broadcast_to((4 * np.arange(W)).astype(np.uint8)[None, None, :, None], (T, H, W, 3)).copy()
    src = _Source(ramp, [(10, 0, 20, 20, 0), (30, 20, 20, 20, 1)])  # same size as the output: no resampling
    a, b, _ = _run(cfg, src)
    std, mean = 255 * torch.tensor(cfg.std).view(3, 1, 1, 1), 255 * torch.tensor(cfg.mean).view(3, 1, 1, 1)
    pa, pb = a[0] * std + mean, b[0] * std + mean  # [3, T, 20, 20] pixel values
    assert torch.allclose(pa[0, 0, 0], 4 * torch.arange(10, 30, dtype=torch.float32), atol=1e-3)
    assert torch.allclose(pb[0, 0, 0], 4 * torch.arange(49, 29, -1, dtype=torch.float32), atol=1e-3)  # mirrored


def test_source_must_match_the_device() -> None:
    from umt.data.dali.clips import build_pipeline

    src = _Source(np.zeros((T, H, W, 3), np.uint8), [(0, 0, 8, 8, 0)])
    src.decode = False  # an encoded-bytes source on a CPU pipeline
    with pytest.raises(ValueError, match="decodes on CPU pipelines only"):
        build_pipeline(DataConfig(num_workers=0), src, device_id=None)
