"""Stage 2's step and task around the model: what the step hands the model (mask size per modality, gathered
teacher targets, positives by item or by caption, the MLM switch, the seed), the weighted sum it differentiates
(gradients worked by hand on a recording stand-in model), and the task's teacher/freeze rules, FLOPs, record, resume
refusals and evaluation plumbing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn

from tests.train_utils import TINY, tiny_cfg
from umt.config import ConfigError
from umt.losses import caption_keys
from umt.model.teacher import TeacherOutput
from umt.train.runtime import Runtime
from umt.train.video_text import task as vt_task
from umt.train.video_text.step import VideoTextStep

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CPU = Runtime(0, 1, 0, torch.device("cpu"), None)
# 64² input: 4×4 = 16 tokens per frame; mask.ratio 0.75 keeps 16 − 12 = 4, image_ratio 0.5 keeps 8
STEP = [*TINY, "task=video_text", "data.input_size=64", "model.teacher_image_size=64", "mask.ratio=0.75",
        "mask.image_ratio=0.5", "text.max_len=10", "text.embed_dim=32"]


class Recorder(nn.Module):
    """Stands in for :class:`UMTVisionText`: records its inputs and returns parts ``c_k · w_k`` with
    c = (vtc 1, vtm 2, mlm 3, uta 5), so the gradient of ``Σ weight_k · part_k`` w.r.t. w_k is ``weight_k · c_k``."""

    C = {"vtc": 1.0, "vtm": 2.0, "mlm": 3.0, "uta": 5.0}

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.ParameterDict({k: nn.Parameter(torch.tensor(1.0)) for k in self.C})
        self.calls: list[dict[str, Any]] = []

    def forward(self, video: torch.Tensor, idx: torch.Tensor | None, ids: torch.Tensor, mask: torch.Tensor,
                index: torch.Tensor, target: torch.Tensor | None, seed: int, mlm: bool) -> dict[str, torch.Tensor]:
        self.calls.append({"video": video, "idx": idx, "ids": ids, "mask": mask, "index": index, "target": target,
                           "seed": seed, "mlm": mlm})
        return {k: self.w[k] * c for k, c in self.C.items()}


def _batch(b: int = 3, t: int = 2, modality: str = "video") -> dict[str, Any]:
    ids = torch.tensor([[101, 7, 8, 102, 0], [101, 9, 102, 0, 0], [101, 7, 8, 102, 0]])[:b]
    return {"video": torch.randn(b, 3, 1 if modality == "image" else t, 64, 64), "text_ids": ids,
            "text_mask": (ids != 0).long(), "index": torch.tensor([10, 11, 12])[:b], "modality": modality}


def _step(*extra: str, teacher: Any = None) -> tuple[VideoTextStep, Recorder]:
    cfg = tiny_cfg(*extra, base=STEP)
    model = Recorder()
    return VideoTextStep(model, teacher, torch.optim.SGD(model.parameters(), lr=0.0), None, cfg,
                         torch.device("cpu"), None), model


def test_weighted_sum_gradients_and_outputs_by_hand() -> None:
    step, model = _step("text.vtc_weight=0.5", "text.vtm_weight=0.25", "text.mlm_weight=2", "text.uta_weight=0",
                        "mask.kind=tube")
    out = step.train_batch(_batch(), seed=5, scale=0.5)
    # loss = 0.5·1 + 0.25·2 + 2·3 + 0·5 = 7 (unscaled); gradients × 0.5
    assert out["loss"].item() == 7.0
    assert {k: out[f"loss_{k}"].item() for k in Recorder.C} == Recorder.C
    assert not any(v.requires_grad for v in out.values())
    grads = {k: model.w[k].grad.item() for k in Recorder.C}
    assert grads == {"vtc": 0.25, "vtm": 0.25, "mlm": 3.0, "uta": 0.0}
    assert out["vtc_negatives"].item() == 2.0 and out["vtc_negatives"].shape == ()  # B × world − 1
    assert set(out) == {"loss", "loss_vtc", "loss_vtm", "loss_mlm", "loss_uta", "vtc_negatives"}
    call = model.calls[-1]
    assert call["seed"] == 5 and call["mlm"] is True and call["target"] is None
    assert torch.equal(call["index"], torch.tensor([10, 11, 12]))  # by item


def test_mlm_switch_follows_its_weight() -> None:
    step, model = _step("text.mlm_weight=0", "text.uta_weight=0", "mask.kind=tube")
    step.train_batch(_batch(), seed=1)
    assert model.calls[-1]["mlm"] is False
    assert step.weights == {"vtc": 1.0, "vtm": 1.0, "mlm": 0.0, "uta": 0.0}


def test_caption_positives_key_by_caption() -> None:
    step, model = _step("text.caption_positives=true", "text.uta_weight=0", "mask.kind=tube")
    b = _batch()
    step.train_batch(b, seed=1)
    index = model.calls[-1]["index"]
    assert torch.equal(index, caption_keys(b["text_ids"], b["text_mask"]))
    assert index[0] == index[2] and index[0] != index[1]  # rows 0 and 2 share a caption


def test_teacher_free_mask_sizes_per_modality() -> None:
    step, model = _step("text.uta_weight=0", "mask.kind=tube")
    assert (step.tokens_per_frame, step.keep, step.keep_image) == (16, 4, 8)
    step.train_batch(_batch(modality="video"), seed=3)
    idx = model.calls[-1]["idx"]
    assert idx.shape == (3, 2 * 4)
    for row in idx:  # a tube: the same 4 positions in each frame
        assert torch.equal(row[4:] - 16, row[:4]) and bool((row[:4] < 16).all())
    step.train_batch(_batch(modality="image"), seed=3)
    assert model.calls[-1]["idx"].shape == (3, 8)
    full, fm = _step("text.uta_weight=0", "mask.kind=random", "mask.ratio=0", "mask.image_ratio=0")
    full.train_batch(_batch(), seed=3)
    assert fm.calls[-1]["idx"] is None  # nothing masked: every token, no index
    seeded, sm = _step("text.uta_weight=0", "mask.kind=tube")
    seeded.train_batch(_batch(), seed=3)
    assert torch.equal(sm.calls[-1]["idx"], idx)  # the seed keys the mask
    seeded.train_batch(_batch(), seed=4)
    assert not torch.equal(sm.calls[-1]["idx"], idx)


class FakeTeacher:
    """Targets whose value encodes (layer, sample, token): ``1000·l + 100·b + n``."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def __call__(self, video: torch.Tensor) -> TeacherOutput:
        self.seen.append(video)
        b, t = video.shape[0], video.shape[2]
        n = t * 16
        targets = (1000 * torch.arange(2).view(2, 1, 1, 1) + 100 * torch.arange(b).view(1, b, 1, 1)
                   + torch.arange(n).view(1, 1, n, 1)).float().expand(2, b, n, 3)
        return TeacherOutput(targets=targets, q_cls=torch.zeros(b * t, 1, 4), k=torch.zeros(b * t, 1, 17, 4))


