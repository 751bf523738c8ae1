"""Hand-made evaluation loaders and models that follow the data contract (``index = -1`` padding rows, ``view``), for
the tests of :mod:`umt.eval` (single process and the two-rank worker)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

N, V, C = 5, 3, 4
LABELS = [0, 1, 2, 3, 0]


def logit_table() -> torch.Tensor:
    """float32 ``[N, V, C]``. Samples 0-3: view 0 favours a wrong class (logit 3), views 1 and 2 the label (logit 2):
    one view alone is wrong, the mean softmax of the three is right. Sample 4 (label 0): every view favours class 1."""
    t = torch.zeros(N, V, C)
    for i, y in enumerate(LABELS[:4]):
        t[i, 0, (y + 1) % C] = 3.0
        t[i, 1:, y] = 2.0
    t[4, :, 1] = 2.0
    return t


def expected_scores() -> np.ndarray:
    """``[N, C]``: the mean over views of the softmax of :func:`logit_table`."""
    return logit_table().softmax(-1).mean(1).numpy()


class TableModel(nn.Module):
    """``video [R, 3, 1, 2, 2]`` carrying (index, view) in pixels (0, 0) and (0, 1) → that row of the logit table.
    Padding rows (index -1) get logits of 50 for class 0: counted anywhere, they flip sample 4 to correct."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("table", logit_table())
        self.num_classes = C

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        idx = video[:, 0, 0, 0, 0].round().long()  # [R]
        view = video[:, 0, 0, 0, 1].round().long()  # [R]
        pad = torch.zeros(C)
        pad[0] = 50.0
        out = self.table[idx.clamp(0, N - 1), view.clamp(0, V - 1)]  # [R, C]
        return torch.where((idx >= 0)[:, None], out, pad)


class ContractLoader:
    """Batches of ``rows`` = [(index, view)] in the given order, ``batch_size`` rows each, the last padded with
    ``index = -1`` rows (label -1, view 0)."""

    def __init__(self, rows: Sequence[tuple[int, int]], batch_size: int, num_samples: int = N,
                 num_views: int = V, labels: Sequence[int] = LABELS) -> None:
        self.rows, self.batch_size, self.num_samples, self.num_views = list(rows), batch_size, num_samples, num_views
        self.labels = list(labels)
        self.batches = 0

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch_size)

    def epoch_iter(self, epoch: int = 0, start_batch: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        for batch in contract_batches(self.rows, self.batch_size, self.labels):
            self.batches += 1
            yield batch


def contract_batches(rows: Sequence[tuple[int, int]], batch_size: int,
                     labels: Sequence[int]) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of ``rows`` = [(index, view)] in order, ``batch_size`` rows each, the last padded with ``index = -1``
    rows (label -1, view 0); each clip carries its index and view in two pixels (:class:`TableModel` reads them)."""
    rows = list(rows)
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        chunk = chunk + [(-1, 0)] * (batch_size - len(chunk))
        idx = torch.tensor([i for i, _ in chunk])
        view = torch.tensor([v for _, v in chunk])
        video = torch.zeros(len(chunk), 3, 1, 2, 2)
        video[:, 0, 0, 0, 0] = idx.float()
        video[:, 0, 0, 0, 1] = view.float()
        label = torch.tensor([labels[i] if i >= 0 else -1 for i in idx.tolist()])
        yield {"video": video, "label": label, "index": idx, "view": view}


def all_rows(seed: int = 0) -> list[tuple[int, int]]:
    """Every (sample, view) once, shuffled (views of a sample land in different batches)."""
    rows = [(i, v) for i in range(N) for v in range(V)]
    order = np.random.default_rng(seed).permutation(len(rows))
    return [rows[j] for j in order]


def rank_rows(rank: int) -> tuple[list[tuple[int, int]], int]:
    """Rank 0: the first 5 shuffled rows (2 batches of 4, the second padded with 3 rows); rank 1: the other 10
    (3 batches, one more than rank 0; the last padded with 2 rows). Some samples have views on both ranks."""
    rows = all_rows()
    return (rows[:5], 4) if rank == 0 else (rows[5:], 4)


def tiny_classifier_checkpoint(path: Path, num_classes: int = 3, seed: int = 0) -> Path:
    """A fine-tuning-style trainer file (task ``finetune``, unprefixed classifier keys) of a pico classifier at
    2 frames × 32 px, with a non-trivial head."""
    import timm

    import umt.model  # noqa: F401

    torch.manual_seed(seed)
    m = timm.create_model("umt_vit_pico_patch16_224", num_classes=num_classes, num_frames=2, img_size=32)
    with torch.no_grad():
        m.head.weight.normal_(0, 1.0)
    torch.save({"model": m.state_dict(), "task": "finetune", "student": "umt_vit_pico_patch16_224",
                "config": {"model": {"student": "umt_vit_pico_patch16_224"},
                           "data": {"num_frames": 2, "input_size": 32}}}, path)
    return path
