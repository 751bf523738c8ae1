"""What both loader backends read for one sample: the epoch's order, the random draws, and the decoded frames.

One definition serves the DALI pipeline (as its external source) and the reference backend (as its Dataset):

* **Order** (:func:`epoch_order`): a fresh global permutation of all samples for every ``(seed, epoch)``, split into
  contiguous per-rank blocks, as the official code's ``DistributedSampler(shuffle=True)`` does.
  Evaluation keeps the manifest order.
* **Draws** (:func:`draw_params`): per sample, from a generator seeded with ``(seed, epoch, sample index)``: TSN
  positions, crop pair, crop offset and flip; fine-tuning's RandAugment and random erasing from a second stream
  ``(seed, epoch, sample index, 1)``, so switching them on changes no frame or crop. Results depend neither on the
  number of workers nor on where an epoch was resumed, and tests can observe every draw.
* **Read + decode** (:func:`read_clip`): the sample's components by random access through the DALI ``.idx`` files,
  then only the sampled frames, by seeking to key frames (:mod:`umt.data.decode`).
* **Corrupt samples** (:meth:`ClipSource.fetch`): a sample whose read or decode raises a data error
  (:func:`data_errors`: bytes changed after the build, a truncated tar, a missing member) is replaced by the next
  entry of the same epoch order (cyclically) that reads, trying at most :data:`SKIP_ATTEMPTS` entries, so the
  batch keeps its shape and the order stays a pure function of ``(seed, epoch, rank)`` (and of the bytes on disk):
  a resumed epoch replaces exactly as the full one did. The replacement is read with its own draws, exactly as at
  its own position. Each output ``meta`` carries, after :data:`~umt.data.format.META_FIELDS`, a ninth field
  ``skipped`` (:data:`SOURCE_META_FIELDS`): how many entries failed before the delivered one (0: the entry's own
  sample). That is how the count leaves DALI's (or torch's) worker processes: the loader, in the main process,
  counts rows with ``skipped > 0``, names the entry's sample once and, in evaluation, raises instead
  (:mod:`umt.data.loader`). When all attempts fail the source raises :class:`CorruptSampleError`. Damage a decoder
  accepts (flipped bytes inside compressed frame data usually decode to wrong pixels) is not detected: the
  format keeps a checksum per shard (``manifest.json``, ``python -m umt.data.build.info DIR --verify``), not per
  member.

Nothing here imports DALI or uses torch (importing :mod:`umt` loads torch for its compatibility shim): the DALI
external source runs this in worker processes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from umt.data.config import DataConfig
from umt.data.augment.erasing import EraseBox, draw_erase, erase_noise
from umt.data.augment.randaugment import RandAugmentDraws, draw_rand_augment, parse_rand_augment, rand_augment_program
from umt.data.sampling import (FIX_OFFSETS_13, RRC_ATTEMPTS, crop_pairs, eval_crop, frame_indices, multiscale_crop,
                               rrc_window)
from umt.data.format import META_FIELDS, ShardIndex, decode_meta
from umt.data.decode import DecodeStats, decode_sampled
from umt.data.views import multi_view, views_outputs

_T = TypeVar("_T")

__all__ = [
    "ClipParams",
    "ClipSource",
    "CorruptSampleError",
    "SKIP_ATTEMPTS",
    "SOURCE_META_FIELDS",
    "SampleClip",
    "ShardIndex",
    "clip_windows",
    "data_errors",
    "draw_params",
    "epoch_order",
    "error_line",
    "read_clip",
    "source_meta",
]

#: The sources' per-sample ``meta`` output (int32 [9]): the stored fields, then how many entries of the epoch order
#: failed to read before the delivered sample (0: the entry's own sample was delivered).
SOURCE_META_FIELDS = (*META_FIELDS, "skipped")

#: Entries a source tries for one position of the order (the entry's own sample, then the next ones) before it
#: gives up with :class:`CorruptSampleError`. With bad samples spread by the global permutation, 16 failures in a
#: row mean a data set that is mostly unreadable, not bad luck.
SKIP_ATTEMPTS = 16


class CorruptSampleError(RuntimeError):
    """A sample could not be read or decoded where it may not be skipped (evaluation), or no sample of
    :data:`SKIP_ATTEMPTS` consecutive entries of the order could (training). The message is one line."""


def data_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "this sample's bytes are bad" (skipped in training): I/O errors, a missing member
    (``KeyError``), bad values or encodings (``ValueError``, which PyAV's invalid-data error and JSON/UTF-8 errors
    are), short reads (``EOFError``, ``IndexError``) and any FFmpeg error. Programming errors (``TypeError``,
    ``AttributeError``, ...) are not caught: they fail loudly."""
    import av

    return (OSError, ValueError, KeyError, IndexError, EOFError, av.FFmpegError)


