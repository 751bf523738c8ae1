"""The embedded sample clips are stored without the byte cap (small, already low bit rate: the demos' figures are
measured on them), and every sample builder uses those settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from umt.data.build import sample_splits, samples
from umt.data.build.encode import EncodeSettings


def test_sample_settings_are_the_default_without_the_cap() -> None:
    st = samples.sample_encode_settings()
    assert st.max_bytes_ratio is None and EncodeSettings().max_bytes_ratio == 0.7
    assert st == EncodeSettings(max_bytes_ratio=None)
    assert samples.sample_encode_settings("vp9").codec == "vp9"


def test_every_sample_builder_uses_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    monkeypatch.setattr(samples, "_ensure", lambda out, ann, default, st, *a: seen.append(st) or out)
    samples.ensure_sample_shards(tmp_path / "a")
    samples.ensure_sample_qa_shards(tmp_path / "b")
    monkeypatch.setattr(sample_splits, "_ensure_one", lambda out, ann, st, *a: seen.append(st))
    sample_splits.ensure_sample_splits(tmp_path / "c")
    assert len(seen) == 4 and all(st.max_bytes_ratio is None for st in seen)
