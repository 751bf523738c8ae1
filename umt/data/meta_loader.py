"""``MetaLoader``: whole image batches and whole video batches interleaved in one order that every rank shares.

Stage 2 trains on several corpora at once (WebVid videos, CC3M/CC12M/COCO/VG/SBU images; one shard directory
each). As the official ``create_dataset`` (``multi_modality/dataset/__init__.py``), the directories of one modality
form one data set (``data.mix="modality"``, :func:`data_sets`: a ``ConcatDataset``, one permutation over all their
rows, so an image batch mixes the image corpora in proportion to their sizes; ``"directory"`` keeps one data set per
directory). As the official ``MetaLoader`` (``multi_modality/dataset/dataloader.py``), each step is one whole batch of
one data set, and the data set of step s is entry s of a random order holding data set d ``len(loader_d)`` times,
so data sets are read in proportion to their sizes and each is read fully once per epoch. The official code
shuffles with Python's ``random`` on rank 0 and broadcasts the order; here the order is a permutation drawn from
``(seed, epoch)`` (:meth:`MetaLoader.order`), the same on every rank with no communication, since every rank's
``len(loader_d)`` is the same (whole batches of the rank's equal block).

Resume mid-epoch (``epoch_iter(epoch, start_batch)``): the batches each data set delivered before ``start_batch``
are counted in the order and each sub-loader starts at its count; as the sub-loaders resume exactly, the tail equals
the full epoch's, batch for batch.

Data set d reads with seed ``data.seed + 1_000_003 * d`` (a one-set mix equals the plain loader; several sets of
equal size do not share their permutations and crops).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from umt.data.config import DataConfig
from umt.data.format import read_manifest
from umt.data.pair_loader import PairLoader
from umt.data.captions import CaptionTokenizer

__all__ = ["MetaLoader", "build_video_text_eval_loader", "build_video_text_loader", "data_sets", "shard_dirs"]

#: Seed offset between the data sets of a mix.
DATASET_SEED_STRIDE = 1_000_003
#: Generator stream of the mix order (the sub-loaders' permutations use ``[seed, epoch]``).
_ORDER_STREAM = 0x4D455441  # "META"


def shard_dirs(shards: str) -> list[str]:
    """The directories ``data.shards`` names (comma-separated; blanks dropped).

    Raises:
        ValueError: none named.
    """
    dirs = [d.strip() for d in shards.split(",") if d.strip()]
    if not dirs:
        raise ValueError("data.shards names no shard directory (stage 2: one or more, comma-separated)")
    return dirs


class MetaLoader:
    """Interleaves whole batches of several loaders (the interface of :class:`umt.data.loader.VideoLoader`).

    Attributes:
        loaders: the sub-loaders, data set d = ``loaders[d]`` (its batches carry ``"dataset": d``).
        seed: the mix order's seed.
        batch_size: ``batch_sizes["video"]`` if the mix holds videos, else the images' batch size.
        batch_sizes: per modality, items per batch.
    """

    def __init__(self, loaders: Sequence[Any], *, seed: int) -> None:
        if not loaders:
            raise ValueError("MetaLoader needs at least one loader")
        self.loaders = list(loaders)
        self.seed = seed
        self.batch_sizes: dict[str, int] = {}
        for L in self.loaders:
            self.batch_sizes.setdefault(getattr(L, "modality", "video"), L.batch_size)
        self.batch_size: int = self.batch_sizes.get("video", next(iter(self.batch_sizes.values())))
        self._lens = [len(L) for L in self.loaders]

    def __len__(self) -> int:
        return sum(self._lens)

    def order(self, epoch: int) -> np.ndarray:
        """The data set of every batch of ``epoch``: int64 [len(self)], data set d ``len(loaders[d])`` times, in the
        permutation drawn from ``(seed, epoch)`` (identical on every rank)."""
        ids = np.repeat(np.arange(len(self.loaders), dtype=np.int64), self._lens)  # [len]
        return ids[np.random.default_rng([self.seed, epoch, _ORDER_STREAM]).permutation(len(ids))]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.epoch_iter(0)

    def epoch_iter(self, epoch: int, start_batch: int = 0) -> Iterator[dict[str, Any]]:
        """Batches of ``epoch`` from batch ``start_batch`` on: exactly the tail of ``epoch_iter(epoch, 0)``.

        Raises:
            ValueError: ``start_batch`` outside ``[0, len(self)]``.
        """
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch must be in [0, {len(self)}], got {start_batch}")
        return self._iter(epoch, start_batch)

    def _iter(self, epoch: int, start_batch: int) -> Iterator[dict[str, Any]]:
        order = self.order(epoch)
        done = np.bincount(order[:start_batch], minlength=len(self.loaders))  # [D] batches already delivered
        its = [L.epoch_iter(epoch, int(k)) for L, k in zip(self.loaders, done)]
        for d in order[start_batch:]:
            batch = next(its[d])
            batch["dataset"] = int(d)
            yield batch
        for d, it in enumerate(its):  # run each to its end, so that DALI pipelines roll over to the next epoch
            for _ in it:
                raise RuntimeError(f"data set {d} ({self.loaders[d]}) delivered more batches than its length")

    def close(self) -> None:
        """Close every sub-loader."""
        for L in self.loaders:
            L.close()


def _tokenizer(tokenizer_dir: str | Path, max_len: int) -> CaptionTokenizer:
    return CaptionTokenizer(tokenizer_dir, max_len)


def _tokenizer_dir(tokenizer_dir: str | Path | None, tokenizer: str | Path | None) -> str | Path:
    if (tokenizer_dir is None) == (tokenizer is None):
        raise TypeError("give the text encoder's directory as tokenizer_dir (or its alias tokenizer), once")
    return tokenizer_dir if tokenizer_dir is not None else tokenizer  # type: ignore[return-value]


def data_sets(cfg: DataConfig) -> list[list[str]]:
    """The directories of each data set of the mix, in the order ``data.shards`` first names them.

    ``data.mix="modality"`` (official ``create_dataset("pt_train")``: the files of one media type become one
    ``ConcatDataset``): one data set per modality holding all its directories, so an image batch draws from every
    image corpus in proportion to its rows. ``"directory"``: one data set per directory. A mix with one directory per
    modality is the same either way.

    Raises:
        ValueError: no directory named; FileNotFoundError: a directory without ``manifest.json``.
    """
    dirs = shard_dirs(cfg.shards)
    if cfg.mix == "directory":
        return [[d] for d in dirs]
    groups: dict[str, list[str]] = {}
    for d in dirs:
        groups.setdefault(read_manifest(d).get("modality", "video"), []).append(d)
    return list(groups.values())


def build_video_text_loader(
    cfg: DataConfig, *, tokenizer_dir: str | Path | None = None, max_len: int, rank: int = 0, world_size: int = 1,
    device: Any = "cpu", tokenizer: str | Path | None = None,
) -> MetaLoader:
    """The stage-2 training loader over every directory in ``cfg.shards`` (video-text and/or image-text).

    Args:
        cfg: data settings; stage 2 uses ``num_frames=4``, ``sampling="rand_middle"``, ``crop="rrc"``,
            ``rrc_scale=(0.5, 1)``, ``interp="bicubic"``, ``caption_sampling="each"``, ``batch_size`` (videos) and
            ``image_batch_size``.
        tokenizer_dir: the text encoder's directory (its Hugging Face tokenizer files).
        max_len: token cap per caption, ``[CLS]`` and ``[SEP]`` included (official ``max_txt_l`` 32).
        tokenizer: alias of ``tokenizer_dir`` (the keyword :class:`umt.train.video_text.task.VideoTextTask` passes).

    Raises:
        FileNotFoundError: a directory without ``manifest.json``, or no ``tokenizer_dir``.
        ValueError: a directory without captions (one line naming it), too few items for one batch per rank, or no
            loadable tokenizer.
    """
    tok = _tokenizer(_tokenizer_dir(tokenizer_dir, tokenizer), max_len)
    loaders: list[PairLoader] = []
    try:
        for d, paths in enumerate(data_sets(cfg)):
            sub = dataclasses.replace(cfg, seed=cfg.seed + DATASET_SEED_STRIDE * d)
            loaders.append(PairLoader(sub, paths, tokenizer=tok, rank=rank, world_size=world_size, device=device,
                                      dataset_id=d))
    except BaseException:
        for L in loaders:
            L.close()
        raise
    return MetaLoader(loaders, seed=cfg.seed)


def build_video_text_eval_loader(
    cfg: DataConfig, shard_dir: str | Path, *, tokenizer_dir: str | Path | None = None, max_len: int, rank: int = 0,
    world_size: int = 1, device: Any = "cpu", tokenizer: str | Path | None = None,
) -> PairLoader:
    """Evaluation loader over one captioned directory: every item of this rank's block once, in index order (rows
    ``index``), the last batch partial; middle frames (``cfg.sampling``), ``cfg.eval_crop``, the first caption.

    Raises:
        As :func:`build_video_text_loader`.
    """
    ev = dataclasses.replace(cfg, train=False, shards=str(shard_dir))
    return PairLoader(ev, shard_dir, tokenizer=_tokenizer(_tokenizer_dir(tokenizer_dir, tokenizer), max_len),
                      rank=rank, world_size=world_size, device=device)