def test_teacher_targets_are_gathered_at_the_kept_tokens() -> None:
    teacher = FakeTeacher()
    step, model = _step("mask.kind=random", teacher=teacher)
    b = _batch()
    step.train_batch(b, seed=2)
    assert teacher.seen[-1] is b["video"]
    call = model.calls[-1]
    idx, target = call["idx"], call["target"]
    assert idx.shape == (3, 8) and target.shape == (2, 3, 8, 3)
    for layer in range(2):
        for s in range(3):
            want = (1000 * layer + 100 * s + idx[s]).float()
            assert torch.equal(target[layer, s, :, 0], want)
    step.train_batch(_batch(modality="image"), seed=2)
    assert model.calls[-1]["idx"].shape == (3, 8)  # image: 8 of 16 kept, one frame


def test_preview_keeps_the_first_clip_on_logging_steps() -> None:
    teacher = FakeTeacher()
    step, model = _step("mask.kind=random", teacher=teacher)
    step.train_batch(_batch(), seed=2)
    assert step.first_clip is None
    step.keep_first_clip = True
    b = _batch()
    step.train_batch(b, seed=2)
    video, q, k, idx = step.first_clip
    assert video is not None and torch.equal(video, b["video"][0]) and torch.equal(idx, model.calls[-1]["idx"][0])


