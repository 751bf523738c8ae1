"""``umt.eval.classify`` at the function level, on hand-made loaders and toy models (no shards, no real backbone):
the multi-view mean of the softmax (hand-worked, and written out with ``math.exp`` below), the view count from the
caller or the loader, eval mode / no-grad / autocast around the model and the mode given back, the logits-shape
check, the report (name, meta, ``num_views``, ``overwrite``), ``build_classifier``'s reading of the checkpoint record,
and ``main``'s plumbing (``--views TxS`` order, defaults, precision, the exit status) with the checkpoint reader and
the loader replaced by fakes that record what they are given."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import pytest
import torch

import umt.data
import umt.data.format
import umt.eval.classify as classify
import umt.model.load
from tests.eval_utils import contract_batches
from umt.eval.classify import build_classifier, evaluate_classification
from umt.eval.common import CountError
from umt.model.load import BackboneLoadError, BackboneState

C = 3
LABELS = [2, 0, 1, 1]
# LOGITS[sample][view]; sample 0: the mean of the logits [1, 0.95, 0.6] picks class 0, the mean of the softmax
# picks class 2 (its label); sample 2 is wrong either way.
LOGITS = [
    [[0.0, 0.0, 1.2], [2.0, 1.9, 0.0]],
    [[3.0, 0.0, 0.0], [3.0, 0.0, 0.0]],
    [[0.0, 1.0, 0.0], [0.0, 2.0, 5.0]],
    [[1.0, 0.0, 0.0], [0.0, 4.0, 0.0]],
]
PAD_LOGITS = [50.0, 0.0, 0.0]  # a padding row counted anywhere would flip a prediction to class 0


def _softmax(row: list[float]) -> list[float]:
    e = [math.exp(x) for x in row]
    return [x / sum(e) for x in e]


def _mean_softmax(sample: int) -> list[float]:
    views = [_softmax(r) for r in LOGITS[sample]]
    return [sum(v[c] for v in views) / len(views) for c in range(C)]


class _Model(torch.nn.Module):
    """``video [R, 3, 1, 2, 2]`` carries (index, view) in pixels (0,0,0,0) and (0,0,0,1) → ``LOGITS[index][view]``
    (``PAD_LOGITS`` for index -1), in the video's dtype; records the state of every call."""

    def __init__(self, logits=LOGITS, width: int | None = None, ndim3: bool = False) -> None:  # noqa: ANN001
        super().__init__()
        self.logits, self.width, self.ndim3 = logits, width, ndim3
        self.seen: list[dict] = []

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        self.seen.append({"training": self.training, "grad": torch.is_grad_enabled(), "dtype": video.dtype,
                          "autocast": torch.is_autocast_enabled("cpu"),
                          "autocast_dtype": torch.get_autocast_dtype("cpu")})
        idx = video[:, 0, 0, 0, 0].float().round().long().tolist()
        view = video[:, 0, 0, 0, 1].float().round().long().tolist()
        out = torch.tensor([self.logits[i][v] if i >= 0 else PAD_LOGITS for i, v in zip(idx, view)])
        if self.width is not None:
            out = torch.zeros(out.shape[0], self.width)
        if self.ndim3:
            out = out[:, None, :]
        return out.to(video.dtype)


class _Loader:
    """Rows ``[(index, view)]`` in the given order, ``batch_size`` a batch, the last padded with index -1 rows."""

    def __init__(self, rows, batch_size: int = 3, num_samples: int = 4, labels=LABELS,  # noqa: ANN001
                 dtype: torch.dtype = torch.float32, num_views: int | None = None) -> None:
        self.rows, self.batch_size, self.num_samples = rows, batch_size, num_samples
        self.labels, self.dtype = labels, dtype
        if num_views is not None:
            self.num_views = num_views
        self.batches = 0
        self.closed = False

    def __iter__(self):  # noqa: ANN204
        for batch in contract_batches(self.rows, self.batch_size, self.labels):
            self.batches += 1
            yield {**batch, "video": batch["video"].to(self.dtype)}

    def close(self) -> None:
        self.closed = True


# every (sample, view) once, views of one sample in different batches, rows of several samples in one batch
ROWS = [(2, 1), (0, 0), (3, 1), (1, 0), (0, 1), (2, 0), (3, 0), (1, 1)]


