"""``PairLoader``: batches of (video or image, caption) from one captioned shard directory (stage 2).

Batch contract (shared with the stage-2 task and its synthetic loader)::

    {"modality": "video" | "image",   # python str: a whole batch is one modality
     "video": float [B, 3, T, H, W],   # normalised (data.mean/std); T = data.num_frames for video, 1 for images;
                                       # bf16 on CUDA, float32 on CPU
     "text_ids": int64 [B, L],         # [CLS] ... [SEP] then [PAD]; L = the batch's longest (<= max_len)
     "text_mask": int64 [B, L],        # 1 = real token
     "index": int64 [B],               # the item's index in its data set (equal index = same item)
     "dataset": int}                   # which data set of the mix the batch came from

Training (``cfg.train``): the stage-1 order and resume rules (a fresh global permutation per ``(seed, epoch)`` split
into rank blocks, whole batches only, ``epoch_iter(e, k)`` exactly the tail of ``epoch_iter(e, 0)``) over the rows:
every item once with one caption drawn per ``(seed, epoch, item)`` (``data.caption_sampling="draw"``), or every
(item, caption) pair once (``"each"``, the official pre-training epoch). Evaluation: every item of the rank's block
exactly once in index order, the last batch partial (see :func:`umt.data.pairs.eval_order`), the first
caption, the middle frames and ``data.eval_crop``.

Backends: ``dali`` (the graphs of :mod:`umt.data.dali.pairs`; images are always decoded by DALI, videos on CPU by the
source's seeking decoder) or ``reference`` (:class:`umt.data.pairs.PairDataset`: PIL / PyAV + torch), chosen by
``data.backend`` as for stage 1 (``auto``: DALI where it imports and can decode).

Corrupt items are handled as by the stage-1 loader (:mod:`umt.data.loader`): skipped, counted and named once in
training (a row replaced by the next row of the epoch order that reads), a one-line
:class:`umt.data.clips.CorruptSampleError` in evaluation (retrieval).
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from umt.data.config import DataConfig
from umt.data.loader import ShardLoader, _one_line_errors, choose_backend, dali_available, video_to_device
from umt.data.format import read_manifest
from umt.data.captions import CaptionTokenizer, caption_rows, pad_to_longest
from umt.data.format import META_FIELDS, ShardIndex, caption_counts, require_captions

__all__ = ["PairLoader"]

log = logging.getLogger(__name__)


class ConcatShardIndex(ShardIndex):
    """Several directories' :class:`~umt.data.format.ShardIndex` as one (the official ``ConcatDataset``): sample
    ``offsets[d] + i`` is sample i of directory d, and its ``meta`` member reads with ``index`` = that global
    position, so the batch contract's ``index`` (equal index = same item: VTC/VTM positives) stays unique across the
    corpora of one data set, in both backends (they take ``index`` from the meta).

    Attributes:
        offsets: int [D + 1], the first global position of each directory, then the total.
    """

    def __init__(self, parts: Sequence[ShardIndex]) -> None:
        self.entries = [e for p in parts for e in p.entries]
        self.offsets = [0]
        for p in parts:
            self.offsets.append(self.offsets[-1] + len(p.entries))
        self._files = {}

    def read(self, i: int, ext: str) -> bytes:
        data = super().read(i, ext)
        if ext != "meta" or len(self.offsets) == 2:
            return data
        meta = np.frombuffer(data, "<i4").copy()  # [len(META_FIELDS)]
        meta[META_FIELDS.index("index")] += self.offsets[bisect.bisect_right(self.offsets, i) - 1]
        return meta.tobytes()

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "offsets": self.offsets}


class PairLoader(ShardLoader):
    """Stage-2 batches from one shard directory, or from several of one modality read as one data set (the
    official ``ConcatDataset``: one permutation over all their rows, ``index`` = position in the concatenation; see
    the module docstring for the contract).

    Attributes:
        shard_dirs: the directories, in order (``shard_dir`` is the first).
        modality: ``video`` or ``image`` (the manifest's).
        cfg: the data settings this directory is read with (``batch_size`` the modality's, ``num_frames`` 1 for
            images, ``shards`` the directory).
        num_samples: items in the directory.
        dataset_id: the ``dataset`` value of its batches.
    """

    def __init__(
        self,
        cfg: DataConfig,
        shard_dir: str | Path | Sequence[str | Path],
        *,
        tokenizer: CaptionTokenizer,
        rank: int = 0,
        world_size: int = 1,
        device: Any = "cpu",
        dataset_id: int = 0,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        dirs = [Path(shard_dir)] if isinstance(shard_dir, (str, Path)) else [Path(d) for d in shard_dir]
        if not dirs:
            raise ValueError("PairLoader needs at least one shard directory")
        self.shard_dirs = dirs
        self.shard_dir = dirs[0]
        manifests = [read_manifest(d) for d in dirs]
        self.manifest = manifests[0]
        self.modality: str = self.manifest.get("modality", "video")
        for d, m in zip(dirs[1:], manifests[1:]):
            if m.get("modality", "video") != self.modality:
                raise ValueError(f"{d} holds {m.get('modality', 'video')}s, {dirs[0]} {self.modality}s: one data set "
                                 "is one modality")
        image = self.modality == "image"
        bs = (cfg.image_batch_size or cfg.batch_size) if image else cfg.batch_size
        self.cfg = dataclasses.replace(cfg, shards=",".join(str(d) for d in dirs), batch_size=bs,
                                       num_frames=1 if image else cfg.num_frames)
        if self.cfg.num_sample != 1:
            raise ValueError(f"stage-2 loaders take one view per item (data.num_sample = 1), got {cfg.num_sample}")
        self.tokenizer = tokenizer
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.dataset_id = dataset_id
        self.num_samples: int = sum(int(m["num_samples"]) for m in manifests)
        self.batch_size: int = bs
        parts = [ShardIndex(d, m["shards"]) for d, m in zip(dirs, manifests)]
        for d, part in zip(dirs, parts):
            require_captions(part, d)
        self._index = parts[0] if len(parts) == 1 else ConcatShardIndex(parts)
        self._codecs = sorted({c for m in manifests for c in m.get("codecs", [])})
        self._rows = None
        if self.cfg.train and self.cfg.caption_sampling == "each":  # one row per (item, caption) pair
            counts = np.concatenate([caption_counts(d, part) for d, part in zip(dirs, parts)])  # [num_samples]
            self._rows = caption_rows(counts)
        self.num_rows: int = self.num_samples if self._rows is None else len(self._rows[0])
        """What an epoch permutes: items, or (item, caption) pairs with ``caption_sampling="each"``."""
        if self.cfg.train:
            self._len = (self.num_rows // world_size) // bs
            if self._len == 0:
                raise ValueError(f"{self.cfg.shards}: {self.num_rows} rows over {world_size} ranks give no full "
                                 f"batch of {bs}")
        else:
            per = -(-self.num_samples // world_size)
            n = max(0, min(self.num_samples, (rank + 1) * per) - rank * per)
            self._len = -(-n // bs)
        self.backend = self._choose_backend()
        self._pipe: Any = None
        self._dali_it: Any = None
        self._next: tuple[int, int] | None = None
        self.pipeline_builds = 0
        """DALI pipelines built so far (one per loader unless resumed or an epoch is abandoned part-way)."""
        self._init_skips()

    def _choose_backend(self) -> str:
        if self.modality == "video":
            return choose_backend(self.cfg, list(self._codecs), self.device)
        if self.cfg.backend == "reference":
            return "reference"
        if not dali_available():  # images: DALI decodes the JPEG on CPU (libjpeg-turbo) and GPU (nvJPEG) alike
            if self.cfg.backend == "dali":
                raise RuntimeError("data.backend='dali' but nvidia-dali is not installed (pip install '.[dali]')")
            return "reference"
        return "dali"

    def _source(self, epoch: int, start_batch: int, decode: bool) -> Any:
        from umt.data.pairs import PairSource

        return PairSource(self._index, self.cfg, modality=self.modality, tokenizer=self.tokenizer, rank=self.rank,
                          world_size=self.world_size, first_epoch=epoch, start_batch=start_batch, decode=decode,
                          rows=self._rows)

    def _real_rows(self, b: int) -> int:
        """Rows of batch ``b`` that are real items (evaluation pads the last batch)."""
        if self.cfg.train:
            return self.batch_size
        per = -(-self.num_samples // self.world_size)
        n = max(0, min(self.num_samples, (self.rank + 1) * per) - self.rank * per)
        return min(self.batch_size, n - b * self.batch_size)

    def _dali_iter(self, epoch: int, start_batch: int) -> Iterator[dict[str, Any]]:
        from umt.data.dali.pairs import PAIR_OUTPUTS, build_pair_pipeline

        gpu = self.device.type == "cuda"

        def build(seamless: bool) -> Any:
            src = self._source(epoch, start_batch, decode=not gpu)
            src.seamless = seamless
            return build_pair_pipeline(src, device_id=(self.device.index or 0) if gpu else None)

        for b, out in enumerate(self._dali_batches(epoch, start_batch, build, PAIR_OUTPUTS), start=start_batch):
            self._note_skipped(epoch, b * self.batch_size, out["meta"][:, 8])  # SOURCE_META_FIELDS' ``skipped``
            video = out["video"]
            if self.modality == "image":
                video = video.unsqueeze(2)  # [B, 3, S, S] -> [B, 3, 1, S, S]
            yield self._finish(b, video, out["text_ids"], out["text_len"], out["meta"][:, 4])

    def _ref_iter(self, epoch: int, start_batch: int) -> Iterator[dict[str, Any]]:
        from umt.data.pairs import PairDataset

        ds = PairDataset(self._source(epoch, start_batch, decode=True))
        dl = torch.utils.data.DataLoader(ds, batch_size=self.batch_size, shuffle=False, drop_last=False,
                                         num_workers=self.cfg.num_workers, persistent_workers=False,
                                         pin_memory=self.device.type == "cuda")
        try:
            for b, batch in enumerate(_one_line_errors(dl), start=start_batch):
                self._note_skipped(epoch, b * self.batch_size, batch["skipped"])
                yield self._finish(b, batch["video"], batch["text_ids"], batch["text_len"], batch["index"])
        finally:
            ds.source.index.close()

    def _finish(self, b: int, video: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor,
                index: torch.Tensor) -> dict[str, Any]:
        n = self._real_rows(b)
        video, ids, lengths, index = video[:n], ids[:n], lengths[:n], index[:n]
        text_ids, text_mask = pad_to_longest(ids, lengths)  # [n, L] each
        dev = self.device
        video = video_to_device(video, dev)
        return {
            "modality": self.modality,
            "video": video,  # [n, 3, T, S, S]
            "text_ids": text_ids.to(dev, non_blocking=True),
            "text_mask": text_mask.to(dev, non_blocking=True),
            "index": index.long().to(dev, non_blocking=True),  # [n]
            "dataset": self.dataset_id,
        }