# ------------------------------------------------------------------------------------------------------- the task
@pytest.mark.parametrize(("uta", "kind", "ratio", "image_ratio", "want"), [
    (0.0, "semantic", 0.0, 0.0, False),  # fine-tuned retrieval: nothing asks for the teacher
    (0.5, "tube", 0.0, 0.0, True),  # UTA alone (a fractional weight)
    (0.0, "semantic", 0.5, 0.0, True),  # the semantic mask on videos
    (0.0, "semantic", 0.0, 0.5, True),  # ... or on images
    (0.0, "tube", 0.8, 0.5, False),  # a mask that needs no attention map
    (0.0, "random", 0.8, 0.0, False),
])
def test_needs_teacher_truth_table(uta: float, kind: str, ratio: float, image_ratio: float, want: bool) -> None:
    from types import SimpleNamespace

    cfg = SimpleNamespace(text=SimpleNamespace(uta_weight=uta),
                          mask=SimpleNamespace(kind=kind, ratio=ratio, image_ratio=image_ratio))
    assert vt_task.needs_teacher(cfg) is want


@pytest.fixture(scope="module")
def tasks(tiny_bert: str) -> dict[str, Any]:
    from umt.train.task import build_task

    torch.manual_seed(0)
    base = [*TINY, "task=video_text", "synthetic_samples=4", "text.max_len=10", "text.embed_dim=32",
            f"text.encoder={tiny_bert}", "text.fusion_layer=2"]
    return {"teacher": build_task(tiny_cfg(*base, "text.mlm_weight=0.5", "text.vtc_local_grad=true"), CPU),
            "free": build_task(tiny_cfg(*base, "text.uta_weight=0", "text.mlm_weight=0", "mask.ratio=0",
                                        "mask.image_ratio=0", "model.drop_path=0.3", "model.align_layers=3"), CPU),
            "free_mlm": build_task(tiny_cfg(*base, "text.uta_weight=0", "mask.kind=tube",
                                            "text.grad_checkpointing=true"), CPU)}


def test_tasks_as_built(tasks: dict[str, Any]) -> None:
    """What ``__init__``, ``build_student`` and ``freeze_unused`` leave (the first test of the module fixture: mutmut
    credits a module fixture's calls to the first test that uses it, so these checks live here)."""
    # the teacher-free student follows the config; the pico student's own defaults are 8 frames of 224² (grid
    # 8×14×14), align_layers 4, no drop path
    st = tasks["free"].model.student
    assert st.num_frames == 2 and st.grid == (2, 2, 2) and st.align_layers == 3
    last = st.blocks[-1].drop_path1
    assert type(last).__name__ == "DropPath" and last.drop_prob == pytest.approx(0.3)  # the ramp's last block
    # freeze rules by loss weight
    t, free, mlm = tasks["teacher"].model, tasks["free"].model, tasks["free_mlm"].model
    assert all(p.requires_grad for p in t.heads.parameters()) and all(p.requires_grad for p in t.mlm_head.parameters())
    assert not any(p.requires_grad for p in free.heads.parameters())
    own = [p for p in free.mlm_head.parameters() if p is not free.text.embeddings.word_embeddings.weight]
    assert own and not any(p.requires_grad for p in own)
    assert free.text.embeddings.word_embeddings.weight.requires_grad  # tied: VTC trains it
    assert not any(p.requires_grad for p in mlm.heads.parameters())  # UTA 0, MLM on
    assert all(p.requires_grad for p in mlm.mlm_head.parameters())
    assert tasks["free_mlm"].teacher is None and tasks["free_mlm"].teacher_free
    assert tasks["teacher"].teacher is not None and not tasks["teacher"].teacher_free
    for task in tasks.values():  # the task keeps its own config and runtime, teacher or not
        assert task.rt is CPU and task.cfg.task == "video_text" and task.cfg.text.fusion_layer == 2
    assert tasks["free"].cfg.model.align_layers == 3 and tasks["free_mlm"].cfg.mask.kind == "tube"
    assert tasks["free_mlm"].model.text.grad_checkpointing and not tasks["free"].model.text.grad_checkpointing
    # the model takes the text section's settings and the student's width
    task = tasks["teacher"]
    tc, spec = task.cfg.text, task.spec
    assert t.embed_dim == 32 and t.temp.item() == pytest.approx(tc.temp) and t.mlm_prob == tc.mlm_prob
    assert (t.vtm_hard_negatives, t.vtc_local_grad) == (tc.vtm_hard_negatives, True)  # not the default
    assert spec.vision is task.vision_spec and spec.vision.align_layers == t.student.align_layers
    assert t.text.vision_width == t.student.embed_dim
    assert task.text_info.fusion_layer == 2 and task.init_report is None
    # the FLOP spec against the tiny BERT's own config
    bert = json.loads((Path(tc.encoder) / "config.json").read_text())
    assert (spec.text.width, spec.text.depth) == (bert["hidden_size"], bert["num_hidden_layers"])
    assert spec.text.fusion_layers == bert["num_hidden_layers"] - 2  # text.fusion_layer=2
    assert (spec.text.vocab, spec.text.ffn) == (bert["vocab_size"], bert["intermediate_size"])
    assert spec.embed_dim == 32 and spec.image_mask_ratio == 0.5 and spec.text_tokens == 10
    assert tasks["free"].spec is None


