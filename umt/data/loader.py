"""``build_loader``: the video loader other modules code against, with a DALI and a reference backend.

Contract::

    loader = build_loader(cfg, rank=0, world_size=1, device="cpu")
    len(loader)          batches per epoch for this rank (same on every rank; the remainder is dropped)
    loader.num_samples   videos in the data set (manifest.json)
    loader.batch_size    clips per batch = cfg.batch_size * cfg.num_sample
    loader.epoch_iter(epoch, start_batch=0) -> Iterator[dict]   deterministic in (cfg.seed, epoch, rank, world_size)
    loader.close()

    batch = {"video": float [B, 3, T, H, W] (bf16 on CUDA, float32 on CPU), normalised with cfg.mean/std,
             "label": int64 [B] (-1 unlabelled), "index": int64 [B] (the sample's index in manifest order),
             "view": int64 [B] (0 in training; the evaluation view ``c * spatial_views + s``)}

With ``num_sample = k`` the k clips of one video are adjacent in the batch (rows ``k*b .. k*b + k - 1``); in
multi-view evaluation (``train=False``, ``temporal_views * spatial_views = V > 1``, :mod:`umt.data.views`) its V views
are. ``drop_last=False``: ranks split the samples contiguously (the first ``N mod world`` take one more), each
sample of a rank's share comes exactly once, the last batch is padded with rows of ``index`` -1 (and label -1), and
``len`` may differ by one between ranks.

Per-rank split and order (:func:`umt.data.clips.epoch_order`): every epoch a fresh global permutation of the
samples from ``(seed, epoch)``, split into contiguous rank blocks (the official ``DistributedSampler(shuffle=True)``);
the ranks cover the data set up to the ``num_samples mod world_size`` remainder. Every random draw of a sample comes
from ``(seed, epoch, sample index)``, so both backends give the same frames and crops and ``start_batch`` yields
exactly the tail of the full epoch, for free. Both backends decode only the sampled frames.

DALI keeps one pipeline across epochs (the source signals each epoch's end); it is rebuilt only when asked for
something other than the next epoch from its start (a resume, or an epoch abandoned part-way).

Corrupt samples (bytes changed after the build, a truncated tar, a missing member): the source replaces an entry
whose sample fails to read or decode by the next entry of the epoch's order that reads
(:meth:`umt.data.clips.ClipSource.fetch`), so a batch keeps its shape, every rank its batch count, and the order its
determinism; each row's ``meta`` carries ``skipped`` (entries that failed before it), which is how the news leaves
DALI's and torch's worker processes. The loader reads that field in the main process:

* training: the entry's sample is counted for its epoch and named once in the log (``WARNING``: tar, key, the
  error's first line, the replacement; the error is read again here, once per bad sample). :func:`take_skipped`
  returns the counts since its last call (the trainer calls it on logging steps). Flags that DALI left on a GPU are
  kept there and read by :func:`take_skipped` (or every 256 batches), so counting adds no per-batch host sync.
* evaluation (``train=False``: single- and multi-view, retrieval): nothing is skipped; the first bad sample raises
  :class:`umt.data.clips.CorruptSampleError`, one line naming it, since a score over a silently different set
  would not be comparable with other runs.

When :data:`umt.data.clips.SKIP_ATTEMPTS` entries in a row fail (say a data set that is mostly corrupt), the
iteration raises :class:`~umt.data.clips.CorruptSampleError` with one line naming the first of them.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from umt.data.config import DataConfig
from umt.data.format import read_manifest
from umt.data.views import multi_view, num_views

__all__ = ["ShardLoader", "VideoLoader", "video_to_device", "build_loader", "choose_backend", "dali_available",
           "take_skipped"]

#: Batches whose ``skipped`` flags may wait on the device before they are read (one host sync per that many).
_MAX_PENDING = 256


def take_skipped(loader: Any) -> dict[int, int]:
    """Corrupt samples this rank's ``loader`` skipped since the last call: ``{epoch: count}`` (empty: none).

    Works on a shard loader, on a :class:`umt.data.meta_loader.MetaLoader` (the sum over its ``loaders``) and on
    loaders that never skip (synthetic ones): ``{}``. Reads flags left on a GPU (a host sync: call it where the
    caller synchronises anyway, e.g. on logging steps).
    """
    out: dict[int, int] = {}
    for sub in getattr(loader, "loaders", None) or [loader]:
        take = getattr(sub, "take_skipped", None)
        for epoch, n in (take() if take is not None else {}).items():
            out[epoch] = out.get(epoch, 0) + n
    return out


def _raise_one_line(e: BaseException) -> None:
    """Re-raise a :class:`~umt.data.clips.CorruptSampleError` that a worker process raised (DALI and torch wrap it in
    a traceback) as the one line it was; return for any other error."""
    from umt.data.clips import CorruptSampleError

    marker = f"{CorruptSampleError.__name__}: "
    for line in reversed(str(e).splitlines()):
        if marker in line:
            raise CorruptSampleError(line.split(marker, 1)[1].strip()) from None

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
    from umt.data.dali.clips import GPU_DECODABLE

    # CPU: the source decodes with PyAV (any codec FFmpeg reads); GPU: DALI's mixed decoder
    decodable = bool(codecs) and (device.type != "cuda" or all(c in GPU_DECODABLE for c in codecs))
    if cfg.backend == "reference":
        return "reference"
    have = dali_available()
    if cfg.backend == "dali":
        if not have:
            raise RuntimeError("data.backend='dali' but nvidia-dali is not installed (pip install '.[dali]')")
        if not decodable:
            raise RuntimeError(f"DALI's GPU decoder cannot decode codecs {codecs} (it takes {sorted(GPU_DECODABLE)})")
        return "dali"
    choice = "dali" if have and decodable else "reference"
    log.info(
        "data backend: %s (dali installed: %s, shard codecs %s, device %s)", choice, have, codecs, device.type
    )
    return choice


def video_to_device(video: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A loader batch's clips on ``device`` in the trainer's dtype: bf16 on CUDA (autocast's), float32 elsewhere."""
    if device.type == "cuda":
        return video.to(device, non_blocking=True).to(torch.bfloat16)
    return video.to(device, torch.float32)


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Inside, a worker's CorruptSampleError is re-raised as its own one line (see :func:`_raise_one_line`)."""
    try:
        yield
    except Exception as e:
        _raise_one_line(e)
        raise


