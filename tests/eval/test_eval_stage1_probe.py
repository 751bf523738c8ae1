"""Stage 1's periodic k-NN probe through the trainer: ``eval.every_epochs=1`` with labelled eval
shards logs ``knn_top1``/``knn_top5`` to ``eval.jsonl`` and TensorBoard, keeps ``best.pt`` by ``knn_top1``, and the
final evaluation (on ``best.pt``'s weights) gives what an independent probe of those weights gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.train_utils import read_metrics
from tests.data_utils import make_clip
from umt.config import apply_overrides
from umt.train.recipes import get_recipe
from umt.train.trainer import Trainer


def _held_out(root: Path) -> Path:
    """6 other clips (other lengths and sizes) of the same three classes: the probe's queries."""
    from umt.data.build.shards import DEFAULT_CODEC, EncodeSettings, build_shards

    rows = []
    for i in range(6):
        p = make_clip(root / "src" / f"q{i}.mp4", n_frames=20 + 5 * i, width=56, height=40 + 8 * (i % 2))
        rows.append({"video": p.name, "label": ["cat", "dog", "eel"][i % 3]})
    ann = root / "src" / "annotations.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_shards([], root / "shards", annotations=ann, settings=EncodeSettings(codec=DEFAULT_CODEC),
                 samples_per_shard=4)
    return root / "shards"


def test_periodic_knn_probe_through_trainer(tmp_path: Path, good_shard_set: Path) -> None:
    shards = good_shard_set  # 8 labelled clips, 3 classes: the bank (and the training set)
    queries = _held_out(tmp_path / "held_out")
    bs = 3
    cfg = apply_overrides(get_recipe("demo"), [
        f"data.shards={shards}", "data.batch_size=4", "data.num_frames=2", "data.input_size=32",
        "model.teacher_image_size=32", "data.backend=reference", "data.num_workers=0", "optim.epochs=2",
        "optim.warmup_epochs=1", "log.every_steps=1", "log.progress=false", "log.image_every_steps=0",
        "eval.every_epochs=1", f"eval.shards={queries}", f"eval.train_shards={shards}", f"eval.batch_size={bs}",
        "eval.knn_k=3"])
    run = tmp_path / "run"
    tr = Trainer(cfg, run)
    try:
        tr.fit()
    finally:
        tr.close()
    rows = read_metrics(run, "eval.jsonl")
    assert [(r["epoch"], r["final"]) for r in rows] == [(1, False), (2, False), (2, True)]
    assert all(0 <= r["knn_top1"] <= 100 and r["knn_top1"] <= r["knn_top5"] <= 100 for r in rows)
    best = torch.load(run / "best.pt", map_location="cpu", weights_only=False)
    periodic = [r["knn_top1"] for r in rows[:2]]
    assert best["eval"]["knn_top1"] == max(periodic) and best["epoch"] == 1 + periodic.index(max(periodic))

    # the final row probes best.pt's weights: an independent probe of them gives the same numbers
    from umt.eval.probe import knn_probe
    from umt.train.distill.step import build_models

    model, _ = build_models(cfg, torch.device("cpu"))
    model.load_state_dict(best["model"])
    ref = knn_probe(model.student, shards, queries, batch_size=1, device="cpu", k=3, base=cfg.data)
    assert rows[2]["knn_top1"] == pytest.approx(ref["knn_top1"]) and rows[2]["knn_top5"] == pytest.approx(
        ref["knn_top5"])

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ev = EventAccumulator(str(run / "tb"))
    ev.Reload()
    assert [s.value for s in ev.Scalars("eval/knn_top1")] == pytest.approx(periodic)
    assert len(ev.Scalars("eval/knn_top1_final")) == 1

    # the fine-tuning demo's side-by-side line: a random backbone of the same size against best.pt
    from umt.eval.probe import format_knn_table, knn_probe_checkpoints

    both = knn_probe_checkpoints({"random backbone": None, "stage-1 checkpoint": run / "best.pt"}, shards, queries,
                                 batch_size=2, k=3, backend="reference", num_workers=0)
    assert list(both) == ["random backbone", "stage-1 checkpoint"]
    assert both["random backbone"]["arch"] == "umt_vit_pico_patch16_224" and both["random backbone"]["num_frames"] == 2
    assert both["stage-1 checkpoint"]["knn_top1"] == pytest.approx(ref["knn_top1"])
    line = format_knn_table(both)
    assert line.startswith("k-NN top-1: random backbone ") and "stage-1 checkpoint" in line
