"""``build_loader``: the video loader other modules code against, with a DALI and a reference backend.

Contract (issue 2)::

    loader = build_loader(cfg, rank=0, world_size=1, device="cpu")
    len(loader)          batches per epoch for this rank (same on every rank; the remainder is dropped)
    loader.num_samples   videos in the data set (manifest.json)
    loader.batch_size    clips per batch = cfg.batch_size * cfg.num_sample
    loader.epoch_iter(epoch, start_batch=0) -> Iterator[dict]   deterministic in (cfg.seed, epoch, rank, world_size)
    loader.close()

    batch = {"video": float [B, 3, T, H, W] (bf16 on CUDA, float32 on CPU), normalised with cfg.mean/std,
             "label": int64 [B] (-1 unlabelled), "index": int64 [B] (the sample's index in manifest order)}

With ``num_sample = k`` the k clips of one video are adjacent in the batch (rows ``k*b .. k*b + k - 1``).

Per-rank split: each epoch, rank r reads a disjoint ``1/world_size`` of the samples and together the ranks cover the
data set (up to the ``num_samples mod world_size`` remainder). DALI: ``fn.readers.webdataset`` with
``num_shards = world_size`` and ``shard_id = (rank + epoch) % world_size`` (so a rank sees a different part every
epoch), rebuilt each epoch with seed ``hash(seed, epoch, rank)``; ``start_batch`` runs and discards the first batches
(exact but not free: one-time cost when resuming). Reference: a global permutation from ``(seed, epoch)`` split into
contiguous rank blocks; ``start_batch`` slices it (free).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from umt.data.config import DataConfig
from umt.data.shards import read_manifest

__all__ = ["VideoLoader", "build_loader", "choose_backend", "dali_available"]

log = logging.getLogger(__name__)


def dali_available() -> bool:
    """Whether ``nvidia.dali`` imports."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def choose_backend(cfg: DataConfig, codecs: list[str], device: torch.device) -> str:
    """Resolve ``cfg.backend`` ("auto": DALI when importable and every shard codec decodes on ``device``).

    Raises:
        RuntimeError: ``backend="dali"`` but DALI is missing or cannot decode the shards' codec on this device.
    """
    from umt.data.dali_pipeline import CPU_DECODABLE, GPU_DECODABLE

    ok_codecs = GPU_DECODABLE if device.type == "cuda" else CPU_DECODABLE
    decodable = bool(codecs) and all(c in ok_codecs for c in codecs)
    if cfg.backend == "reference":
        return "reference"
    have = dali_available()
    if cfg.backend == "dali":
        if not have:
            raise RuntimeError("data.backend='dali' but nvidia-dali is not installed (pip install '.[dali]')")
        if not decodable:
            raise RuntimeError(f"DALI cannot decode codecs {codecs} on {device.type} (CPU: VP8/VP9/MJPEG only)")
        return "dali"
    choice = "dali" if have and decodable else "reference"
    log.info(
        "data backend: %s (dali installed: %s, shard codecs %s, device %s)", choice, have, codecs, device.type
    )
    return choice