def _one_line_errors(batches: Any) -> Iterator[Any]:
    """Iterate ``batches`` (a DALI iterator or a torch DataLoader), a worker's CorruptSampleError re-raised as its
    own one line (see :func:`_raise_one_line`)."""
    it = iter(batches)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except Exception as e:
            _raise_one_line(e)
            raise
        yield batch


class ShardLoader:
    """What the shard loaders share (:class:`VideoLoader`, :class:`umt.data.pair_loader.PairLoader`): ``len``, the
    dispatch of :meth:`epoch_iter` to the DALI or the reference backend, and the release of the DALI pipeline and the
    open shard files. Subclasses set ``_len``, ``backend``, ``_pipe``, ``_dali_it``, ``_next``, ``_index`` and define
    ``_dali_iter`` (on :meth:`_dali_batches`) and ``_ref_iter``."""

    _len: int
    backend: str
    cfg: DataConfig
    _pipe: Any = None
    _dali_it: Any = None
    _dali_stream: Any = None
    _next: tuple[int, int] | None = None
    pipeline_builds: int = 0
    #: One DALI pipeline streams epoch after epoch (the source never ends: :attr:`umt.data.clips.ClipSource.seamless`),
    #: so its prefetch queue and worker processes stay busy across epoch boundaries. False: the source ends each epoch
    #: and ``reset()`` starts the next, the queue draining and refilling at every boundary (the benchmark's baseline,
    #: ``benchmarks/bench_epochs.py``).
    seamless_epochs: bool = True
    _index: Any = None
    _probe: Any = None

    def _init_skips(self) -> None:
        """The corrupt-sample bookkeeping (subclasses call it in ``__init__``)."""
        self._skipped: dict[int, int] = {}
        """Samples skipped per epoch since the last :meth:`take_skipped`."""
        self._named: set[int] = set()
        """Samples already named in the log."""
        self._pending: list[tuple[int, int, torch.Tensor]] = []
        """``(epoch, first entry, skipped flags on a device)`` of batches not yet read."""
        self._probe: Any = None
        """A source with its own index, that reads a bad sample again to name its error."""

    def _source(self, epoch: int, start_batch: int, decode: bool) -> Any:
        raise NotImplementedError

    # -- corrupt samples (see the module docstring) ----------------------------------------------------------------

    def _note_skipped(self, epoch: int, first: int, skipped: torch.Tensor) -> None:
        """Account one batch: ``skipped`` int [B] (meta's field) of entries ``first .. first + B - 1`` of ``epoch``'s
        order. Training flags on a device wait (no host sync); evaluation reads them now and raises.

        Raises:
            CorruptSampleError: evaluation, and a row was replaced.
        """
        if skipped.device.type != "cpu" and self.cfg.train:
            self._pending.append((epoch, first, skipped.clone()))
            if len(self._pending) >= _MAX_PENDING:
                self._read_pending()
            return
        for r, k in enumerate(skipped.tolist()):
            if k > 0:
                self._bad_entry(epoch, first + r, int(k))

    def _read_pending(self) -> None:
        pending, self._pending = self._pending, []
        for epoch, first, skipped in pending:
            for r, k in enumerate(skipped.tolist()):
                if k > 0:
                    self._bad_entry(epoch, first + r, int(k))

    def _bad_entry(self, epoch: int, j: int, k: int) -> None:
        """Entry ``j`` of ``epoch``'s order was replaced, ``k`` entries having failed: count it and name its sample
        once (training) or refuse (evaluation). The error is read again here, with a private index (the source's
        open files belong to the pipeline)."""
        from umt.data.clips import CorruptSampleError, data_errors, error_line

        if self._probe is None:
            self._probe = self._source(epoch, 0, decode=True)
            self._probe.index = pickle.loads(pickle.dumps(self._probe.index))  # no shared file handles
        src = self._probe
        order = src.order(epoch)
        i = src.sample_at(order, j)
        name = src.index.name(i)
        try:
            src.read_at(epoch, order, j)
            why = "failed in the loader's worker, reads now (a transient I/O error?)"
        except data_errors() as e:
            why = error_line(e)
        if not self.cfg.train:
            raise CorruptSampleError(f"corrupt sample {name} ({why}); evaluation reads every sample and does not "
                                     "skip: rebuild the shard or remove it from the set (python -m "
                                     "umt.data.build.info DIR --verify checks a directory)")
        self._skipped[epoch] = self._skipped.get(epoch, 0) + 1
        if i not in self._named:  # once per sample (it fails again in every epoch)
            self._named.add(i)
            repl = src.index.name(src.sample_at(order, (j + k) % len(order)))
            log.warning("skipping corrupt sample %s (%s): epoch %d position %d takes %s instead; counted as "
                        "skipped_samples in metrics.jsonl", name, why, epoch, j, repl)

    def take_skipped(self) -> dict[int, int]:
        """Samples skipped since the last call, ``{epoch: count}`` (reads flags left on a GPU: a host sync)."""
        self._read_pending()
        out, self._skipped = self._skipped, {}
        return out

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.epoch_iter(0)

    def _dali_iter(self, epoch: int, start_batch: int) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def _ref_iter(self, epoch: int, start_batch: int) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def epoch_iter(self, epoch: int, start_batch: int = 0) -> Iterator[dict[str, Any]]:
        """Batches of ``epoch`` for this rank, from batch ``start_batch`` on (exactly the tail of the full epoch).

        Raises:
            ValueError: ``start_batch`` outside ``[0, len(self)]``.
        """
        if not 0 <= start_batch <= self._len:
            raise ValueError(f"start_batch must be in [0, {self._len}], got {start_batch}")
        if self._len == 0 or start_batch == self._len:  # nothing left (e.g. an empty rank of an evaluation)
            return iter(())
        if self.backend == "dali":
            return self._dali_iter(epoch, start_batch)
        return self._ref_iter(epoch, start_batch)

    def _dali_batches(self, epoch: int, start_batch: int, build: Any, names: list[str]) -> Iterator[dict[str, Any]]:
        """DALI's outputs (``{name: tensor}``) for batches ``start_batch .. len - 1`` of ``epoch``.

        The pipeline of the previous call goes on when it was left at exactly this point (the end of ``epoch - 1``);
        otherwise (the first call, a resume, an epoch abandoned part-way) ``build(seamless)`` makes a new one,
        ``seamless`` = :attr:`seamless_epochs`: its source then never ends, and each call takes exactly its epoch's
        batches from the one stream.

        Raises:
            RuntimeError: the pipeline ended before the epoch's last batch.
        """
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        if self._pipe is None or self._next != (epoch, start_batch):
            self._close_pipe()
            self._pipe = build(self.seamless_epochs)
            with one_line_errors():  # the iterator runs the first batches now
                self._dali_it = DALIGenericIterator([self._pipe], names, auto_reset=False)
            self._dali_stream = _one_line_errors(self._dali_it)
            self.pipeline_builds += 1
        elif not self.seamless_epochs:
            with one_line_errors():
                self._dali_it.reset()  # the source's next epoch: ``first_epoch + epoch_idx``
            self._dali_stream = _one_line_errors(self._dali_it)
        self._next = None  # a generator abandoned part-way leaves the pipeline mid-epoch: rebuild next time
        for n in range(self._len - start_batch):
            out = next(self._dali_stream, None)
            if out is None:
                raise RuntimeError(f"DALI delivered {n} batches, expected {self._len - start_batch}")
            yield out[0]
        self._next = (epoch + 1, 0)

    def _close_pipe(self) -> None:
        if self._pipe is not None:
            self._dali_stream = None
            self._dali_it = None
            del self._pipe
            self._pipe = None
        self._next = None

    def close(self) -> None:
        """Release the DALI pipeline (and its worker processes) and the open shard files."""
        self._close_pipe()
        if self._index is not None:
            self._index.close()
        if self._probe is not None:
            self._probe.index.close()