def test_hand_worked_formula_agrees() -> None:
    # the expected values below, from the formula: argmax of the mean softmax over the two views
    pred = [max(range(C), key=lambda c: _mean_softmax(i)[c]) for i in range(4)]
    assert pred == [2, 0, 2, 1]
    # the mean of the logits would get sample 0 wrong
    assert max(range(C), key=lambda c: LOGITS[0][0][c] + LOGITS[0][1][c]) == 0


def test_mean_of_softmax_over_views_with_views_given_by_the_caller() -> None:
    loader = _Loader(ROWS)  # no num_views attribute, no cfg: the loader alone would say 1 view
    res = evaluate_classification(_Model(), loader, num_classes=C, device="cpu", num_views=2)
    # samples 0, 1, 3 right, sample 2 (label 1) wrong; classes 0 and 2: 1/1, class 1: 1/2
    assert res == {"top1": pytest.approx(75.0), "top5": pytest.approx(100.0),
                   "mean_class_acc": pytest.approx(100 * 2.5 / 3), "num_samples": 4, "num_views": 2}
    assert set(res) == {"top1", "top5", "mean_class_acc", "num_samples", "num_views"}


def test_view_count_from_the_loader() -> None:
    res = evaluate_classification(_Model(), _Loader(ROWS, num_views=2), num_classes=C, device=torch.device("cpu"))
    assert res["num_views"] == 2 and res["top1"] == pytest.approx(75.0)
    with pytest.raises(CountError):  # a loader that says 1 view per sample, rows with view 1
        evaluate_classification(_Model(), _Loader(ROWS, num_views=1), num_classes=C, device="cpu")
    with pytest.raises(CountError):  # the loader's view ids must be used: every row as view 0 repeats view 0
        evaluate_classification(_Model(), _NoView(), num_classes=C, device="cpu")


class _NoView:
    num_samples, num_views = 4, 2

    def __iter__(self):  # noqa: ANN204
        for b in _Loader(ROWS):
            yield {k: v for k, v in b.items() if k != "view"}


def test_a_sample_one_view_short_is_counted() -> None:
    with pytest.raises(CountError):
        evaluate_classification(_Model(), _Loader(ROWS[:-1], num_views=2), num_classes=C, device="cpu")


@pytest.mark.parametrize("mode", [True, False])
def test_model_runs_in_eval_mode_without_grad_and_gets_its_mode_back(mode: bool) -> None:
    m = _Model()
    m.train(mode)
    evaluate_classification(m, _Loader(ROWS, num_views=2), num_classes=C, device="cpu")
    assert m.training is mode
    assert m.seen and all(not s["training"] and not s["grad"] and not s["autocast"] for s in m.seen)
    assert all(s["dtype"] == torch.float32 for s in m.seen)


def test_model_mode_given_back_after_an_error() -> None:
    m = _Model(width=C + 1)
    m.train(True)
    with pytest.raises(ValueError):
        evaluate_classification(m, _Loader(ROWS, num_views=2), num_classes=C, device="cpu")
    assert m.training is True


def test_fp32_clips_without_amp_and_bf16_autocast_with_it() -> None:
    m = _Model()
    evaluate_classification(m, _Loader(ROWS, num_views=2, dtype=torch.bfloat16), num_classes=C, device="cpu")
    assert all(s["dtype"] == torch.float32 and not s["autocast"] for s in m.seen)  # bf16 clips made fp32
    m = _Model()
    res = evaluate_classification(m, _Loader(ROWS, num_views=2, dtype=torch.bfloat16), num_classes=C, device="cpu",
                                  amp_dtype=torch.bfloat16)
    assert m.seen and all(s["autocast"] and s["autocast_dtype"] == torch.bfloat16 and s["dtype"] == torch.bfloat16
                          for s in m.seen)
    # every logit above is exact in bf16; the softmax is taken in fp32: the same answer
    assert res["top1"] == pytest.approx(75.0) and res["mean_class_acc"] == pytest.approx(250 / 3)


@pytest.mark.parametrize("kw", [{"width": C + 1}, {"width": C - 1}, {"ndim3": True}])
def test_logits_of_another_shape_are_refused(kw: dict) -> None:
    with pytest.raises(ValueError, match="the model gives logits"):
        evaluate_classification(_Model(**kw), _Loader(ROWS, num_views=2), num_classes=C, device="cpu")


