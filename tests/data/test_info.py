"""``python -m umt.data.build.info``: the summary's counts, and ``--verify`` catching a flipped byte in a shard
and a missing or stale ``.idx``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from umt.data.build.info import main, summarize, verify


@pytest.fixture()
def shards(tmp_path: Path, good_shard_set: Path) -> Path:
    d = tmp_path / "shards"
    shutil.copytree(good_shard_set, d)  # a private copy: the tests corrupt it
    return d


def test_summary_counts(shards: Path, capsys: pytest.CaptureFixture) -> None:
    s = summarize(shards)
    m = json.loads((shards / "manifest.json").read_text())
    assert s["samples"] == 8 == sum(s["classes"].values()) and s["shards"] == len(m["shards"])
    assert s["bytes"] == sum(p.stat().st_size for p in shards.glob("*.tar"))
    assert sum(h["count"] for h in s["frames"]["histogram"]) == 8
    assert s["encoding"]["codec"] == m["encoding"]["codec"]
    assert main([str(shards), "--verify", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verify"] == [] and out["samples"] == 8


def test_verify_names_a_flipped_byte(shards: Path, capsys: pytest.CaptureFixture) -> None:
    tar = sorted(shards.glob("*.tar"))[1]
    data = bytearray(tar.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, same size
    tar.write_bytes(bytes(data))
    problems = verify(shards)
    assert problems[0] == f"{tar.name}: sha256 differs from the manifest (the shard changed or is corrupt)"
    assert all(p.startswith(tar.stem) for p in problems)  # only that shard (and its index) is named
    assert main([str(shards), "--verify"]) == 1
    assert tar.name in capsys.readouterr().out


def test_verify_names_a_missing_or_stale_index(shards: Path) -> None:
    idx = sorted(shards.glob("*.idx"))
    idx[0].unlink()
    text = idx[1].read_text().replace(" ", "  ", 1)  # same content, other bytes: a stale or hand-edited index
    idx[1].write_text(text)
    problems = verify(shards)
    assert any(p.startswith(idx[0].name) and "missing" in p for p in problems)
    assert any(p.startswith(idx[1].name) and "does not match" in p for p in problems)
    assert main([str(shards), "--verify"]) == 1


def test_no_manifest_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path)]) == 2
    assert "error:" in capsys.readouterr().err


def test_env_report_names_versions_and_gpu_paths(capsys: pytest.CaptureFixture) -> None:
    import importlib.metadata as md

    import torch

    from umt import env

    assert env.main(["--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["packages"]["torch"] == md.version("torch") and info["packages"]["timm"] == md.version("timm")
    assert info["dali_mixed_decoder"] == (torch.cuda.is_available() and info["packages"]["nvidia-dali"] is not None)
    if not torch.cuda.is_available():
        assert info["gpus"] == [] and info["dali_mixed_decoder_why"] == "no CUDA GPU"