class VideoLoader(ShardLoader):
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
        self.views = num_views(cfg)
        """Rows per video: ``num_sample`` (training), ``temporal_views * spatial_views`` or 1 (evaluation)."""
        self.batch_size: int = cfg.batch_size * self.views
        self.per_rank = self.num_samples // world_size
        self._len = self.per_rank // cfg.batch_size
        if not cfg.drop_last:  # every sample once: the first N mod W ranks take one more, the last batch is padded
            self.per_rank += rank < self.num_samples % world_size
            self._len = -(-self.per_rank // cfg.batch_size)
        elif self._len == 0:
            raise ValueError(
                f"{self.num_samples} samples over {world_size} ranks give no full batch of {cfg.batch_size}"
            )
        self.backend = choose_backend(cfg, list(self.manifest.get("codecs", [])), self.device)
        self._fixed_crop = _fixed_crop  # test hook: (pair index, offset index), flip off, same in both backends
        self._pipe: Any = None
        self._dali_it: Any = None
        self._index: Any = None  # umt.data.format.ShardIndex, built on first use
        self._next: tuple[int, int] | None = None  # (epoch, start_batch) the DALI pipeline would deliver next
        self.pipeline_builds = 0
        """DALI pipelines built so far (one per loader unless resumed or an epoch is abandoned part-way)."""
        self._init_skips()

    # -- DALI ---------------------------------------------------------------------------------------------------

    def _source(self, epoch: int, start_batch: int, decode: bool) -> Any:
        from umt.data.clips import ClipSource

        if self._index is None:  # parse the .idx files once, not per epoch
            from umt.data.format import ShardIndex

            self._index = ShardIndex(self.shard_dir, self.manifest["shards"])
        return ClipSource(
            self._index,
            self.cfg,
            rank=self.rank,
            world_size=self.world_size,
            first_epoch=epoch,
            start_batch=start_batch,
            decode=decode,
            fixed_crop=self._fixed_crop,
        )

    def _dali_iter(self, epoch: int, start_batch: int) -> Iterator[dict[str, torch.Tensor]]:
        from umt.data.dali.clips import build_pipeline, output_names

        names = output_names(self.views)
        gpu = self.device.type == "cuda"

        def build(seamless: bool) -> Any:
            src = self._source(epoch, start_batch, decode=not gpu)
            src.seamless = seamless
            return build_pipeline(self.cfg, src, device_id=(self.device.index or 0) if gpu else None)

        for n, out in enumerate(self._dali_batches(epoch, start_batch, build, names)):
            clips = [out[nm] for nm in names[:-1]]  # k x [B, 3, T, S, S]
            video = clips[0] if len(clips) == 1 else torch.stack(clips, 1).flatten(0, 1)  # [B*k, 3, T, S, S]
            meta = out["meta"].long()  # [B, 9]: umt.data.clips.SOURCE_META_FIELDS
            self._note_skipped(epoch, (start_batch + n) * self.cfg.batch_size, meta[:, 8])
            yield self._finish(video, meta[:, 3], meta[:, 4])

    # -- reference ----------------------------------------------------------------------------------------------

    def _ref_iter(self, epoch: int, start_batch: int) -> Iterator[dict[str, torch.Tensor]]:
        from umt.data.reference import EpochDataset

        cfg = self.cfg
        ds = EpochDataset(self._source(epoch, start_batch, decode=True))
        dl = torch.utils.data.DataLoader(
            ds,
            batch_size=cfg.batch_size,
            shuffle=False,
            drop_last=True,
            num_workers=cfg.num_workers,
            persistent_workers=False,
            pin_memory=self.device.type == "cuda",
        )
        try:
            for b, batch in enumerate(_one_line_errors(dl), start=start_batch):
                self._note_skipped(epoch, b * cfg.batch_size, batch["skipped"])
                video = batch["video"].flatten(0, 1)  # [B, k, 3, T, S, S] -> [B*k, 3, T, S, S]
                yield self._finish(video, batch["label"], batch["index"])
        finally:
            ds.source.index.close()

    # -- common -------------------------------------------------------------------------------------------------

    def _finish(self, video: torch.Tensor, label: torch.Tensor, index: torch.Tensor) -> dict[str, torch.Tensor]:
        k = self.views
        dev = self.device
        video = video_to_device(video, dev)
        return {
            "video": video,
            "label": label.long().repeat_interleave(k).to(dev, non_blocking=True),  # [B*k]
            "index": index.long().repeat_interleave(k).to(dev, non_blocking=True),  # [B*k]
            "view": (torch.arange(k) if multi_view(self.cfg) else torch.zeros(k, dtype=torch.int64))
            .repeat(len(index))
            .to(dev, non_blocking=True),  # [B*k]
        }


def build_loader(cfg: DataConfig, *, rank: int = 0, world_size: int = 1, device: Any = "cpu") -> VideoLoader:
    """Build the loader for ``cfg`` on ``device`` for rank ``rank`` of ``world_size``.

    Raises:
        FileNotFoundError: ``cfg.shards`` has no ``manifest.json``.
        ValueError: too few samples for one batch per rank, or a bad rank.
        RuntimeError: ``backend="dali"`` cannot work here (see :func:`choose_backend`).
    """
    return VideoLoader(cfg, rank=rank, world_size=world_size, device=device)