def test_init_from_a_stage1_checkpoint(tasks: dict[str, Any], tmp_path: Path, tiny_bert: str,
                                      caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from umt.train.task import build_task

    # a stage-1 checkpoint of the same student and heads, every value moved off the fresh init
    own = tasks["free"].model.state_dict()
    stage1 = {k: v + 0.5 for k, v in own.items() if k.startswith(("student.", "heads.")) and v.is_floating_point()}
    path = tmp_path / "stage1.pt"
    torch.save({"task": "distill", "model": stage1}, path)
    cfg = tiny_cfg(*TINY, "task=video_text", "synthetic_samples=4", "text.max_len=10", "text.embed_dim=32",
                   f"text.encoder={tiny_bert}", "text.fusion_layer=2", "text.uta_weight=0", "text.mlm_weight=0",
                   "mask.ratio=0", "mask.image_ratio=0", "model.drop_path=0.3", "model.align_layers=3",
                   f"model.init_from={path}")
    with caplog.at_level(logging.INFO, logger="umt.train.video_text.task"):
        task = build_task(cfg, CPU)
    got = task.model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in stage1.items())
    rest = [k for k in got if k not in stage1]
    heads = sum(k.startswith("heads.") for k in stage1)
    assert heads > 0 and task.init_report == {"path": str(path), "loaded": len(stage1), "missing": len(rest),
                                              "dropped": 0}
    prefixes = ", ".join(sorted({k.split(".")[0] for k in rest}))
    assert "text" in prefixes and "student" not in prefixes
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("init from")] == [
        f"init from {path}: {len(stage1)} tensors loaded (student, {heads} UMA head tensors), {len(rest)} not in the "
        f"file and kept as built ({prefixes}: the text encoder keeps its own pretrained weights), 0 file keys unused"]


def test_an_unusable_text_encoder_is_one_config_line(tmp_path: Path) -> None:
    from umt.train.task import build_task

    cfg = tiny_cfg(*TINY, "task=video_text", "synthetic_samples=4", "text.uta_weight=0", "text.mlm_weight=0",
                   "mask.ratio=0", "mask.image_ratio=0", f"text.encoder={tmp_path / 'no_bert'}")
    with pytest.raises(ConfigError, match=f"^text encoder '{tmp_path / 'no_bert'}' is not a directory: give a local "):
        build_task(cfg, CPU)


