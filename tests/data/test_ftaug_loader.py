"""The fine-tuning training loader: random erasing puts the drawn box's noise where it was drawn
and nothing else changes; the erasing probability and box shapes are timm's; a resumed epoch equals the tail of
the full epoch with RandAugment and erasing on; DALI and the reference agree on the whole augmented clip."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from umt.data import DataConfig
from umt.data.augment.erasing import erase_noise
from umt.data.loader import VideoLoader
from umt.data.clips import draw_params

BACKENDS = ["reference", pytest.param("dali", marks=pytest.mark.dali)]
RA = "rand-m7-n4-mstd0.5-inc1"
T, S = 4, 32


def _cfg(shards: Path, backend: str, **kw: object) -> DataConfig:
    base = dict(shards=str(shards), backend=backend, batch_size=2, num_workers=0, input_size=S, num_frames=T,
                num_sample=2, crop="rrc", interp="bicubic")  # fmt: skip
    return DataConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_erase_probability_and_boxes_follow_timm() -> None:
    cfg = DataConfig(erase_prob=0.25, num_sample=1, input_size=224)
    boxes = [draw_params(cfg, 0, 0, i).erase[0] for i in range(4000)]
    hit = [b for b in boxes if b is not None]
    assert abs(len(hit) / 4000 - 0.25) < 0.03  # 4.4 standard deviations
    area = np.array([b.h * b.w for b in hit]) / 224**2
    aspect = np.array([b.h / b.w for b in hit])
    assert area.min() > 0.019 and area.max() < 0.34 and abs(area.mean() - (0.02 + 1 / 3) / 2) < 0.01
    assert aspect.min() > 0.29 and aspect.max() < 3.45 and abs(np.log(aspect).mean()) < 0.06  # log-uniform
    assert all(0 <= b.y and b.y + b.h <= 224 and 0 <= b.x and b.x + b.w <= 224 for b in hit)
    assert all(b.h < 224 and b.w < 224 for b in hit)  # timm accepts w < W and h < H only
    tops = np.array([b.y / (224 - b.h) for b in hit if b.h < 200])
    assert abs(tops.mean() - 0.5) < 0.03  # placed uniformly
    assert draw_params(DataConfig(erase_prob=0.0), 0, 0, 0).erase == ()
    assert all(draw_params(DataConfig(erase_prob=1.0), 0, 0, i).erase[0] is not None for i in range(50))
    n = erase_noise(hit[0], 3, 8)
    assert n.shape == (3, 8, hit[0].h, hit[0].w) and n.dtype == np.float32
    assert np.array_equal(n, erase_noise(hit[0], 3, 8))  # seeded per sample: the same noise again
    assert not np.array_equal(n[:, 0], n[:, 1])  # fresh noise for every frame (official _get_pixels per frame)
    assert abs(float(n.std()) - 1.0) < 0.2 or n.size < 200


@pytest.mark.parametrize("backend", BACKENDS)
def test_erased_region_is_the_drawn_one(pattern_shards: Path, backend: str) -> None:
    """Every clip erased (probability 1) against none: inside the drawn box the clip holds exactly the box's noise,
    outside it is exactly the un-erased clip (erasing draws from its own stream: frames and crops are unchanged)."""
    out = {}
    for p in (1.0, 0.0):
        L = VideoLoader(_cfg(pattern_shards, backend, erase_prob=p))
        out[p] = list(L.epoch_iter(1))
        L.close()
    cfg = _cfg(pattern_shards, backend, erase_prob=1.0)
    n = 0
    for a, b in zip(out[1.0], out[0.0]):
        assert torch.equal(a["index"], b["index"])
        for row in range(a["video"].shape[0]):
            box = draw_params(cfg, cfg.seed, 1, int(a["index"][row])).erase[row % 2]
            assert box is not None
            inside = torch.zeros(S, S, dtype=torch.bool)
            inside[box.y : box.y + box.h, box.x : box.x + box.w] = True
            va, vb = a["video"][row], b["video"][row]  # [3, T, S, S]
            assert torch.equal(va[:, :, inside], torch.from_numpy(erase_noise(box, 3, T)).flatten(2))
            assert torch.equal(va[:, :, ~inside], vb[:, :, ~inside])
            n += 1
    assert n == 8


@pytest.fixture(scope="module")
def ft_epochs(pattern_shards: Path) -> dict[str, list[list[dict[str, torch.Tensor]]]]:
    """Per backend (as available): epochs 1 and 2 in full, then epoch 2 resumed at batch 1, RandAugment and erasing
    on (one loader, so DALI rebuilds its pipeline once, for the resume)."""
    from umt.data.loader import dali_available

    out = {}
    for backend in ["reference"] + (["dali"] if dali_available() else []):
        L = VideoLoader(_cfg(pattern_shards, backend, rand_augment=RA, erase_prob=0.5))
        try:
            out[backend] = [list(L.epoch_iter(1)), list(L.epoch_iter(2)), list(L.epoch_iter(2, start_batch=1))]
        finally:
            L.close()
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_equals_the_tail_with_randaugment_and_erasing(ft_epochs: dict, backend: str) -> None:
    one, full, tail = ft_epochs[backend]
    assert len(full) == 2 and len(tail) == 1
    for key in ("video", "index", "label", "view"):
        assert torch.equal(full[1][key], tail[0][key])
    assert not torch.equal(torch.cat([b["video"] for b in one]), torch.cat([b["video"] for b in full]))


@pytest.mark.dali
def test_dali_matches_reference_with_randaugment_and_erasing(ft_epochs: dict) -> None:
    """The whole fine-tuning clip (RandAugment on the full frames, RRC, bicubic resize, flip, normalise, erase) on
    the same draws. The ops agree to a level (``test_randaugment``); what differs more is DALI's and torch's
    antialiased resize across the steep edges some ops make (posterize, solarize, the fill border): measured over
    these 16 clips mean 0.03, 99th percentile 0.6, maximum ~30 in 0..255 pixel units at a handful of pixels."""
    std = torch.tensor(DataConfig().std).view(1, 3, 1, 1, 1) * 255
    diffs = []
    for a, b in zip(ft_epochs["dali"][0] + ft_epochs["dali"][1], ft_epochs["reference"][0] + ft_epochs["reference"][1]):
        assert torch.equal(a["index"], b["index"])
        diffs.append(((a["video"] - b["video"]) * std).abs().flatten())
    d = torch.cat(diffs)
    assert d.mean() < 0.1 and torch.quantile(d, 0.99) < 2.0, (float(d.mean()), float(torch.quantile(d, 0.99)))
    assert math.isfinite(float(d.max()))


@pytest.mark.gpu
@pytest.mark.dali
def test_gpu_pipeline_matches_reference_with_randaugment_and_erasing(pattern_shards: Path) -> None:
    """DALI's mixed decoder and the RandAugment / erasing graph on GPU nodes against the reference (not yet run: no
    GPU lent: the bounds allow bf16 output and NVDEC's own YUV → RGB conversion, to be tightened on the first run)."""
    out = {}
    for backend, device in (("dali", "cuda"), ("reference", "cpu")):
        L = VideoLoader(_cfg(pattern_shards, backend, rand_augment=RA, erase_prob=0.5), device=device)
        out[backend] = [b for e in (0, 1) for b in L.epoch_iter(e)]
        L.close()
    std = torch.tensor(DataConfig().std).view(1, 3, 1, 1, 1) * 255
    d = torch.cat([((a["video"].float().cpu() - b["video"]) * std).abs().flatten()
                   for a, b in zip(out["dali"], out["reference"])])  # fmt: skip
    assert d.mean() < 1.0 and torch.quantile(d, 0.99) < 6.0, (float(d.mean()), float(torch.quantile(d, 0.99)))
