"""Video-QA data: the questions stored in a shard directory, their answers and weights, and a loader of
(clip, question) rows.

A QA shard directory is built by ``make_shards`` from the official annotation files (rows ``{video, question, answer,
question_id?, answer_type?}``, :func:`umt.data.build.shards.collect_sources`): one item per video, its questions in
``KEY.json["qa"]``. :func:`read_qa` lists every question as a :class:`QARow`; an epoch of :class:`QALoader` reads
rows (one per question, as the official ``VideoQADataset`` has one per annotation row): training, the stage-1
per-epoch permutation of the rows split into rank blocks (:func:`umt.data.clips.epoch_order`), the frames and crop
drawn from ``(seed, epoch, row)``; evaluation, every row exactly once in row order (:func:`umt.data.pairs.eval_order`).
A batch's clips come from the reference backend (the seeking decoder, torch augmentation: stage 2's
``RandomResizedCrop`` + flip in training, the whole frame resized in evaluation); questions and answers stay strings,
tokenised by the task.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from umt.data.clips import draw_params, epoch_order, read_clip
from umt.data.config import DataConfig
from umt.data.format import ShardIndex, read_manifest
from umt.data.loader import video_to_device
from umt.data.pairs import eval_order
from umt.data.reference import augment_clip

__all__ = ["QARow", "read_qa", "answer_weights", "answer_list", "QALoader"]


@dataclass(frozen=True)
class QARow:
    """One question about one item of a QA shard directory."""

    item: int
    """Position of the video in the directory (``ShardIndex`` order)."""
    question: str
    answers: tuple[str, ...]
    question_id: Any
    type: str = ""
    """``answer_type``/``question_type`` of the annotation; empty when it had none."""


def read_qa(shard_dir: str | Path) -> list[QARow]:
    """Every question of a QA shard directory, item by item, each item's questions in annotation order.

    Raises:
        FileNotFoundError: no ``manifest.json``.
        ValueError: the directory holds no questions (built from annotations without ``question``).
    """
    m = read_manifest(shard_dir)
    index = ShardIndex(shard_dir, m["shards"])
    rows: list[QARow] = []
    try:
        for i in range(len(index)):
            meta = json.loads(index.read(i, "json"))
            for qa in meta.get("qa", []):
                rows.append(QARow(i, qa["question"], tuple(qa["answer"]), qa["question_id"], qa.get("type", "")))
    finally:
        index.close()
    if not rows:
        raise ValueError(f"{shard_dir} holds no questions: build it from a QA annotation file (rows with 'video', "
                         "'question' and 'answer')")
    return rows


def answer_weights(answers: tuple[str, ...] | list[str]) -> tuple[list[str], list[float]]:
    """The distinct answers of a question and their weights, ``count / len(answers)`` (official
    ``qa_dataset.get_answers_with_weights``), in first-seen order."""
    counts = collections.Counter(answers)
    distinct = list(dict.fromkeys(answers))
    return distinct, [counts[a] / len(answers) for a in distinct]


def answer_list(rows: list[QARow]) -> list[str]:
    """The candidate answers when no official answer list is given: every distinct answer of ``rows``, sorted."""
    return sorted({a for r in rows for a in r.answers})


class _QADataset(torch.utils.data.Dataset):
    """Rows ``order[start:]`` of one epoch: ``{"video": float32 [3, T, S, S], "row": int64 []}``."""

    def __init__(self, index: ShardIndex, rows: list[QARow], cfg: DataConfig, order: np.ndarray, epoch: int) -> None:
        self.index, self.rows, self.cfg, self.order, self.epoch = index, rows, cfg, order, epoch

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, j: int) -> dict[str, torch.Tensor]:
        r = int(self.order[j])
        clip = read_clip(self.index, self.rows[r].item, self.cfg, draw_params(self.cfg, self.cfg.seed, self.epoch, r))
        assert clip.frames is not None
        return {"video": augment_clip(clip.frames, self.cfg, clip.windows[0]), "row": torch.tensor(r)}


class QALoader:
    """Batches of (clip, question) rows of one QA shard directory for one rank.

    ``epoch_iter(epoch, start_batch)`` yields ``{"video": [B, 3, T, S, S] on device, "row": int64 [B] (host),
    "index": int64 [B] item ids}``; :attr:`rows` maps a row id to its :class:`QARow`. Training drops the last partial
    batch of a rank (every rank yields the same number of batches); evaluation yields every row of the rank's block
    once (the last batch shorter).

    Raises (from ``__init__``):
        ValueError: no questions in ``shard_dir``, or training rows too few for one batch per rank.
    """

    def __init__(self, cfg: DataConfig, shard_dir: str | Path, *, rank: int = 0, world_size: int = 1,
                 device: Any = "cpu") -> None:
        self.cfg, self.shard_dir = cfg, Path(shard_dir)
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)
        self.rows = read_qa(shard_dir)
        self.batch_size = cfg.batch_size
        n = len(self.rows)
        if cfg.train:
            self._len = (n // world_size) // cfg.batch_size
            if self._len == 0:
                raise ValueError(f"{shard_dir}: {n} questions over {world_size} ranks give no full batch of "
                                 f"{cfg.batch_size}")
        else:
            per = -(-n // world_size)
            self._len = -(-max(0, min(n, (rank + 1) * per) - rank * per) // cfg.batch_size)
        m = read_manifest(shard_dir)
        self._index = ShardIndex(shard_dir, m["shards"])

    def __len__(self) -> int:
        return self._len

    def order(self, epoch: int) -> np.ndarray:
        """Row ids of this rank in ``epoch`` (training: a permutation block; evaluation: its block, unpadded)."""
        n = len(self.rows)
        if self.cfg.train:
            return epoch_order(n, seed=self.cfg.seed, epoch=epoch, rank=self.rank, world_size=self.world_size,
                               batch_size=self.batch_size)
        order, real = eval_order(n, rank=self.rank, world_size=self.world_size, batch_size=self.batch_size)
        return order[:real]

    def epoch_iter(self, epoch: int, start_batch: int = 0) -> Iterator[dict[str, Any]]:
        order = self.order(epoch)[start_batch * self.batch_size:]
        ds = _QADataset(self._index, self.rows, self.cfg, order, epoch)
        dl = torch.utils.data.DataLoader(ds, batch_size=self.batch_size, shuffle=False, drop_last=False,
                                         num_workers=self.cfg.num_workers, persistent_workers=False)
        for batch in dl:
            rows = batch["row"].long()
            yield {"video": video_to_device(batch["video"], self.device), "row": rows,
                   "index": torch.tensor([self.rows[int(r)].item for r in rows], dtype=torch.int64)}

    def close(self) -> None:
        self._index.close()