def test_flops_record_and_lr(tasks: dict[str, Any]) -> None:
    from umt.flops import stage2_flops_per_sample

    task = tasks["teacher"]
    assert task.peak_lr(64) == (task.cfg.optim.lr, task.cfg.optim.min_lr)
    video = {"index": torch.zeros(3), "modality": "video", "text_ids": torch.zeros(3, 7)}
    image = {"index": torch.zeros(2), "modality": "image", "text_ids": torch.zeros(2, 5)}
    v7 = stage2_flops_per_sample(task.spec, "video", 7)["total"]
    i5 = stage2_flops_per_sample(task.spec, "image", 5)["total"]
    assert v7 != i5 and task.flops(video) == 3 * v7 and task.flops(image) == 2 * i5
    rec = task.record()
    assert rec["flops_per_video"] == stage2_flops_per_sample(task.spec, "video")["total"]
    assert rec["flops_per_image"] == stage2_flops_per_sample(task.spec, "image")["total"]
    assert rec["text"]["fusion_layer"] == 2 and rec["init_from"] is None and "teacher" in rec
    free = tasks["free"]
    assert free.spec is None and free.flops(video) is None
    assert free.record() == {"teacher_free": True, "text": free.text_info.to_dict(), "init_from": None}


def test_check_resume_text_encoder(tasks: dict[str, Any], tmp_path: Path) -> None:
    for name in ("free", "teacher"):
        task = tasks[name]
        now = task.text_info.to_dict()
        state = {"text": dict(now), **({} if name == "free" else task.record())}
        task.check_resume(state, tmp_path / "c.pt")  # the same encoder
        task.check_resume({k: v for k, v in state.items() if k != "text"}, tmp_path / "c.pt")  # none recorded
        for change in ({"sha256": "0" * 64}, {"fusion_layer": 1}):
            with pytest.raises(ConfigError, match="another text encoder"):
                task.check_resume({**state, "text": {**now, **change}}, tmp_path / "c.pt")
        # the whole one-line message: the checkpoint, both encoders (path, sha256 prefix, fusion layer), the flag
        old = {"path": "/old/bert", "sha256": "ab" * 32, "fusion_layer": 1}
        with pytest.raises(ConfigError) as e:
            task.check_resume({**state, "text": old}, tmp_path / "c.pt")
        assert str(e.value) == (f"{tmp_path / 'c.pt'} was trained with another text encoder: /old/bert (sha256 "
                                f"{'ab' * 6}, fusion 1) → {now['path']} (sha256 {now['sha256'][:12]}, fusion 2); "
                                "Pass --set text.allow_change=true to resume anyway")
        task.cfg.text.allow_change = True
        try:
            task.check_resume({**state, "text": {**now, "fusion_layer": 1}}, tmp_path / "c.pt")
        finally:
            task.cfg.text.allow_change = False
    # the teacher check (stage 1's) runs with the checkpoint's path when there is a teacher
    task = tasks["teacher"]
    other = {**task.record(), "teacher": {**task.record()["teacher"], "sha256": "cd" * 32}}
    with pytest.raises(ConfigError, match=f"^{tmp_path / 'c.pt'} was trained with other teacher weights: "):
        task.check_resume(other, tmp_path / "c.pt")


def test_teacher_free_resume_skips_the_teacher_check(tasks: dict[str, Any], tmp_path: Path) -> None:
    free = tasks["free"]
    # a record with another teacher would be refused by the teacher check; teacher-free runs have none to compare
    free.check_resume({"teacher": {"sha256": "f" * 64, "path": "x"}, "text": free.text_info.to_dict()},
                      tmp_path / "c.pt")