def error_line(e: BaseException) -> str:
    """``Type: first line of the message`` (a log line, never a traceback)."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def epoch_order(
    num_samples: int,
    *,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    batch_size: int,
    train: bool = True,
    drop_last: bool = True,
) -> np.ndarray:
    """Sample indices (manifest order) that rank ``rank`` reads in ``epoch``, in reading order.

    Training: a global permutation drawn from ``(seed, epoch)``, rank r taking the r-th contiguous block of
    ``num_samples // world_size``; evaluation: manifest order, same blocks. Truncated to whole batches.
    ``drop_last=False``: blocks of ``N // W + (r < N mod W)`` (every sample on exactly one rank), padded with -1 to
    whole batches.

    Returns:
        int64 [len(loader) * batch_size].
    """
    perm = np.random.default_rng([seed, epoch]).permutation(num_samples) if train else np.arange(num_samples)
    if not drop_last:
        base, extra = divmod(num_samples, world_size)
        lo = rank * base + min(rank, extra)
        mine = perm[lo : lo + base + (rank < extra)]  # [N // W (+ 1)]
        pad = -len(mine) % batch_size
        return np.concatenate([mine, np.full(pad, -1, mine.dtype)])
    per_rank = num_samples // world_size
    mine = perm[rank * per_rank : (rank + 1) * per_rank]  # [N // W]
    return mine[: (per_rank // batch_size) * batch_size]


@dataclass(frozen=True)
class ClipParams:
    """The random decisions for one sample: frame positions and, per repeated clip, crop and flip."""

    u: np.ndarray | None
    """[T] positions in the TSN segments (None: centres)."""
    crops: tuple[tuple[int, int, bool], ...]
    """Per clip (``num_sample`` of them): (pair index, offset index, flip); empty in evaluation. With
    ``crop="rrc"`` the pair and offset are -1 (unused) and :attr:`rrc` holds the window's draws."""
    rrc: tuple[np.ndarray, ...] = ()
    """``crop="rrc"``: per clip the float64 [10, 4] uniforms of :func:`umt.data.sampling.rrc_window`."""
    ra: tuple[RandAugmentDraws, ...] = ()
    """``rand_augment``: per clip the RandAugment draws (:func:`umt.data.augment.randaugment.draw_rand_augment`)."""
    erase: tuple[EraseBox | None, ...] = ()
    """``erase_prob > 0``: per clip the erased box in output pixels, or None."""


def draw_params(cfg: DataConfig, seed: int, epoch: int, index: int) -> ClipParams:
    """The draws for sample ``index`` in ``epoch`` (generator seeded with ``(seed, epoch, index)``).

    Training: ``u ~ U[0, 1)`` per segment (float32), then per clip: ``multiscale``: crop pair uniform over
    :func:`crop_pairs` (10 for 4 scales), offset uniform over the 13 fixed positions, flip with probability 0.5 when
    ``cfg.flip``; ``rrc``: the window's [10, 4] uniforms, then the flip. Then, from the generator seeded with
    ``(seed, epoch, index, 1)``, per clip the RandAugment draws and the erasing box (when on). Evaluation: no draws.
    """
    if not cfg.train:
        return ClipParams(None, ())
    crops = _draw_crops(cfg, seed, epoch, index)
    if not (cfg.rand_augment or cfg.erase_prob > 0):
        return crops
    ft = np.random.default_rng([seed, epoch, index, 1])  # a second stream: the crops stay those drawn without it
    spec = parse_rand_augment(cfg.rand_augment) if cfg.rand_augment else None
    ra: list[RandAugmentDraws] = []
    erase: list[EraseBox | None] = []
    for _ in range(cfg.num_sample):
        if spec is not None:
            ra.append(draw_rand_augment(ft, spec))
        if cfg.erase_prob > 0:
            erase.append(draw_erase(ft, cfg.erase_prob, cfg.input_size, cfg.input_size))
    return ClipParams(crops.u, crops.crops, crops.rrc, tuple(ra), tuple(erase))


