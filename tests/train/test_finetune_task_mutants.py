"""The fine-tuning task's own logic on the pico classifier: layer ids and group order written out, where the class
count and the pre-training size come from, the head rules, the batch check, the eval-class check, resume refusals,
and what ``evaluate`` hands the loader and the classifier (both replaced by recorders)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import timm
import torch

import umt.model  # noqa: F401 - registers the umt_vit_* names
from umt.config import ConfigError, TrainConfig, apply_overrides
from umt.flops import ViTSpec
from umt.model.load import BackboneState
from umt.train.finetune import task as ft
from umt.train.finetune.task import (FinetuneTask, build_classifier, eval_data_config, layer_decay_groups,
                                     layer_id_for_vit)
from umt.train.runtime import Runtime

PICO = "umt_vit_pico_patch16_224"  # width 96, depth 4, patch 16, tubelet 1
CPU = Runtime(0, 1, 0, torch.device("cpu"), None)


def _cfg(*extra: str) -> TrainConfig:
    return apply_overrides(TrainConfig(task="finetune", device="cpu", synthetic_data=True), [
        "synthetic_samples=8", "data.batch_size=2", "data.num_sample=1", "data.num_frames=2", "data.input_size=32",
        f"model.student={PICO}", "model.drop_path=0.0", "finetune.num_classes=4", "log.tensorboard=false",
        "log.progress=false", *extra])


def _manifest(d: Path, classes: list[str] | None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_text(json.dumps({"classes": classes} if classes is not None else {}))
    return d


# ------------------------------------------------------------------------------------------------- layer-wise decay
@pytest.mark.parametrize("name,lid", [
    ("patch_embed.proj.weight", 0), ("pos_embed", 0), ("cls_token", 0), ("blocks.0.attn.qkv.weight", 1),
    ("blocks.3.norm1.bias", 4), ("blocks.10.mlp.fc1.weight", 11), ("fc_norm.weight", 5), ("head.bias", 5),
    ("norm.weight", 5), ("blocks_extra.weight", 5)])
def test_layer_id_for_vit_by_hand(name: str, lid: int) -> None:
    assert layer_id_for_vit(name, depth=4) == lid


def test_layer_decay_groups_order_frozen_and_skip() -> None:
    model = timm.create_model(PICO, num_frames=2, img_size=32, num_classes=3)
    model.patch_embed.requires_grad_(False)  # frozen parameters join no group
    groups = layer_decay_groups(model, 0.05, 0.5, skip={"head.weight"})
    names = [g["name"] for g in groups]
    # the highest layer first, decay before no_decay within a layer; no layer 0 (frozen); head.weight skipped
    assert names == ["layer_5_no_decay", "layer_4_decay", "layer_4_no_decay", "layer_3_decay", "layer_3_no_decay",
                     "layer_2_decay", "layer_2_no_decay", "layer_1_decay", "layer_1_no_decay"]
    assert all(set(g) == {"name", "params", "weight_decay", "lr_scale"} for g in groups)
    scale = {g["name"]: g["lr_scale"] for g in groups}
    assert scale["layer_5_no_decay"] == 1.0 and scale["layer_1_decay"] == 0.5 ** 4 and scale["layer_3_decay"] == 0.25
    head = [g for g in groups if any(p is model.head.weight for p in g["params"])]
    assert [g["name"] for g in head] == ["layer_5_no_decay"] and head[0]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())
    flat = layer_decay_groups(model, 0.05, 1.0)
    assert {g["lr_scale"] for g in flat} == {1.0}
    assert {g["weight_decay"] for g in flat} == {0.0, 0.05}


# ---------------------------------------------------------------------------------------------------- class count
def test_num_classes_from_the_config_or_the_manifest(tmp_path: Path) -> None:
    assert ft._resolve_num_classes(_cfg("finetune.num_classes=7")) == 7
    with pytest.raises(ConfigError, match="set it with synthetic data"):
        ft._resolve_num_classes(_cfg("finetune.num_classes=0"))
    shards = _manifest(tmp_path / "train", ["a", "b", "c"])
    cfg = _cfg("finetune.num_classes=0", "synthetic_data=false", f"data.shards={shards}")
    assert ft._resolve_num_classes(cfg) == 3
    _manifest(shards, None)
    with pytest.raises(ConfigError, match="lists no class names"):
        ft._resolve_num_classes(cfg)
    _manifest(shards, [])
    with pytest.raises(ConfigError, match="lists no class names"):
        ft._resolve_num_classes(cfg)


# ------------------------------------------------------------------------------------------------------ the model
def _state(sd: dict[str, torch.Tensor], **kw: Any) -> BackboneState:
    return BackboneState(path="/init.pt", kind=kw.pop("kind", "distill"), state_dict=sd, **kw)


def _student_sd(frames: int = 2, size: int = 32, classes: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    m = timm.create_model(PICO, num_frames=frames, img_size=size, num_classes=classes)
    return {k: v for k, v in m.state_dict().items() if classes or not k.startswith(("head.", "fc_norm."))}


def test_pretrain_size_resolution_order() -> None:
    # 1. the config's own value wins over the file's record
    m, _ = build_classifier(_cfg("finetune.pretrain_num_frames=4", "finetune.pretrain_img_size=48"), 4,
                            _state(_student_sd(4, 48), num_frames=2, img_size=32))
    assert m.pretrain_grid == (4, 3, 3)
    # 2. a fine-tuned file's pre-training record before its own size
    m, _ = build_classifier(_cfg(), 4, _state(_student_sd(4, 48), num_frames=8, img_size=64,
                                              pretrain_num_frames=4, pretrain_img_size=48))
    assert m.pretrain_grid == (4, 3, 3)
    # 3. the file's own size
    m, _ = build_classifier(_cfg(), 4, _state(_student_sd(4, 48), num_frames=4, img_size=48))
    assert m.pretrain_grid == (4, 3, 3)
    # 4. nothing recorded: the run's own size (2 frames of 32²)
    m, _ = build_classifier(_cfg(), 4, _state(_student_sd(2, 32)))
    assert m.pretrain_grid == (2, 2, 2)
    m, rep = build_classifier(_cfg("data.num_frames=4", "data.input_size=48"), 4, None)
    assert m.pretrain_grid == (4, 3, 3) and rep is None


def test_head_rules(caplog: pytest.LogCaptureFixture) -> None:
    sd = _student_sd(classes=4)
    with torch.no_grad():
        sd["head.weight"] = torch.arange(4 * 96, dtype=torch.float32).reshape(4, 96)
        sd["head.bias"] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    m, rep = build_classifier(_cfg(), 4, _state(sd, kind="finetune"))  # same count: loaded
    assert torch.equal(m.head.bias, sd["head.bias"]) and "head.weight" not in rep.missing
    m, rep = build_classifier(_cfg("finetune.init_head=false"), 4, _state(sd, kind="finetune"))  # fresh head
    assert not torch.equal(m.head.bias, sd["head.bias"]) and torch.equal(m.head.bias, torch.zeros(4))
    assert m.head.weight.abs().max() < 0.001  # the × head_init_scale fresh head
    m, _ = build_classifier(_cfg("finetune.label_map=first", "finetune.num_classes=2"), 2,
                            _state(sd, kind="finetune"))
    assert torch.equal(m.head.bias, torch.tensor([1.0, 2.0]))
    with pytest.raises(ConfigError, match="finetune.label_map: "):
        build_classifier(_cfg("finetune.label_map=first", "finetune.num_classes=6"), 6, _state(sd, kind="finetune"))
    with caplog.at_level(logging.WARNING, logger="umt.train.finetune.task"):
        m, _ = build_classifier(_cfg("finetune.label_map=first"), 4, _state(_student_sd()))
    assert "no classifier head" in caplog.text and torch.equal(m.head.bias, torch.zeros(4))
    with pytest.raises(ConfigError, match="model.student 'vit_base_patch16_224' is not one of"):
        build_classifier(_cfg("model.student=vit_base_patch16_224"), 4, None)
    bad = _student_sd()
    bad["blocks.0.attn.qkv.weight"] = torch.zeros(3, 3)
    with pytest.raises(ConfigError, match="^model.init_from: "):
        build_classifier(_cfg(), 4, _state(bad))


def test_eval_data_config_takes_the_eval_fields(tmp_path: Path) -> None:
    cfg = _cfg(f"eval.shards={tmp_path}", "eval.batch_size=3", "data.num_frames=4", "data.input_size=48",
               "data.mean=0.1,0.2,0.3")
    dc = eval_data_config(cfg, 2, 3)
    assert (dc.shards, dc.batch_size, dc.num_frames, dc.input_size) == (str(tmp_path), 3, 4, 48)
    assert not dc.train and tuple(dc.mean) == (0.1, 0.2, 0.3)
    assert (dc.temporal_views, dc.spatial_views) == (2, 3)


# --------------------------------------------------------------------------------------------------------- the task
def test_task_records_the_resolved_pretraining_size_and_its_metadata() -> None:
    cfg = _cfg("data.num_frames=4", "data.input_size=48")
    task = FinetuneTask(cfg, CPU)
    assert (cfg.finetune.pretrain_num_frames, cfg.finetune.pretrain_img_size) == (4, 48)
    meta = task.export_metadata()
    assert meta["pretrain_num_frames"] == "4" and meta["pretrain_img_size"] == "48"
    rec = task.record()
    assert rec["num_classes"] == 4 and rec["pretrain_grid"] == [4, 3, 3]
    assert rec["finetune_init"] == {"path": None, "kind": None, "arch": None, "load": None}
    per_clip = rec["flops_per_clip"]  # umt.flops' own tests check the formula; here: what the task multiplies
    assert task.flops({"index": torch.zeros(5)}) == 5 * per_clip
    assert task.samples({"index": torch.zeros(5)}) == 5
    assert task.spec.num_classes == 4 and task.spec.num_frames == 4 and task.spec.input_size == 48
    assert task.spec.student == ViTSpec(96, 4, 16) and task.spec.tubelet == 1
    assert task.param_groups(0.05)[0]["name"] == "layer_5_decay"


def test_check_config_wants_an_even_mixed_batch() -> None:
    FinetuneTask.check_config(_cfg("data.batch_size=2"))
    FinetuneTask.check_config(_cfg("data.batch_size=3", "data.num_sample=2"))  # 6 clips
    with pytest.raises(ConfigError, match="must be even, got 3 × 1"):
        FinetuneTask.check_config(_cfg("data.batch_size=3"))
    FinetuneTask.check_config(_cfg("data.batch_size=3", "finetune.mixup=0", "finetune.cutmix=0"))
    FinetuneTask.check_config(_cfg("data.batch_size=3", "finetune.mixup_prob=0"))


def test_eval_classes_must_match_the_training_classes(tmp_path: Path) -> None:
    train = _manifest(tmp_path / "train", ["a", "b"])
    same = _manifest(tmp_path / "same", ["a", "b"])
    other = _manifest(tmp_path / "other", ["b", "a"])  # same names, another order: the label ids differ
    none = _manifest(tmp_path / "none", None)
    real = ["synthetic_data=false", f"data.shards={train}", "finetune.num_classes=2"]
    FinetuneTask(_cfg(*real, f"eval.shards={same}"), CPU)
    FinetuneTask(_cfg(*real, f"eval.shards={none}"), CPU)  # no class list: nothing to compare
    FinetuneTask(_cfg(*real, f"eval.shards={tmp_path / 'absent'}"), CPU)  # the loader reports it later
    with pytest.raises(ConfigError, match="has other classes than data.shards"):
        FinetuneTask(_cfg(*real, f"eval.shards={other}"), CPU)
    FinetuneTask(_cfg(f"eval.shards={other}"), CPU)  # synthetic training data: not compared
    FinetuneTask(_cfg(*real), CPU)  # no eval set


def test_check_resume_refusals() -> None:
    task = FinetuneTask(_cfg(), CPU)
    task.check_resume({}, Path("c.pt"))  # nothing recorded
    task.check_resume({"num_classes": 4, "pretrain_grid": (2, 2, 2)}, Path("c.pt"))  # a tuple equals the list
    with pytest.raises(ConfigError, match="c.pt was trained with num_classes 5, this run has 4"):
        task.check_resume({"num_classes": 5}, Path("c.pt"))
    with pytest.raises(ConfigError, match=r"pretrain_grid \[2, 3, 3\], this run has \[2, 2, 2\]"):
        task.check_resume({"num_classes": 4, "pretrain_grid": [2, 3, 3]}, Path("c.pt"))


class _Loader:
    def __init__(self, dc: Any, **kw: Any) -> None:
        self.dc, self.kw, self.closed = dc, kw, False
        self.manifest = {"classes": ["w", "x", "y", "z"]}

    def close(self) -> None:
        self.closed = True


def test_evaluate_views_report_and_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import umt.data

    loaders: list[_Loader] = []
    calls: list[dict[str, Any]] = []

    def build_loader(dc: Any, **kw: Any) -> _Loader:
        loaders.append(_Loader(dc, **kw))
        return loaders[-1]

    def classify(model: Any, loader: Any, **kw: Any) -> dict[str, Any]:
        calls.append({"loader": loader, **kw})
        return {"top1": 50, "top5": 75.5, "ok": True, "names": ["a"], "mean_class_acc": 40.0}

    monkeypatch.setattr(umt.data, "build_loader", build_loader)
    monkeypatch.setattr(ft, "classify", classify)
    task = FinetuneTask(_cfg(), CPU)
    assert task.evaluate(True, tmp_path) is None  # no eval set
    task = FinetuneTask(_cfg(f"eval.shards={tmp_path}", "eval.views=2x3", "model.init_from="), CPU)
    out = task.evaluate(False, tmp_path)
    assert out == {"top1": 50.0, "top5": 75.5, "mean_class_acc": 40.0, "num_views": 1.0}
    assert all(type(v) is float for v in out.values())
    dc = loaders[-1].dc
    assert (dc.temporal_views, dc.spatial_views, dc.shards) == (1, 1, str(tmp_path)) and loaders[-1].closed
    assert loaders[-1].kw == {"rank": 0, "world_size": 1, "device": torch.device("cpu")}
    c = calls[-1]
    assert c["out_dir"] is None and c["num_classes"] == 4 and c["class_names"] == ["w", "x", "y", "z"]
    assert c["meta"] == {"task": "finetune", "shards": str(tmp_path), "views": "1x1", "init_from": ""}
    assert c["device"] == torch.device("cpu") and c["amp_dtype"] is None and c["loader"] is loaders[-1]
    out = task.evaluate(True, tmp_path)  # the final evaluation: the configured views and a report directory
    assert out["num_views"] == 6.0 and calls[-1]["out_dir"] == tmp_path / "eval_final"
    assert (loaders[-1].dc.temporal_views, loaders[-1].dc.spatial_views) == (2, 3)
    assert calls[-1]["meta"]["views"] == "2x3"

    def broken(*a: Any, **k: Any) -> dict[str, Any]:
        raise RuntimeError("decoder died")

    monkeypatch.setattr(ft, "classify", broken)
    with pytest.raises(RuntimeError, match="decoder died"):
        task.evaluate(False, tmp_path)
    assert loaders[-1].closed  # closed on the way out


def test_evaluate_without_a_class_list_passes_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import umt.data

    seen: list[Any] = []

    class Bare(_Loader):
        def __init__(self, dc: Any, **kw: Any) -> None:
            super().__init__(dc, **kw)
            self.manifest = {"classes": []}

    monkeypatch.setattr(umt.data, "build_loader", lambda dc, **kw: Bare(dc, **kw))
    monkeypatch.setattr(ft, "classify", lambda model, loader, **kw: seen.append(kw["class_names"]) or {"top1": 1.0})
    FinetuneTask(_cfg(f"eval.shards={tmp_path}"), CPU).evaluate(False, tmp_path)
    assert seen == [None]


def test_build_loader_synthetic_and_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import umt.data

    task = FinetuneTask(_cfg("synthetic_samples=6", "finetune.num_classes=3"), Runtime(1, 2, 0, torch.device("cpu"),
                                                                                         None))
    loader = task.build_loader()
    assert (loader.rank, loader.world_size, loader.num_samples, loader.num_classes) == (1, 2, 6, 3)
    assert loader.device == torch.device("cpu") and loader.cfg is task.cfg.data
    seen: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(umt.data, "build_loader", lambda dc, **kw: seen.append((dc, kw)) or "L")
    real = FinetuneTask(_cfg("synthetic_data=false", f"data.shards={_manifest(tmp_path / 's', ['a', 'b'])}",
                             "finetune.num_classes=2"), Runtime(1, 2, 0, torch.device("cpu"), None))
    assert real.build_loader() == "L"
    assert seen == [(real.cfg.data, {"rank": 1, "world_size": 2, "device": torch.device("cpu")})]


def test_make_step_carries_the_class_count_and_settings() -> None:
    task = FinetuneTask(_cfg("finetune.num_classes=5", "finetune.label_smoothing=0.2"), CPU)
    opt = torch.optim.SGD(task.model.parameters(), lr=0.1)
    step = task.make_step(task.model, opt, "sched")
    assert step.num_classes == 5 and step.model is task.model and step.optimizer is opt and step.scheduler == "sched"
    assert step.cfg is task.cfg and step.device == torch.device("cpu") and step.amp_dtype is None


def test_classify_forwards_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import umt.eval.classify as ec

    got: list[tuple[Any, ...]] = []
    monkeypatch.setattr(ec, "evaluate_classification",
                        lambda model, loader, **kw: got.append((model, loader, kw)) or {"top1": 1.0})
    out = ft.classify("M", "L", num_classes=7, device=torch.device("cpu"), amp_dtype=torch.bfloat16, out_dir=tmp_path,
                      class_names=["a"], meta={"k": 1})
    assert out == {"top1": 1.0}
    assert got == [("M", "L", {"num_classes": 7, "device": torch.device("cpu"), "amp_dtype": torch.bfloat16,
                               "out_dir": tmp_path, "class_names": ["a"], "meta": {"k": 1}})]
    ft.classify("M", "L", num_classes=2, device=torch.device("cpu"), amp_dtype=None)
    assert got[-1][2] == {"num_classes": 2, "device": torch.device("cpu"), "amp_dtype": None, "out_dir": None,
                          "class_names": None, "meta": None}


def test_param_groups_carry_the_weight_decay() -> None:
    groups = FinetuneTask(_cfg("finetune.layer_decay=0.5"), CPU).param_groups(0.05)
    assert {g["weight_decay"] for g in groups} == {0.0, 0.05}
    assert {g["name"]: g["lr_scale"] for g in groups}["layer_4_decay"] == 0.5


def test_record_names_the_init_file(tmp_path: Path) -> None:
    from umt.model import UMTPretrain

    torch.manual_seed(5)
    pre = UMTPretrain(timm.create_model(PICO, num_frames=2, img_size=32, align_layers=2), teacher_dim=16)
    torch.save({"model": pre.state_dict(), "task": "distill", "student": PICO,
                "config": {"data": {"num_frames": 2, "input_size": 32}}}, tmp_path / "s1.pt")
    task = FinetuneTask(_cfg(f"model.init_from={tmp_path / 's1.pt'}"), CPU)
    rec = task.record()["finetune_init"]
    assert rec["path"] == str(tmp_path / "s1.pt") and rec["kind"] == "distill" and rec["arch"] == PICO
    assert rec["load"] == task.load_report.summary() and "loaded" in rec["load"]


def test_check_resume_checks_the_grid_without_a_class_count() -> None:
    task = FinetuneTask(_cfg(), CPU)
    with pytest.raises(ConfigError, match="pretrain_grid"):
        task.check_resume({"pretrain_grid": [2, 3, 3]}, Path("c.pt"))  # num_classes not recorded: still checked


def test_evaluate_forwards_model_and_amp_and_takes_a_loader_without_manifest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import umt.data

    class NoManifest:
        def close(self) -> None:
            pass

    seen: list[tuple[Any, ...]] = []
    monkeypatch.setattr(umt.data, "build_loader", lambda dc, **kw: NoManifest())
    monkeypatch.setattr(ft, "classify", lambda model, loader, **kw: seen.append((model, kw)) or {"top1": 1.0})
    task = FinetuneTask(_cfg(f"eval.shards={tmp_path}"), Runtime(0, 1, 0, torch.device("cpu"), torch.bfloat16))
    task.evaluate(False, tmp_path)
    model, kw = seen[-1]
    assert model is task.model and kw["amp_dtype"] is torch.bfloat16 and kw["class_names"] is None


def test_eval_data_config_defaults_to_one_view(tmp_path: Path) -> None:
    dc = eval_data_config(_cfg(f"eval.shards={tmp_path}"))
    assert (dc.temporal_views, dc.spatial_views) == (1, 1)


def test_make_step_takes_the_runs_autocast() -> None:
    task = FinetuneTask(_cfg(), Runtime(0, 1, 0, torch.device("cpu"), torch.bfloat16))
    step = task.make_step(task.model, torch.optim.SGD(task.model.parameters(), lr=0.1), None)
    assert step.amp_dtype is torch.bfloat16


def test_classifier_takes_drop_path_and_head_scale() -> None:
    m, _ = build_classifier(_cfg("model.drop_path=0.3", "finetune.head_init_scale=1.0"), 4, None)
    assert m.blocks[-1].drop_path1.drop_prob == pytest.approx(0.3)  # the last block's rate (linear ramp)
    assert 0.01 < m.head.weight.std().item() < 0.03  # truncated normal std 0.02 × 1.0, not × 0.001


def test_no_head_warning_unless_a_map_meets_a_headless_file(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="umt.train.finetune.task"):
        build_classifier(_cfg(), 4, _state(_student_sd()))  # no map, no head: nothing to say
        build_classifier(_cfg("finetune.label_map=first", "finetune.init_head=false"), 4,
                         _state(_student_sd(classes=4), kind="finetune"))  # the head is there, just not used
    assert "no classifier head" not in caplog.text


def test_synthetic_training_data_skips_the_class_comparison(tmp_path: Path) -> None:
    train = _manifest(tmp_path / "train", ["a", "b"])
    other = _manifest(tmp_path / "other", ["b", "a"])
    FinetuneTask(_cfg(f"data.shards={train}", f"eval.shards={other}"), CPU)  # synthetic: the shards are not read