def test_evaluate_plumbing(tasks: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import umt.eval.retrieval as er

    calls: list[dict[str, Any]] = []
    reports: list[tuple[Any, ...]] = []
    monkeypatch.setattr(er, "retrieval_on_shards",
                        lambda model, cfg, shards, **kw: calls.append({"model": model, "cfg": cfg, "shards": shards,
                                                                       **kw}) or ({"r_mean": 12.5}, {"n": 3}))
    monkeypatch.setattr(er, "write_report", lambda out, m, info, overwrite: reports.append((out, m, info, overwrite)))
    task = tasks["free"]
    assert task.evaluate(True, tmp_path) is None  # no eval set
    task.cfg.eval.shards, task.cfg.eval.rerank_k, task.cfg.eval.batch_size = "/ev", 7, 5
    task.cfg.eval.multi_video_gt = True
    try:
        assert task.evaluate(False, tmp_path) == {"r_mean": 12.5} and reports == []
        c = calls[-1]
        assert c["model"] is task.model and c["shards"] == "/ev" and c["rerank_k"] == 7 and c["batch_size"] == 5
        assert c["cfg"] is task.cfg
        assert c["multi_video_gt"] is True and c["device"] == torch.device("cpu") and c["amp_dtype"] is None
        assert Path(c["tokenizer_dir"]).is_dir()
        assert task.evaluate(True, tmp_path) == {"r_mean": 12.5}
        assert reports == [(tmp_path, {"r_mean": 12.5}, {"n": 3}, True)]
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(task, "rt", Runtime(0, 1, 0, torch.device("cpu"), torch.bfloat16))
            task.evaluate(False, tmp_path)
        assert calls[-1]["amp_dtype"] is torch.bfloat16
    finally:
        task.cfg.eval.shards, task.cfg.eval.multi_video_gt = "", False


def test_loader_errors_are_one_config_line(tasks: dict[str, Any], tmp_path: Path) -> None:
    task = tasks["free"]
    task.cfg.synthetic_data, task.cfg.data.shards = False, str(tmp_path / "absent")
    try:
        with pytest.raises(ConfigError, match=r"^data.shards '.*absent': \S"):
            task.build_loader()
    finally:
        task.cfg.synthetic_data, task.cfg.data.shards = True, ""
    loader = task.build_loader()  # synthetic: the configured samples, videos and as many images
    kinds = [b["modality"] for b in loader.epoch_iter(0)]
    assert sorted(set(kinds)) == ["image", "video"]


def test_loader_arguments_and_error_lines(tasks: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """What build_loader hands the synthetic and the shard loader (rank 1 of 2 here, so no default passes), and its
    one-line errors (the first line of the loader's message, or the exception's name when it has none)."""
    import umt.data.meta_loader as ml
    import umt.data.synthetic as syn
    from umt.model.text import resolve_text_dir

    task = tasks["free"]
    text = task.model.text
    seen: dict[str, Any] = {}
    monkeypatch.setattr(syn, "SyntheticPairLoader", lambda data, **kw: seen.update(synthetic=(data, kw)) or "syn")
    monkeypatch.setattr(ml, "build_video_text_loader", lambda data, **kw: seen.update(shards=(data, kw)) or "shards")
    monkeypatch.setattr(task, "rt", Runtime(1, 2, 1, torch.device("cpu"), None))  # restored after the test
    assert task.build_loader() == "syn"
    assert seen["synthetic"] == (task.cfg.data, {
        "max_len": 10, "cls_id": text.cls_id, "sep_id": text.sep_id, "pad_id": text.pad_id,
        "vocab_size": text.vocab_size, "rank": 1, "world_size": 2, "device": torch.device("cpu"),
        "num_videos": 4, "num_images": 4})
    monkeypatch.setattr(task.cfg, "synthetic_data", False)
    monkeypatch.setattr(task.cfg.data, "shards", "/sh")
    assert task.build_loader() == "shards"
    assert seen["shards"] == (task.cfg.data, {
        "tokenizer": str(resolve_text_dir(task.cfg.text.encoder)), "max_len": 10, "rank": 1, "world_size": 2,
        "device": torch.device("cpu")})
    for err, line in ((ValueError("no captions in /sh\nsecond line"), "no captions in /sh"),
                      (FileNotFoundError(), "FileNotFoundError")):
        monkeypatch.setattr(ml, "build_video_text_loader", lambda data, e=err, **kw: (_ for _ in ()).throw(e))
        with pytest.raises(ConfigError) as e:
            task.build_loader()
        assert str(e.value) == f"data.shards '/sh': {line}"


def test_log_image_is_nothing_teacher_free(tasks: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from umt.train.distill.task import TeacherTask

    seen: list[tuple[Any, ...]] = []
    monkeypatch.setattr(TeacherTask, "log_image",
                        lambda self, step_fn, tb, step: seen.append((self, step_fn, tb, step)))
    tasks["free"].log_image("fn", "tb", 3)
    assert seen == []
    tasks["teacher"].log_image("fn", "tb", 3)
    assert seen == [(tasks["teacher"], "fn", "tb", 3)]


def test_make_step_hands_the_task_parts_to_the_step(tasks: dict[str, Any]) -> None:
    for name in ("teacher", "free"):
        task = tasks[name]
        net = Recorder()
        opt = torch.optim.SGD(net.parameters(), lr=0.0)
        step = task.make_step(net, opt, "sched")
        assert isinstance(step, VideoTextStep)
        assert step.model is net and step.optimizer is opt and step.scheduler == "sched" and step.cfg is task.cfg
        assert step.teacher is task.teacher and (step.teacher is None) == (name == "free")
        assert step.device == torch.device("cpu") and step.amp_dtype is None
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(task, "rt", Runtime(0, 1, 0, torch.device("cpu"), torch.bfloat16))
            assert task.make_step(net, opt, "sched").amp_dtype is torch.bfloat16  # the run's autocast dtype


class SyncRecorder(Recorder):
    """A Recorder with DDP's ``no_sync`` (counts how often the step entered it)."""

    def __init__(self) -> None:
        super().__init__()
        self.no_sync_entered = 0

    def no_sync(self) -> Any:
        import contextlib

        self.no_sync_entered += 1
        return contextlib.nullcontext()


def test_step_defaults_scale_one_and_sync_and_keeps_its_parts() -> None:
    cfg = tiny_cfg("text.uta_weight=0", "mask.kind=tube", base=STEP)
    model = SyncRecorder()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    step = VideoTextStep(model, None, opt, "sched", cfg, torch.device("cpu"), torch.bfloat16)
    assert step.optimizer is opt and step.scheduler == "sched" and step.device == torch.device("cpu")
    assert step.amp_dtype is torch.bfloat16 and step.model is model and step.cfg is cfg
    step.amp_dtype = None  # the sums below in fp32
    step.train_batch(_batch(b=2), seed=1)  # defaults: scale 1, synchronised
    assert model.no_sync_entered == 0
    assert {k: model.w[k].grad.item() for k in Recorder.C} == {"vtc": 1.0, "vtm": 2.0, "mlm": 3.0, "uta": 0.0}
    step.train_batch(_batch(b=2), seed=1, sync=False)  # accumulation: inside no_sync
    assert model.no_sync_entered == 1


def test_teacher_free_mask_is_drawn_for_the_batch_size() -> None:
    step, model = _step("text.uta_weight=0", "mask.kind=random")
    for b in (1, 2):  # not the 3 channels
        step.train_batch(_batch(b=b), seed=3)
        idx = model.calls[-1]["idx"]
        assert idx.shape == (b, 8) and int(idx.max()) < 32
        assert all(len(set(r.tolist())) == 8 for r in idx)  # distinct positions of the 2 × 16 tokens


class AutocastRecorder(Recorder):
    """Records whether the forward ran under CPU autocast and at which dtype."""

    def forward(self, *args: Any, **kw: Any) -> dict[str, torch.Tensor]:
        self.autocast = (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))
        return super().forward(*args, **kw)


def test_model_inputs_autocast_negatives_and_a_fractional_mlm_weight() -> None:
    cfg = tiny_cfg("text.uta_weight=0", "text.mlm_weight=0.5", "mask.kind=tube", base=STEP)
    model = AutocastRecorder()
    step = VideoTextStep(model, None, torch.optim.SGD(model.parameters(), lr=0.0), None, cfg, torch.device("cpu"),
                         torch.bfloat16)
    b = _batch(b=2)
    out = step.train_batch(b, seed=1)
    call = model.calls[-1]
    assert call["video"] is b["video"] and call["ids"] is b["text_ids"] and call["mask"] is b["text_mask"]
    assert call["mlm"] is True  # any weight above 0 turns MLM on
    assert model.autocast == (True, torch.bfloat16)
    assert out["vtc_negatives"].item() == 1.0  # 2 pairs, one process: one other candidate each
    step.amp_dtype = None
    step.train_batch(b, seed=1)
    assert model.autocast[0] is False