def _derive_seed(*parts: int) -> int:
    h = hashlib.sha256(",".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


class VideoLoader:
    """Batches of augmented clips from a shard directory (see the module docstring for the contract)."""

    def __init__(
        self, cfg: DataConfig, *, rank: int = 0, world_size: int = 1, device: Any = "cpu", _fixed_crop: Any = None
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.shard_dir = Path(cfg.shards)
        self.manifest = read_manifest(self.shard_dir)
        self.num_samples: int = int(self.manifest["num_samples"])
        self.batch_size: int = cfg.batch_size * cfg.num_sample
        self.per_rank = self.num_samples // world_size
        self._len = self.per_rank // cfg.batch_size
        if self._len == 0:
            raise ValueError(
                f"{self.num_samples} samples over {world_size} ranks give no full batch of {cfg.batch_size}"
            )
        self.backend = choose_backend(cfg, list(self.manifest.get("codecs", [])), self.device)
        self._fixed_crop = _fixed_crop  # test hook: (pair index, offset index), flip off, same in both backends
        self._pipe: Any = None
        self._ref_index: Any = None

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self.epoch_iter(0)

    # -- DALI ---------------------------------------------------------------------------------------------------

    def _dali_iter(self, epoch: int, start_batch: int) -> Iterator[dict[str, torch.Tensor]]:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        from umt.data.dali_pipeline import build_pipeline, output_names

        shards = self.manifest["shards"]
        paths = [str(self.shard_dir / s["name"]) for s in shards]
        idx = [str((self.shard_dir / s["name"]).with_suffix(".idx")) for s in shards]
        self._close_pipe()
        device_id = (self.device.index or 0) if self.device.type == "cuda" else None
        self._pipe = build_pipeline(
            self.cfg,
            paths,
            idx,
            shard_id=(self.rank + epoch) % self.world_size,
            num_shards=self.world_size,
            seed=_derive_seed(self.cfg.seed, epoch, self.rank),
            device_id=device_id,
            fixed_crop=self._fixed_crop,
        )
        names = output_names(self.cfg.num_sample)
        it = DALIGenericIterator(
            [self._pipe], names, reader_name="Reader", last_batch_policy=LastBatchPolicy.DROP, auto_reset=False
        )
        for b in range(self._len):
            out = next(it)[0]
            if b < start_batch:
                continue
            video = torch.stack([out[n] for n in names[:-1]], 1).flatten(0, 1)  # [B*k, 3, T, S, S]
            meta = out["meta"].long()  # [B, 8]
            yield self._finish(video, meta[:, 3], meta[:, 4])

    # -- reference ----------------------------------------------------------------------------------------------

    def _ref_order(self, epoch: int) -> np.ndarray:
        perm = np.random.default_rng([self.cfg.seed, epoch]).permutation(self.num_samples)  # [N]
        if not self.cfg.train:
            perm = np.arange(self.num_samples)
        mine = perm[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]  # [N // W]
        return mine[: self._len * self.cfg.batch_size]

    def _ref_iter(self, epoch: int, start_batch: int) -> Iterator[dict[str, torch.Tensor]]:
        from umt.data.reference import EpochDataset, ShardIndex

        if self._ref_index is None:
            self._ref_index = ShardIndex(self.shard_dir, self.manifest["shards"])
        cfg = self.cfg
        order = self._ref_order(epoch)[start_batch * cfg.batch_size :]
        ds = EpochDataset(self._ref_index, cfg, order, epoch)
        if self._fixed_crop is not None:
            ds.fixed_crop = self._fixed_crop  # type: ignore[attr-defined]
        dl = torch.utils.data.DataLoader(
            ds,
            batch_size=cfg.batch_size,
            shuffle=False,
            drop_last=True,
            num_workers=cfg.num_workers,
            persistent_workers=False,
            pin_memory=self.device.type == "cuda",
        )
        for batch in dl:
            video = batch["video"].flatten(0, 1)  # [B, k, 3, T, S, S] -> [B*k, 3, T, S, S]
            yield self._finish(video, batch["label"], batch["index"])

    # -- common -------------------------------------------------------------------------------------------------

    def _finish(self, video: torch.Tensor, label: torch.Tensor, index: torch.Tensor) -> dict[str, torch.Tensor]:
        k = self.cfg.num_sample
        dev = self.device
        if dev.type == "cuda":
            video = video.to(dev, non_blocking=True).to(torch.bfloat16)
        else:
            video = video.to(dev, torch.float32)
        return {
            "video": video,
            "label": label.long().repeat_interleave(k).to(dev, non_blocking=True),  # [B*k]
            "index": index.long().repeat_interleave(k).to(dev, non_blocking=True),  # [B*k]
        }

    def epoch_iter(self, epoch: int, start_batch: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of ``epoch`` for this rank, from batch ``start_batch`` on (exactly the tail of the full epoch).

        Raises:
            ValueError: ``start_batch`` outside ``[0, len(self)]``.
        """
        if not 0 <= start_batch <= self._len:
            raise ValueError(f"start_batch must be in [0, {self._len}], got {start_batch}")
        if self.backend == "dali":
            return self._dali_iter(epoch, start_batch)
        return self._ref_iter(epoch, start_batch)

    def _close_pipe(self) -> None:
        if self._pipe is not None:
            del self._pipe
            self._pipe = None

    def close(self) -> None:
        """Release the DALI pipeline and open shard files."""
        self._close_pipe()
        if self._ref_index is not None:
            for f in self._ref_index._files.values():
                f.close()
            self._ref_index = None


def build_loader(cfg: DataConfig, *, rank: int = 0, world_size: int = 1, device: Any = "cpu") -> VideoLoader:
    """Build the loader for ``cfg`` on ``device`` for rank ``rank`` of ``world_size``.

    Raises:
        FileNotFoundError: ``cfg.shards`` has no ``manifest.json``.
        ValueError: too few samples for one batch per rank, or a bad rank.
        RuntimeError: ``backend="dali"`` cannot work here (see :func:`choose_backend`).
    """
    return VideoLoader(cfg, rank=rank, world_size=world_size, device=device)