def _draw_crops(cfg: DataConfig, seed: int, epoch: int, index: int) -> ClipParams:
    rng = np.random.default_rng([seed, epoch, index])
    u = rng.random(cfg.num_frames, dtype=np.float32)  # [T] in [0, 1)
    if cfg.crop == "rrc":
        rrc, crops = [], []
        for _ in range(cfg.num_sample):
            rrc.append(rng.random((RRC_ATTEMPTS, 4)))  # [10, 4] float64
            crops.append((-1, -1, bool(cfg.flip and rng.random() < 0.5)))
        return ClipParams(u, tuple(crops), tuple(rrc))
    n_pairs = len(crop_pairs(len(cfg.scales)))
    crops = tuple(
        (int(rng.integers(n_pairs)), int(rng.integers(len(FIX_OFFSETS_13))), bool(cfg.flip and rng.random() < 0.5))
        for _ in range(cfg.num_sample)
    )
    return ClipParams(u, crops)


def clip_windows(cfg: DataConfig, width: int, height: int, params: ClipParams) -> list[tuple[int, int, int, int, bool]]:
    """Per output clip, the crop window and flip: ``(x, y, crop_w, crop_h, flip)`` in pixels of the stored frames."""
    if not params.crops:
        if cfg.eval_crop == "resize":  # the whole frame, resized to input_size² (official stage-2 test)
            return [(0, 0, width, height, False)] * cfg.num_sample
        return [(*eval_crop(width, height), False)] * cfg.num_sample
    if params.rrc:
        return [
            (*rrc_window(width, height, cfg.rrc_scale, cfg.rrc_ratio, u), flip)
            for u, (_, _, flip) in zip(params.rrc, params.crops)
        ]
    return [
        (*multiscale_crop(width, height, cfg.input_size, cfg.scales, pair, off), flip)
        for pair, off, flip in params.crops
    ]


@dataclass
class SampleClip:
    """One sample as read: decoded frames (or the encoded video), the sampled indices and the crop windows."""

    meta: dict[str, int]
    """The ``KEY.meta`` fields (frames, width, height, label, index, ...)."""
    indices: np.ndarray
    """int32 [T] sampled frame indices."""
    windows: list[tuple[int, int, int, int, bool]]
    """Per clip: (x, y, crop_w, crop_h, flip)."""
    frames: np.ndarray | None = None
    """uint8 [T, H0, W0, 3] RGB (None when read with ``decode=False``)."""
    encoded: bytes | None = None
    """The encoded video (``decode=False``: the GPU decodes it)."""
    stats: DecodeStats = field(default_factory=DecodeStats)


def read_clip(index: ShardIndex, i: int, cfg: DataConfig, params: ClipParams, *, decode: bool = True) -> SampleClip:
    """Read sample ``i``: meta, sampled indices, crop windows and (``decode``) the sampled frames only.

    Raises:
        ValueError: the stored video has fewer decodable frames than its meta says.
    """
    meta = decode_meta(index.read(i, "meta"))
    ind = frame_indices(meta["frames"], cfg.num_frames, params.u, cfg.sampling)  # [T]
    windows = clip_windows(cfg, meta["width"], meta["height"], params)
    video = index.read(i, "mp4")
    clip = SampleClip(meta, ind, windows)
    if not decode:
        clip.encoded = video
        return clip
    keyframes = None
    if "json" in index.entries[i][1]:
        keyframes = json.loads(index.read(i, "json")).get("keyframes")
    clip.frames = decode_sampled(video, ind, keyframes, stats=clip.stats)  # [T, H0, W0, 3]
    return clip