def test_report_name_meta_views_and_class_names(tmp_path: Path) -> None:
    out = tmp_path / "rep"
    evaluate_classification(_Model(), _Loader(ROWS, num_views=2), num_classes=C, device="cpu", out_dir=out,
                            name="val", meta={"checkpoint": "c.pt"}, class_names=["a", "b", "c"])
    assert sorted(p.name for p in out.iterdir()) == ["val.json", "val.md", "val_confusion.png"]
    doc = json.loads((out / "val.json").read_text())
    assert doc["num_views"] == 2 and doc["num_samples"] == 4 and doc["top1"] == pytest.approx(75.0)
    assert doc["meta"] == {"checkpoint": "c.pt", "num_views": 2} and doc["classes"] == ["a", "b", "c"]
    # rows: true class; sample 2 (label 1) predicted 2
    assert doc["confusion"] == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    md = (out / "val.md").read_text()
    assert "# Classification: val" in md and "| num_views | 2 |" in md and "- num_views: `2`" in md
    evaluate_classification(_Model(), _Loader(ROWS, num_views=2), num_classes=C, device="cpu", out_dir=out)
    doc = json.loads((out / "classify.json").read_text())
    assert doc["meta"] == {"num_views": 2} and doc["classes"] == ["0", "1", "2"]


def test_no_report_without_out_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    evaluate_classification(_Model(), _Loader(ROWS, num_views=2), num_classes=C, device="cpu")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_reaches_the_check_and_the_writer(tmp_path: Path) -> None:
    (tmp_path / "val.json").write_text('{"mine": true}')  # someone else's file
    loader = _Loader(ROWS, num_views=2)
    with pytest.raises(FileExistsError, match="val.json"):
        evaluate_classification(_Model(), loader, num_classes=C, device="cpu", out_dir=tmp_path, name="val")
    with pytest.raises(FileExistsError, match="val.json"):
        evaluate_classification(_Model(), loader, num_classes=C, device="cpu", out_dir=tmp_path, name="val",
                                overwrite=False)
    assert loader.batches == 0  # refused before any work
    # another name is free
    evaluate_classification(_Model(), loader, num_classes=C, device="cpu", out_dir=tmp_path, overwrite=False)
    assert (tmp_path / "classify.json").exists()
    evaluate_classification(_Model(), _Loader(ROWS, num_views=2), num_classes=C, device="cpu", out_dir=tmp_path,
                            name="val", overwrite=True)
    assert json.loads((tmp_path / "val.json").read_text())["written_by"] == "umt.eval.classify"


def test_refusal_names_the_first_conflicting_file(tmp_path: Path) -> None:
    (tmp_path / "classify.md").write_text("x")
    with pytest.raises(FileExistsError, match=r"\(classify\.md, "):
        evaluate_classification(_Model(), _Loader(ROWS, num_views=2), num_classes=C, device="cpu", out_dir=tmp_path,
                                overwrite=False)
    (tmp_path / "classify.json").write_text("{}")
    with pytest.raises(FileExistsError, match=r"\(classify\.json, "):
        evaluate_classification(_Model(), _Loader(ROWS, num_views=2), num_classes=C, device="cpu", out_dir=tmp_path,
                                overwrite=False)


# ------------------------------------------------------------------------------------------- build_classifier
class _Created(torch.nn.Module):
    def __init__(self, name: str, **kw) -> None:  # noqa: ANN003
        super().__init__()
        self.name, self.kw = name, kw


def _fake_reader(monkeypatch: pytest.MonkeyPatch, st: BackboneState) -> dict:
    import timm

    calls: dict = {}
    monkeypatch.setattr(umt.model.load, "read_backbone", lambda p: calls.setdefault("read", p) and st)

    def load(model, state, **kw):  # noqa: ANN001, ANN003, ANN202
        calls["load"] = (model, state, kw)

    monkeypatch.setattr(umt.model.load, "load_backbone", load)
    monkeypatch.setattr(timm, "create_model", lambda name, **kw: _Created(name, **kw))
    return calls


def _state(**kw) -> BackboneState:  # noqa: ANN003
    base = dict(path="f.pt", kind="finetune", state_dict={"head.weight": torch.zeros(7, 4)}, arch="arch_x",
                num_frames=8, img_size=224, pretrain_num_frames=4, pretrain_img_size=160)
    base.update(kw)
    return BackboneState(**base)


