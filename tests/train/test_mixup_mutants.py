"""Video mixup (umt.train.finetune.mixup): the official defaults, the argument checks, the seed reduction mod 2³²
and the RNG restore on an exception, mixup-only targets against λ read back from the pixels, non-contiguous
input. Expected values are written out in the tests (official numbers: fine-tuning ``mixup 0.8``, ``cutmix 1.0``,
``mixup_prob 1.0``, ``mixup_switch_prob 0.5``, ``smoothing 0.1``, ``mixup_mode batch``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from umt.train.finetune.mixup import VideoMixup, numpy_seeded


def _video(b: int = 4, t: int = 2, s: int = 8) -> torch.Tensor:
    # clip i, channel c, frame f: the constant 100·i + 10·c + f + 1 (distinct for every clip, channel and frame)
    i = torch.arange(b).view(b, 1, 1, 1, 1)
    c = torch.arange(3).view(1, 3, 1, 1, 1)
    f = torch.arange(t).view(1, 1, t, 1, 1)
    return (100.0 * i + 10.0 * c + f + 1.0).expand(b, 3, t, s, s).contiguous()


def test_defaults_are_the_official_recipe() -> None:
    vm = VideoMixup(7)
    m = vm.mixup
    assert vm.num_classes == 7
    assert (m.mixup_alpha, m.cutmix_alpha, m.mix_prob, m.switch_prob, m.label_smoothing) == (0.8, 1.0, 1.0, 0.5, 0.1)
    assert m.mode == "batch" and m.num_classes == 7 and m.cutmix_minmax is None and m.correct_lam


@pytest.mark.parametrize("mixup, cutmix, ok", [(0.0, 0.0, False), (-1.0, 0.0, False), (0.0, 1.0, True),
                                               (0.8, 0.0, True)])
def test_one_kind_of_mix_is_enough(mixup: float, cutmix: float, ok: bool) -> None:
    if ok:
        VideoMixup(3, mixup_alpha=mixup, cutmix_alpha=cutmix)
    else:
        with pytest.raises(ValueError, match="needs mixup_alpha"):
            VideoMixup(3, mixup_alpha=mixup, cutmix_alpha=cutmix)


def test_numpy_seeded_reduces_the_seed_mod_2_32_and_restores_on_error() -> None:
    want = np.random.RandomState(7).random_sample(3)
    with numpy_seeded(2**32 + 7):
        got = np.random.random_sample(3)
    np.testing.assert_array_equal(got, want)
    with numpy_seeded(-1):  # -1 & 0xFFFFFFFF = 2³² - 1
        got = np.random.random_sample(2)
    np.testing.assert_array_equal(got, np.random.RandomState(2**32 - 1).random_sample(2))
    np.random.seed(123)
    before = np.random.random_sample(1)
    np.random.seed(123)
    with pytest.raises(KeyError):
        with numpy_seeded(5):
            raise KeyError("inside")
    assert np.random.random_sample(1) == before  # the state of before the block, also after an exception


def test_mixup_only_targets_follow_the_lambda_in_the_pixels() -> None:
    # mixup alone (cutmix 0): every pixel is λ·x_i + (1 − λ)·x_{B−1−i}; λ is read back from clip 0 vs clip 3, and the
    # targets must be λ·y + (1 − λ)·y_flipped with y smoothed by 0.1 over K = 5 (0.9 + 0.02 on the label, 0.02 off)
    mix = VideoMixup(5, mixup_alpha=0.8, cutmix_alpha=0.0)
    label = torch.tensor([0, 1, 2, 4])
    for seed in (0, 1, 2):
        src = _video()
        out, target = mix(src.clone(), label, seed)
        lam = ((out[0] - src[3]) / (src[0] - src[3])).mean().item()
        torch.testing.assert_close(out, lam * src + (1 - lam) * src.flip(0), rtol=0, atol=1e-3)
        y = torch.full((4, 5), 0.02)
        y[torch.arange(4), label] = 0.92
        torch.testing.assert_close(target, lam * y + (1 - lam) * y.flip(0), rtol=0, atol=1e-5)
        assert target.dtype == torch.float32


def test_non_contiguous_clips_are_mixed_like_their_contiguous_copy() -> None:
    mix = VideoMixup(5, mixup_alpha=0.0, cutmix_alpha=1.0)
    label = torch.tensor([0, 1, 2, 3])
    base = _video(s=8)
    strided = base.permute(0, 1, 2, 4, 3)  # not contiguous; the same values (each frame is constant)
    assert not strided.is_contiguous()
    for seed in (3, 4):
        out_a, t_a = mix(strided, label, seed)
        out_b, t_b = mix(base.clone(), label, seed)
        torch.testing.assert_close(out_a, out_b)
        torch.testing.assert_close(t_a, t_b)
        assert out_a.shape == (4, 3, 2, 8, 8)


def test_shape_checks() -> None:
    mix = VideoMixup(5)
    with pytest.raises(ValueError, match="even batch"):
        mix(_video(b=3), torch.tensor([0, 1, 2]), 0)
    with pytest.raises(ValueError, match=r"expected a video batch"):
        mix(torch.zeros(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]), 0)


def test_prob_switch_prob_and_smoothing_reach_timm() -> None:
    src = _video()
    label = torch.tensor([0, 1, 2, 4])
    # prob 0: never mixed: the clips as they were, the targets the smoothed one-hot (0.1 over K = 5)
    out, target = VideoMixup(5, prob=0.0)(src.clone(), label, 0)
    torch.testing.assert_close(out, src)
    y = torch.full((4, 5), 0.02)
    y[torch.arange(4), label] = 0.92
    torch.testing.assert_close(target, y)
    # switch_prob 0 with both alphas on: always mixup (every pixel blended with one λ), never CutMix
    mix = VideoMixup(5, switch_prob=0.0, label_smoothing=0.0)
    hard = F.one_hot(label, 5).float()
    for seed in range(6):
        out, target = mix(src.clone(), label, seed)
        lam = ((out[0] - src[3]) / (src[0] - src[3])).mean().item()
        torch.testing.assert_close(out, lam * src + (1 - lam) * src.flip(0), rtol=0, atol=1e-3)
        # smoothing 0: the targets mix the plain one-hot rows
        torch.testing.assert_close(target, lam * hard + (1 - lam) * hard.flip(0), rtol=0, atol=1e-5)
