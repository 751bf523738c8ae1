"""Video-QA accuracy (umt.eval.qa) on hand-worked cases, overall and per question type, and its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from umt.eval.qa import qa_accuracy, question_type, write_report


def test_question_type() -> None:
    assert question_type("What is the man doing?") == "what"
    assert question_type("  who cooks") == "who"
    assert question_type("is it raining?") == "other"
    assert question_type("what is it?", "color") == "color"  # the annotation's type wins


def test_accuracy_hand_worked() -> None:
    """6 questions: what ×3 (2 right), who ×2 (1 right), other ×1 (right, one of its two answers): 4/6 overall,
    what 2/3, who 1/2, other 1/1."""
    truth = [(("dog",), "what is it?", ""), (("run",), "what does he do?", ""), (("red",), "what color?", ""),
             (("man",), "who talks?", ""), (("woman",), "who sings?", ""), (("yes", "yeah"), "is it?", "")]
    preds = ["dog", "run", "blue", "man", "man", "yeah"]
    m = qa_accuracy(truth, preds)
    assert m["accuracy"] == pytest.approx(100 * 4 / 6) and (m["correct"], m["questions"]) == (4, 6)
    assert {t: v["accuracy"] for t, v in m["per_type"].items()} == pytest.approx(
        {"other": 100.0, "what": 100 * 2 / 3, "who": 50.0})
    assert {t: v["questions"] for t, v in m["per_type"].items()} == {"other": 1, "what": 3, "who": 2}


def test_accuracy_is_exact_match_and_counts_must_agree() -> None:
    m = qa_accuracy([(("dog",), "what?", "")], ["dogs"])
    assert m["accuracy"] == 0.0
    with pytest.raises(ValueError):
        qa_accuracy([(("dog",), "what?", "")], [])


def test_report_is_written_once(tmp_path: Path) -> None:
    m = qa_accuracy([(("dog",), "what is it?", "object"), (("no",), "is it?", "yes_no")], ["dog", "yes"])
    m.update(answers=3, k=3)
    preds = [{"question_id": 1, "prediction": "dog"}, {"question_id": 2, "prediction": "yes"}]
    js, md = write_report(tmp_path / "r", m, preds, {"shards": "x"})
    d = json.loads(js.read_text())
    assert d["metrics"]["accuracy"] == 50.0 and d["predictions"] == preds and d["shards"] == "x"
    text = md.read_text()
    assert "| object | 1 | 1 | 100.00 |" in text and "| yes_no | 1 | 0 | 0.00 |" in text and "50.00 %" in text
    with pytest.raises(FileExistsError):
        write_report(tmp_path / "r", m, preds, {"shards": "x"})
    write_report(tmp_path / "r", m, preds, {"shards": "x"}, overwrite=True)