def test_build_classifier_reads_the_record(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    st = _state()
    calls = _fake_reader(monkeypatch, st)
    with caplog.at_level(logging.WARNING, logger="umt.eval.classify"):
        model, got = build_classifier("f.pt")
    assert calls["read"] == "f.pt" and got is st
    assert model.name == "arch_x" and model.kw == {"num_classes": 7, "num_frames": 8, "img_size": 224,
                                                   "pretrain_num_frames": 4, "pretrain_img_size": 160}
    assert calls["load"][0] is model and calls["load"][1] is st and calls["load"][2] == {"head": True}
    assert not caplog.records


def test_build_classifier_caller_sizes_win_and_are_warned(monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    _fake_reader(monkeypatch, _state())
    with caplog.at_level(logging.WARNING, logger="umt.eval.classify"):
        model, _ = build_classifier("f.pt", num_frames=16)
    assert model.kw["num_frames"] == 16 and model.kw["img_size"] == 224 and len(caplog.records) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="umt.eval.classify"):
        model, _ = build_classifier("f.pt", input_size=112)
    assert model.kw["num_frames"] == 8 and model.kw["img_size"] == 112 and len(caplog.records) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="umt.eval.classify"):
        model, _ = build_classifier("f.pt", num_frames=8, input_size=224)  # the recorded sizes: no warning
    assert not caplog.records