class ClipSource:
    """Per-sample callback for DALI's ``fn.external_source`` (picklable; runs in DALI's worker processes).

    ``index`` is the data set's :class:`ShardIndex` (built once by the loader; pickled without open files).

    For ``SampleInfo(idx_in_epoch, epoch_idx)`` it reads sample ``order[start + idx_in_epoch]`` of epoch
    ``first_epoch + epoch_idx`` (``start = start_batch * batch_size`` in the first epoch, 0 after) and returns
    ``(video, meta, anchor_0, shape_0, flip_0, ..., [indices])``: video is the decoded frames cut to the union of
    the clips' crop windows (uint8 [T, h, w, 3]; anchors relative to it),
    or with ``decode=False`` the encoded bytes (uint8 [bytes]) for DALI's GPU decoder, followed then by the sampled
    indices (int32 [T]); meta int32 [9] (:data:`SOURCE_META_FIELDS`: the stored fields, then ``skipped``); per
    clip the window as int32 [2] anchor ``(x, y)``, int32 [2] shape ``(w, h)`` and int32 [] flip. Then, per clip, with ``rand_augment``: its program, int32 [n] kinds and float32
    [n, 6] parameters (:func:`umt.data.augment.randaugment.rand_augment_program`; the video is then the whole frame, which
    the geometric ops need); with ``erase_prob > 0``: int32 [4] box ``(y, x, h, w)`` (``h = 0``: none) and its
    float32 [3, T, h, w] noise. Multi-view evaluation returns :func:`umt.data.views.views_outputs` instead.
    Padding entries of the order (``drop_last=False``) deliver the rank's last sample again with label and index -1.
    An entry whose sample fails to read is replaced by the next one of the order that reads (:meth:`fetch`; meta's
    ``skipped`` says how many failed). Raises ``StopIteration`` past the epoch's end (DALI's end-of-epoch signal);
    one pipeline serves every epoch.

    With :attr:`seamless` set (the DALI loaders set it) the source never ends: ``idx_in_epoch`` counts on through
    the epochs, sample ``s = start + idx_in_epoch`` being entry ``s mod n`` of epoch ``first_epoch + s // n`` (``n``
    entries per epoch, the same in every epoch), so DALI's prefetch runs across epoch boundaries instead of draining
    at each one and refilling after ``reset()``.
    """

    def __init__(
        self,
        index: ShardIndex,
        cfg: DataConfig,
        *,
        rank: int,
        world_size: int,
        first_epoch: int,
        start_batch: int,
        decode: bool = True,
        fixed_crop: tuple[int, int] | None = None,
    ) -> None:
        self.index = index  # parsed once per loader, shared by every epoch's source
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.first_epoch, self.start_batch = first_epoch, start_batch
        self.decode = decode
        self.fixed_crop = fixed_crop
        self.seamless = False
        """Never end: epochs follow each other in one stream of samples (see the class docstring)."""
        self._orders: dict[int, np.ndarray] = {}
        self._epoch_len: int | None = None

    def order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {
                epoch: epoch_order(
                    len(self.index),
                    seed=self.cfg.seed,
                    epoch=epoch,
                    rank=self.rank,
                    world_size=self.world_size,
                    batch_size=self.cfg.batch_size,
                    train=self.cfg.train,
                    drop_last=self.cfg.drop_last,
                )
            }
        return self._orders[epoch]

    def resolve(self, order: np.ndarray, j: int) -> tuple[int, bool]:
        """Sample of entry ``j`` of ``order`` and whether it pads (-1: the last real entry is read again)."""
        i = int(order[j])
        if i >= 0:
            return i, False
        return int(order[order >= 0][-1]), True

    def params(self, epoch: int, i: int) -> ClipParams:
        """The draws for sample ``i`` (the fixed-crop test hook: segment centres, one crop, no flip)."""
        if self.fixed_crop is not None:
            return ClipParams(None, ((self.fixed_crop[0], self.fixed_crop[1], False),) * self.cfg.num_sample)
        return draw_params(self.cfg, self.cfg.seed, epoch, i)

    def fetch(self, order: np.ndarray, j: int, read: Callable[[int], _T]) -> tuple[_T, int]:
        """``read(j)``, or on a data error (:func:`data_errors`) ``read`` of the next entries of ``order``
        (cyclically), at most :data:`SKIP_ATTEMPTS` in all.

        Returns:
            ``(result, k)``: the result of entry ``(j + k) mod len(order)``, k entries having failed before it.

        Raises:
            CorruptSampleError: every attempt failed (one line naming the first failed sample and its error).
        """
        errors = data_errors()
        n = len(order)
        first: tuple[int, BaseException] | None = None
        attempts = min(SKIP_ATTEMPTS, n)
        for k in range(attempts):
            try:
                return read((j + k) % n), k
            except errors as e:
                if first is None:
                    first = ((j + k) % n, e)
        assert first is not None
        i = self.sample_at(order, first[0])
        raise CorruptSampleError(
            f"{attempts} consecutive samples of the epoch order failed to read or decode (rank {self.rank}, "
            f"position {j}), the first {self.index.name(i)}: {error_line(first[1])}; check the shards with "
            f"python -m umt.data.build.info DIR --verify"
        )

    def sample_at(self, order: np.ndarray, j: int) -> int:
        """The sample (manifest index) that entry ``j`` of ``order`` reads."""
        return self.resolve(order, j)[0]

    def read_at(self, epoch: int, order: np.ndarray, j: int) -> tuple[np.ndarray, ...]:
        """The outputs for entry ``j`` of ``order`` in ``epoch`` (see the class docstring), ``meta`` int32 [9] with
        ``skipped`` 0 (:meth:`__call__` sets it).

        Raises:
            The data errors of reading and decoding the sample (:func:`data_errors`).
        """
        i, pad = self.resolve(order, j)
        if multi_view(self.cfg):
            return views_outputs(self.index, i, self.cfg, decode=self.decode, pad=pad)
        params = self.params(epoch, i)
        clip = read_clip(self.index, i, self.cfg, params, decode=self.decode)
        if pad:
            clip.meta = {**clip.meta, "label": -1, "index": -1}
        meta = source_meta(clip.meta)  # [9]
        x0 = y0 = 0
        if self.decode and self.cfg.rand_augment and params.ra:
            video = clip.frames  # RandAugment runs on the whole frame (rotation, shear and translation move pixels in)
        elif self.decode:
            # hand DALI only the union of the clips' windows: less to copy through shared memory and to slice
            x0, y0 = min(w[0] for w in clip.windows), min(w[1] for w in clip.windows)
            x1 = max(w[0] + w[2] for w in clip.windows)
            y1 = max(w[1] + w[3] for w in clip.windows)
            video = np.ascontiguousarray(clip.frames[:, y0:y1, x0:x1])  # type: ignore[index]  # [T, y1-y0, x1-x0, 3]
        else:
            video = np.frombuffer(clip.encoded, np.uint8)  # type: ignore[arg-type]
        out: list[np.ndarray] = [video, meta]
        for x, y, w, h, flip in clip.windows:
            out += [np.array([x - x0, y - y0], np.int32), np.array([w, h], np.int32), np.array(int(flip), np.int32)]
        if not self.decode:
            out.append(clip.indices.astype(np.int32))  # for the GPU decoder's ``frames``
        return tuple(out + ft_outputs(self.cfg, params, clip.meta["width"], clip.meta["height"]))

    def meta_position(self) -> int:
        """Where ``meta`` is among the outputs."""
        if multi_view(self.cfg):
            return self.cfg.temporal_views if self.decode else 1
        return 1

    def position(self, info: Any) -> tuple[int, int]:
        """``(epoch, entry of its order)`` of DALI's ``SampleInfo`` (``idx_in_epoch``, ``epoch_idx``).

        Raises:
            StopIteration: past the epoch's end (never when :attr:`seamless`, unless an epoch is empty).
        """
        start = self.start_batch * self.cfg.batch_size
        if self.seamless:
            if self._epoch_len is None:  # entries per epoch: whole batches, the same every epoch (order() keeps
                self._epoch_len = len(self.order(self.first_epoch))  # one epoch: asking it again would redraw)
            n = self._epoch_len
            if n == 0:
                raise StopIteration
            s = start + info.idx_in_epoch
            return self.first_epoch + s // n, s % n
        epoch = self.first_epoch + info.epoch_idx
        j = (start if info.epoch_idx == 0 else 0) + info.idx_in_epoch
        if j >= len(self.order(epoch)):
            raise StopIteration
        return epoch, j

    def __call__(self, info: Any) -> tuple[np.ndarray, ...]:
        epoch, j = self.position(info)
        order = self.order(epoch)
        out, k = self.fetch(order, j, lambda jj: self.read_at(epoch, order, jj))
        out[self.meta_position()][-1] = k  # the loader counts (or, in evaluation, refuses) rows with k > 0
        return out


