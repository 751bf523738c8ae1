"""The fine-tuning demo: the fixed per-class split of the sample clips, how ``demo_ft`` finds (or
trains) its stage-1 checkpoint without touching a user's run, and the command end to end on the real sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.train_utils import read_metrics
from umt.data.build.sample_splits import split_rows
from umt.config import apply_overrides
from umt.train.demo import DemoError
from umt.train.recipes import DEMOS, get_recipe

SAMPLES = Path(__file__).resolve().parents[2] / "shards" / "samples" / "annotations.jsonl"


def test_sample_split_is_per_class_fixed_and_disjoint() -> None:
    rows = [json.loads(x) for x in SAMPLES.read_text().splitlines() if x.strip()]
    train, held = split_rows(rows)
    names = lambda rs: [r["video"] for r in rs]  # noqa: E731
    assert sorted(names(train) + names(held)) == sorted(names(rows)) and not set(names(train)) & set(names(held))
    labels = {r["label"] for r in rows}
    assert {r["label"] for r in train} == {r["label"] for r in held} == labels  # every class on both sides
    for lab in labels:  # positions 0, 4, 8, ... of each label's sorted clips are held out
        clips = sorted(r["video"] for r in rows if r["label"] == lab)
        assert [c for c in clips if c in names(held)] == clips[::4]
    assert (len(train), len(held)) == (14, 6)
    assert split_rows(list(reversed(rows))) == (train, held)  # independent of the input order
    with pytest.raises(ValueError, match="cannot be in both"):
        split_rows([{"video": "a.mp4", "label": "x"}, {"video": "b.mp4", "label": "y"}, {"video": "c.mp4",
                                                                                      "label": "y"}])


def _demo_cfg(tmp: Path, *extra: str):  # noqa: ANN202
    for d in ("train", "held"):
        (tmp / d).mkdir(exist_ok=True)
        (tmp / d / "manifest.json").write_text("{}")  # named shard dirs are only checked, never built
    return apply_overrides(get_recipe("demo_ft"), [f"data.shards={tmp / 'train'}", f"eval.shards={tmp / 'held'}",
                                                   *extra])


def test_demo_finds_or_trains_its_stage1_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    calls: list[Path] = []

    def fake_stage1(run_dir: Path) -> int:
        calls.append(run_dir)
        (run_dir / "checkpoints").mkdir(parents=True)
        (run_dir / "checkpoints" / "step_00000060.pt").write_bytes(b"x")
        return 0

    cfg = DEMOS["demo_ft"].prepare(_demo_cfg(tmp_path), fake_stage1)  # runs/demo absent: the stage-1 demo is trained there first
    assert calls == [Path("runs/demo")] and cfg.model.init_from == str(Path("runs/demo/checkpoints/step_00000060.pt"))
    (tmp_path / "runs/demo/checkpoints/step_00000120.pt").write_bytes(b"y")
    cfg = DEMOS["demo_ft"].prepare(_demo_cfg(tmp_path), fake_stage1)  # present: its newest checkpoint, nothing trained
    assert len(calls) == 1 and cfg.model.init_from.endswith("step_00000120.pt")
    cfg = DEMOS["demo_ft"].prepare(_demo_cfg(tmp_path, f"model.init_from={tmp_path / 'runs/demo/checkpoints/step_00000060.pt'}"),
                  fake_stage1)  # a file is used as it is
    assert cfg.model.init_from.endswith("step_00000060.pt")
    # a stage-1 run without checkpoints (a user's, in progress) is never written to
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    Path("runs/demo").mkdir(parents=True)
    Path("runs/demo/config.json").write_text("{}")
    with pytest.raises(DemoError, match="holds a stage-1 run without checkpoints"):
        DEMOS["demo_ft"].prepare(_demo_cfg(tmp_path), fake_stage1)
    with pytest.raises(DemoError, match="neither a checkpoint file nor a run directory"):
        DEMOS["demo_ft"].prepare(_demo_cfg(tmp_path, "model.init_from=some/dir"), fake_stage1)
    with pytest.raises(DemoError, match="eval.shards=.* holds no shards"):
        DEMOS["demo_ft"].prepare(apply_overrides(_demo_cfg(tmp_path), [f"eval.shards={tmp_path / 'nothing'}"]), fake_stage1)
    assert len(calls) == 1


@pytest.mark.slow
def test_demo_ft_command_on_the_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m umt.train --recipe demo_ft`` from a fresh directory, shortened: the split shards are built in
    their default place, the stage-1 file is a given pico checkpoint, 2 steps, then both evaluations print."""
    import timm

    from umt.model import UMTPretrain
    from umt.train.__main__ import main

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    pre = UMTPretrain(timm.create_model("umt_vit_pico_patch16_224", num_frames=4, img_size=112, align_layers=2),
                      teacher_dim=64)
    torch.save({"model": pre.state_dict(), "task": "distill", "student": "umt_vit_pico_patch16_224",
                "config": {"data": {"num_frames": 4, "input_size": 112}}}, tmp_path / "s1.pt")
    rc = main(["--recipe", "demo_ft", "--set", f"model.init_from={tmp_path / 's1.pt'}", "--set", "optim.max_steps=2",
               "--set", "eval.every_epochs=0", "--set", "log.progress=false", "--set", "log.tensorboard=false",
               "--set", "data.num_workers=1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "held-out top-1 (shards/built/sample_ft/heldout):" in out and "before fine-tuning" in out
    for name, n in (("train", 14), ("heldout", 6)):
        m = json.loads(Path(f"shards/built/sample_ft/{name}/manifest.json").read_text())
        assert m["num_samples"] == n and m["classes"] == ["bunny", "live_action", "other_animal", "scenery"]
    final = read_metrics("runs/demo_ft", "eval.jsonl")[-1]
    assert final["final"] and "top1" in final and final.get("num_samples", 6) == 6
    assert not Path("runs/demo").exists()  # the given checkpoint was used: no stage-1 run