def test_build_classifier_without_recorded_sizes(monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    _fake_reader(monkeypatch, _state(num_frames=None, img_size=None, pretrain_num_frames=None,
                                     pretrain_img_size=None))
    with caplog.at_level(logging.WARNING, logger="umt.eval.classify"):
        model, _ = build_classifier("f.pt", num_frames=4, input_size=64)
    assert model.kw == {"num_classes": 7, "num_frames": 4, "img_size": 64, "pretrain_num_frames": None,
                        "pretrain_img_size": None}
    assert not caplog.records  # nothing recorded to disagree with
    _fake_reader(monkeypatch, _state(pretrain_num_frames=None, pretrain_img_size=None))
    model, _ = build_classifier("f.pt")
    assert model.kw["pretrain_num_frames"] == 8 and model.kw["pretrain_img_size"] == 224  # the recorded sizes


@pytest.mark.parametrize("kw, match", [
    ({"state_dict": {"fc_norm.weight": torch.zeros(4)}}, "no classification head"),
    ({"arch": None}, "does not record"),
    ({"num_frames": None}, "does not record"),
    ({"img_size": None}, "does not record"),
])
def test_build_classifier_refuses(monkeypatch: pytest.MonkeyPatch, kw: dict, match: str) -> None:
    calls = _fake_reader(monkeypatch, _state(**kw))
    with pytest.raises(BackboneLoadError, match=match):
        build_classifier("f.pt")
    assert "load" not in calls


# ------------------------------------------------------------------------------------------------------ main
class _Net(torch.nn.Module):
    """What ``main`` reads off a classifier: frames, grid, patch size, classes; logits as :class:`_Model`."""

    num_frames, grid, patch_size, num_classes = 2, (2, 2, 3), 16, C  # (T, H, W): the input size is H × patch

    def __init__(self, logits) -> None:  # noqa: ANN001
        super().__init__()
        self.inner = _Model(logits)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.inner(video)


def _six_view_logits() -> list:
    # 6 views per sample (2 temporal × 3 spatial): the label's class at 2, another at 0
    return [[[2.0 if c == LABELS[i] else 0.0 for c in range(C)] for _ in range(6)] for i in range(4)]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict:
    """Fakes for the checkpoint reader, the manifest and the loader; a real checkpoint file (for its sha256)."""
    ck = tmp_path / "ck.pt"
    ck.write_bytes(b"checkpoint bytes")
    rec: dict = {"ckpt": ck, "classes": ["a", "b", "c"], "logits": _six_view_logits(), "loaders": []}
    st = _state(arch="arch_y", config={"data": {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}})

    def build(checkpoint, *, num_frames=None, input_size=None):  # noqa: ANN001, ANN202
        rec["build"] = (checkpoint, num_frames, input_size)
        if "build_error" in rec:
            raise rec["build_error"]
        rec["net"] = _Net(rec["logits"])
        return rec["net"], st

    def loader(cfg, *, rank, world_size, device):  # noqa: ANN001, ANN202 - main must pass each (no defaults here)
        v = cfg.temporal_views * cfg.spatial_views
        rows = [(i, j) for j in range(v) for i in range(4)]
        ld = _Loader(rows, batch_size=5, num_views=v)
        rec["loaders"].append((cfg, rank, world_size, device, ld))
        return ld

    def manifest(shards):  # noqa: ANN001, ANN202
        rec["manifest_of"] = shards
        if "manifest_error" in rec:
            raise rec["manifest_error"]
        return {"classes": rec["classes"]}

    monkeypatch.setattr(classify, "build_classifier", build)
    monkeypatch.setattr(umt.data, "build_loader", loader)
    monkeypatch.setattr(umt.data.format, "read_manifest", manifest)
    return rec


def _argv(rec: dict, *extra: str) -> list[str]:
    return ["--checkpoint", str(rec["ckpt"]), "--shards", "some/shards", "--device", "cpu", *extra]


def test_main_views_are_temporal_by_spatial_and_the_defaults(cli: dict, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="umt.eval.classify"):
        assert classify.main(_argv(cli, "--views", "2x3", "--out", str(out))) == 0
    assert cli["manifest_of"] == "some/shards"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # 3 classes in the shards, 3 in the head
    cfg, rank, world, device, ld = cli["loaders"][0]
    assert (cfg.temporal_views, cfg.spatial_views) == (2, 3)
    assert cfg.batch_size == 16 and cfg.num_workers == 4 and cfg.backend == "auto" and cfg.shards == "some/shards"
    assert cfg.num_frames == 2 and cfg.input_size == 32 and cfg.train is False
    assert cfg.mean == (0.1, 0.2, 0.3) and cfg.std == (0.4, 0.5, 0.6)
    assert (rank, world, str(device)) == (0, 1, "cpu") and ld.closed
    assert cli["build"] == (str(cli["ckpt"]), None, None)
    doc = json.loads((out / "classify.json").read_text())
    assert doc["num_views"] == 6 and doc["top1"] == pytest.approx(100.0) and doc["classes"] == ["a", "b", "c"]
    assert doc["meta"] == {"checkpoint": str(cli["ckpt"]),
                           "sha256": hashlib.sha256(b"checkpoint bytes").hexdigest(), "arch": "arch_y",
                           "num_frames": 2, "input_size": 32, "shards": "some/shards", "views": "2x3",
                           "world_size": 1, "precision": "fp32", "num_views": 6}
    assert all(not s["autocast"] and s["dtype"] == torch.float32 for s in cli["net"].inner.seen)
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == {"top1": 100.0, "top5": 100.0, "mean_class_acc": 100.0, "num_samples": 4,
                                     "num_views": 6}
    assert "4 videos × 6 views" in lines[0] and "top-1 100.00 %" in lines[0]


def test_main_view_order_and_options(cli: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert classify.main(_argv(cli, "--views", "3x2", "--out", str(out), "--batch-size", "3", "--num-workers", "0",
                               "--backend", "reference", "--num-frames", "5", "--input-size", "48",
                               "--name", "k400", "--precision", "bf16")) == 0
    cfg = cli["loaders"][0][0]
    assert (cfg.temporal_views, cfg.spatial_views) == (3, 2)
    assert cfg.batch_size == 3 and cfg.num_workers == 0 and cfg.backend == "reference"
    assert cli["build"] == (str(cli["ckpt"]), 5, 48)
    doc = json.loads((out / "k400.json").read_text())
    assert doc["meta"]["views"] == "3x2" and doc["meta"]["precision"] == "torch.bfloat16"
    assert all(s["autocast"] and s["autocast_dtype"] == torch.bfloat16 for s in cli["net"].inner.seen)


def test_main_default_views_4x3(cli: dict) -> None:
    cli["logits"] = [[[2.0 if c == LABELS[i] else 0.0 for c in range(C)] for _ in range(12)] for i in range(4)]
    assert classify.main(_argv(cli)) == 0
    cfg = cli["loaders"][0][0]
    assert (cfg.temporal_views, cfg.spatial_views) == (4, 3)


def test_main_class_names_only_when_they_match_the_head(cli: dict, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    cli["classes"] = ["a", "b"]
    with caplog.at_level(logging.WARNING, logger="umt.eval.classify"):
        assert classify.main(_argv(cli, "--views", "2x3", "--out", str(tmp_path))) == 0
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "the shards name 2 classes, the checkpoint's head has 3"]
    assert json.loads((tmp_path / "classify.json").read_text())["classes"] == ["0", "1", "2"]


def test_main_refuses_an_existing_report_before_reading_the_checkpoint(cli: dict, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "classify.json").write_text('{"written_by": "umt.eval.classify"}')  # even one of ours
    assert classify.main(_argv(cli, "--views", "2x3", "--out", str(tmp_path))) == 2
    assert "build" not in cli and "umt.eval classify: error: " in capsys.readouterr().err
    assert classify.main(_argv(cli, "--views", "2x3", "--out", str(tmp_path), "--overwrite")) == 0
    assert json.loads((tmp_path / "classify.json").read_text())["num_views"] == 6


@pytest.mark.parametrize("what", ["views", "build", "manifest", "logits"])
def test_main_errors_exit_2(cli: dict, what: str, capsys: pytest.CaptureFixture) -> None:
    argv = _argv(cli, "--views", "2x3")
    if what == "views":
        argv = _argv(cli, "--views", "4")
    elif what == "build":
        cli["build_error"] = BackboneLoadError("no head")
    elif what == "manifest":
        cli["manifest_error"] = FileNotFoundError("no manifest")
    else:
        cli["logits"] = [[[0.0] * (C + 1)] * 6] * 4
    assert classify.main(argv) == 2
    assert capsys.readouterr().err.startswith("umt.eval classify: error: ")
    if what == "logits":
        assert cli["loaders"][0][4].closed  # closed on the way out


def test_main_default_device_is_auto(cli: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["--checkpoint", str(cli["ckpt"]), "--shards", "s", "--views", "2x3"]
    assert classify.main(argv) == 0 and str(cli["loaders"][0][3]) == "cpu"
    assert classify.main([*argv, "--device", "auto"]) == 0
    with pytest.raises(RuntimeError, match="no CUDA"):  # a choice argparse accepts; refused by the device check
        classify.main([*argv, "--device", "cuda"])
    with pytest.raises(SystemExit):  # not a choice
        classify.main([*argv, "--device", "tpu"])
    with pytest.raises(SystemExit):
        classify.main([*argv, "--precision", "fp16"])


@pytest.mark.parametrize("extra, amp", [((), torch.bfloat16), (("--precision", "auto"), torch.bfloat16),
                                        (("--precision", "fp32"), None), (("--precision", "bf16"), torch.bfloat16)])
def test_main_precision_on_a_gpu(cli: dict, monkeypatch: pytest.MonkeyPatch, extra: tuple, amp) -> None:  # noqa: ANN001
    """On a (faked) CUDA device ``auto`` means bf16 autocast; the evaluation itself is replaced by a recorder."""
    from umt.eval.common import DistContext

    got: dict = {}
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(classify, "init_distributed", lambda device: got.setdefault("device", device)
                        and DistContext(0, 1, gpu))
    monkeypatch.setattr(_Net, "to", lambda self, *a, **k: self)

    def ev(model, loader, **kw):  # noqa: ANN001, ANN003, ANN202
        got["kw"] = kw
        return {"top1": 1.0, "top5": 2.0, "mean_class_acc": 3.0, "num_samples": 4, "num_views": 6}

    monkeypatch.setattr(classify, "evaluate_classification", ev)
    assert classify.main(["--checkpoint", str(cli["ckpt"]), "--shards", "s", "--views", "2x3", *extra]) == 0
    assert got["device"] == "auto" and got["kw"]["amp_dtype"] == amp and got["kw"]["device"] == gpu
    assert got["kw"]["meta"]["precision"] == (str(amp) if amp else "fp32")
    assert got["kw"]["num_views"] == 6 and got["kw"]["num_classes"] == C and got["kw"]["name"] == "classify"
    assert got["kw"]["out_dir"] is None and got["kw"]["overwrite"] is False and cli["loaders"][0][3] == gpu


def test_usage_names_the_subcommand(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        classify.main([])
    assert capsys.readouterr().err.startswith("usage: python -m umt.eval classify ")


def test_main_logs_info_in_one_line_format(cli: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # as in a fresh interpreter: basicConfig acts
    monkeypatch.setattr(root, "level", logging.WARNING)
    assert classify.main(_argv(cli, "--views", "2x3")) == 0
    assert root.level == logging.INFO and len(root.handlers) == 1
    assert root.handlers[0].formatter._fmt == "%(levelname)s %(name)s: %(message)s"