def source_meta(meta: dict[str, int]) -> np.ndarray:
    """A source's ``meta`` output: int32 [9], the :data:`SOURCE_META_FIELDS` of ``meta`` with ``skipped`` 0."""
    return np.array([meta[k] for k in META_FIELDS] + [0], np.int32)


def ft_outputs(cfg: DataConfig, params: ClipParams, width: int, height: int) -> list[np.ndarray]:
    """The fine-tuning augmentation outputs of one sample (see :class:`ClipSource`): per clip the RandAugment
    program (``cfg.rand_augment``) and the erasing box and noise (``cfg.erase_prob > 0``); empty draws (the
    fixed-crop test hook) give identity programs and no box."""
    out: list[np.ndarray] = []
    spec = parse_rand_augment(cfg.rand_augment) if cfg.rand_augment else None
    for j in range(cfg.num_sample if cfg.train else 0):
        if spec is not None:
            if params.ra:
                out += list(rand_augment_program(spec, params.ra[j], width, height))
            else:
                out += [np.zeros(spec.num_layers, np.int32), np.zeros((spec.num_layers, 6), np.float32)]
        if cfg.erase_prob > 0:
            box = params.erase[j] if params.erase else None
            if box is None:
                out += [np.zeros(4, np.int32), np.zeros((3, cfg.num_frames, 0, 0), np.float32)]
            else:
                out += [np.array([box.y, box.x, box.h, box.w], np.int32), erase_noise(box, 3, cfg.num_frames)]
    return out
