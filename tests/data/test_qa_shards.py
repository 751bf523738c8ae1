"""Video-QA annotations in the official layout (rows {video, question, answer, question_id?, answer_type?}) become
shards through make_shards, and come back as questions (umt.data.qa) with the official answer weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.data_utils import frame_image, mjpeg_clip
from umt.data.build.shards import EncodeSettings, build_shards, collect_sources
from umt.data.qa import QALoader, answer_list, answer_weights, read_qa
from umt.data.config import DataConfig

ROWS = [
    {"video": "v0.mp4", "question": "what is he doing?", "answer": "running", "question_id": 11},
    {"video": "v1.mp4", "question": "who is talking?", "answer": ["man", "man", "woman"], "question_id": 12,
     "answer_type": "who"},
    {"video": "v0.mp4", "question": "is it sunny?", "answer": "yes", "question_id": 13, "answer_type": "yes_no"},
]


def qa_shards(root: Path, rows: list[dict] = ROWS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        mjpeg_clip(root / f"v{i}.mp4", [frame_image(k + 3 * i, 48, 32) for k in range(8)])
    (root / "qa_train.json").write_text(json.dumps(rows))
    out = root / "shards"
    build_shards([], out, annotations=root / "qa_train.json", settings=EncodeSettings(codec="mjpeg", gop=1),
                 samples_per_shard=1)
    return out


def test_official_qa_rows_become_questions(tmp_path: Path) -> None:
    out = qa_shards(tmp_path)
    m = json.loads((out / "manifest.json").read_text())
    assert m["num_samples"] == 2 and not m["skipped"]  # one item per video, its questions inside
    rows = read_qa(out)
    # ShardIndex order is the builder's seeded order: compare by question id
    by_id = {r.question_id: r for r in rows}
    assert sorted(by_id) == [11, 12, 13]
    assert by_id[11].question == "what is he doing?" and by_id[11].answers == ("running",) and by_id[11].type == ""
    assert by_id[12].answers == ("man", "man", "woman") and by_id[12].type == "who"
    assert by_id[13].type == "yes_no" and by_id[11].item == by_id[13].item != by_id[12].item
    assert [r.question_id for r in rows if r.item == by_id[11].item] == [11, 13]  # annotation order within a video
    assert answer_list(rows) == ["man", "running", "woman", "yes"]


def test_answer_weights_are_the_official_counts() -> None:
    """man ×2, woman ×1 of 3 answers: 2/3 and 1/3 (official get_answers_with_weights)."""
    assert answer_weights(("man", "man", "woman")) == (["man", "woman"], [2 / 3, 1 / 3])
    assert answer_weights(("yes",)) == (["yes"], [1.0])


def test_question_ids_default_to_the_row_number(tmp_path: Path) -> None:
    (tmp_path / "a.mp4").write_bytes(b"")
    (tmp_path / "qa.json").write_text(json.dumps([{"video": "a.mp4", "question": "q?", "answer": "x"},
                                                  {"video": "a.mp4", "question": "r?", "answer": "y"}]))
    sources, _, _, _ = collect_sources([], tmp_path / "qa.json")
    assert [q["question_id"] for q in sources[0].qa] == [1, 2]


@pytest.mark.parametrize("row", [{"video": "a.mp4", "question": "q?", "answer": ""},
                                 {"video": "a.mp4", "question": "", "answer": "x"},
                                 {"video": "a.mp4", "question": "q?", "answer": []}])
def test_bad_qa_rows_are_refused(tmp_path: Path, row: dict) -> None:
    (tmp_path / "qa.json").write_text(json.dumps([row]))
    with pytest.raises(ValueError, match="QA row"):
        collect_sources([], tmp_path / "qa.json")


def test_loader_rows_training_and_evaluation(tmp_path: Path) -> None:
    out = qa_shards(tmp_path)
    base = dict(shards=str(out), num_frames=2, input_size=32, num_workers=0, crop="rrc", rrc_scale=(0.5, 1.0),
                sampling="rand_middle", eval_crop="resize")
    train = QALoader(DataConfig(batch_size=2, **base), out)
    assert len(train) == 1  # 3 questions, batch 2, drop the partial batch
    b = next(iter(train.epoch_iter(0)))
    assert tuple(b["video"].shape) == (2, 3, 2, 32, 32) and len(set(b["row"].tolist())) == 2
    train.close()
    ev = QALoader(DataConfig(batch_size=2, train=False, **base), out)
    seen = [int(r) for batch in ev.epoch_iter(0) for r in batch["row"]]
    assert sorted(seen) == [0, 1, 2] and len(ev) == 2  # every question once
    ev.close()
