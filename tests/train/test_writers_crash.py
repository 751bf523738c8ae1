"""Export and evaluation reports under ``SIGKILL`` at their renames: the file a reader finds is whole or absent, the
same command finishes the job (or refuses with its one-line no-overwrite message when the killed run had already
finished the file), and no temporary file stays."""

from __future__ import annotations

import json

import pytest
import torch

from tests.crash import count_replaces, run_killed


def _student() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.LayerNorm(64))


@pytest.mark.parametrize("when", ["before", "after"])
def test_export_killed_at_its_rename(tmp_path, when):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from umt.train.export import export_student

    ref = tmp_path / "ref.safetensors"
    assert count_replaces(lambda: export_student(_student(), ref, {"step": "3"})) == 1
    out = tmp_path / "out.safetensors"
    assert run_killed(lambda: export_student(_student(), out, {"step": "3"}), at=1, when=when)
    if when == "before":
        assert not out.exists()
        export_student(_student(), out, {"step": "3"})  # the same command
    else:
        with pytest.raises(FileExistsError, match="already exists"):
            export_student(_student(), out, {"step": "3"})
    got, want = load_file(str(out)), load_file(str(ref))  # (safetensors orders its metadata keys at random)
    assert set(got) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    assert all(torch.equal(got[k], want[k]) for k in want)
    with safe_open(str(out), "pt") as f, safe_open(str(ref), "pt") as g:
        assert f.metadata() == g.metadata()
    assert not list(tmp_path.glob("*.tmp"))


def _report(out_dir, overwrite=None):
    from umt.eval.report import write_classification_report

    cm = [[3, 1], [0, 4]]
    summary = {"top1": 87.5, "mean_class_acc": 87.5, "num_samples": 8, "per_class": [0.75, 1.0], "confusion": cm}
    return write_classification_report(out_dir, summary, class_names=["a", "b"], overwrite=overwrite)


def test_classification_report_killed_at_each_rename(tmp_path):
    ref = tmp_path / "ref"
    renames = count_replaces(lambda: _report(ref))
    assert renames == 3  # json, md, png
    want = {p.name: p.read_bytes() for p in ref.iterdir()}
    for at in range(1, renames + 1):
        for when in ("before", "after"):
            out = tmp_path / f"{when}{at}"
            assert run_killed(lambda: _report(out), at=at, when=when)
            present = {p.name for p in out.iterdir()} if out.exists() else set()
            for p in present - {n for n in present if n.endswith(".tmp")}:  # the killed writer's tmp may stay, but
                assert (out / p).read_bytes() == want[p]  # every final name holds the whole file
            if "classify.json" in present:
                assert json.loads((out / "classify.json").read_text())["written_by"]
            _report(out)  # the trainer's evaluation hook after resume: replaces its own partial report
            assert {p.name: p.read_bytes() for p in out.iterdir()} == want  # and no temporary file stays
