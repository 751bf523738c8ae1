"""What both stage-2 loader backends read for one item: media, crop window, flip and the tokenised caption.

One source per shard directory (one modality) serves the DALI graph (:mod:`umt.data.dali.pairs`, as its external
source) and the reference backend (:class:`PairDataset`), as :class:`umt.data.clips.ClipSource` does for stage 1,
whose order, draws and reading it extends:

* **Order**: training, the stage-1 per-epoch global permutation split into rank blocks
  (:func:`umt.data.clips.epoch_order`); evaluation, :func:`eval_order` (every item exactly once, in index order,
  the last batch padded with repeats that the loader drops).
* **Rows**: an epoch permutes items (``data.caption_sampling="draw"``) or (item, caption) pairs (``"each"``, the
  official pre-training epoch: its annotation files hold one row per caption).
* **Draws** (:func:`umt.data.clips.draw_params`, from ``(seed, epoch, row)``): frame positions and the crop window
  + flip (``data.crop="rrc"`` for stage 2); with ``draw`` the caption (:func:`umt.data.captions.caption_choice`, from
  ``(seed, epoch, item)``, its own stream).
* **Video items**: exactly stage 1's read (only the sampled frames decoded, ``data.sampling`` chooses them), the
  decoded frames cut to the window on CPU, or the encoded video + frame indices for DALI's GPU decoder.
* **Image items**: the stored JPEG bytes and the window; DALI decodes only the window (``fn.decoders.image_slice``,
  libjpeg-turbo on CPU, nvJPEG on a GPU), the reference backend decodes with PIL (identical pixels on CPU) and crops.
* **Caption**: the drawn caption (the first in evaluation), :func:`umt.data.captions.pre_text`, tokenised here on the
  host (:class:`umt.data.captions.CaptionTokenizer`): int32 [max_len] ids + an int32 length, fixed-size for DALI.
* **Corrupt items**: as in stage 1 (:meth:`umt.data.clips.ClipSource.fetch`), a row whose item fails to read or
  decode is replaced by the next row of the epoch order that does, and meta's ``skipped`` tells the loader. Images
  are decoded by DALI inside its graph, where an error cannot be skipped, so the source first checks each JPEG
  (:func:`check_jpeg`: its header, its size against ``KEY.meta``, and a decode at 1/8 scale); with
  ``caption_sampling="each"`` every row of a bad item is skipped (and counted) at its own position.
"""

from __future__ import annotations


import numpy as np
import torch

from umt.data.config import DataConfig
from umt.data.decode import decode_image
from umt.data.reference import EpochDataset, augment_clip
from umt.data.format import decode_meta
from umt.data.clips import ClipSource, clip_windows, epoch_order, read_clip, source_meta
from umt.data.format import ShardIndex
from umt.data.captions import CaptionTokenizer, caption_choice, pre_text
from umt.data.format import decode_captions

__all__ = ["PairDataset", "PairSource", "check_jpeg", "eval_order"]


def eval_order(num_samples: int, *, rank: int, world_size: int, batch_size: int) -> tuple[np.ndarray, int]:
    """Evaluation order of rank ``rank``: its contiguous block of ``ceil(N / W)`` items (the last rank's may be
    shorter or empty) in index order, padded to whole batches by repeating the block's last item.

    Returns:
        ``(int64 [ceil(n / B) * B] item indices, n)``: n real items, the rest padding.
    """
    per = -(-num_samples // world_size)
    block = np.arange(rank * per, min(num_samples, (rank + 1) * per), dtype=np.int64)  # [n]
    n = len(block)
    if n == 0:
        return block, 0
    pad = -n % batch_size
    return np.concatenate([block, np.full(pad, block[-1], np.int64)]), n


class PairSource(ClipSource):
    """Per-row callback for DALI's ``fn.external_source`` over one captioned shard directory (picklable).

    A *row* is what an epoch permutes: an item (``data.caption_sampling="draw"``: row r = item r, its caption drawn per
    ``(seed, epoch, item)``) or one (item, caption) pair (``"each"``: ``rows`` maps row r to ``(item, caption)``, as
    the official pre-training annotation files hold one row per caption). The random draws of a row (frames, window,
    flip) come from ``(seed, epoch, row)``.

    For ``SampleInfo(idx_in_epoch, epoch_idx)`` it returns, for the row ``order[start + idx_in_epoch]``:

    * video: ``(frames, meta, anchor, shape, flip, [indices], text_ids, text_len)``: the sampled frames cut to the
      window (uint8 [T, h, w, 3], anchor (0, 0)), or with ``decode=False`` the encoded video (uint8 [bytes]) with the
      window in stored pixels and the sampled indices (int32 [T]) for the GPU decoder;
    * image: ``(jpeg, meta, anchor, shape, flip, text_ids, text_len)``: the JPEG as uint8 [bytes], the window as
      int32 [2] ``(x, y)`` and int32 [2] ``(w, h)`` in stored pixels;

    with meta int32 [9] (:data:`umt.data.clips.SOURCE_META_FIELDS`), flip int32 [], ``text_ids`` int32 [max_len]
    (``[CLS] ... [SEP]`` then ``[PAD]``) and
    ``text_len`` int32 []. A row that fails to read (also a JPEG that :func:`check_jpeg` refuses) is replaced by
    the next row of the order that reads (:meth:`fetch`). Raises ``StopIteration`` past the epoch's end (DALI's
    end-of-epoch signal).
    """

    def __init__(
        self,
        index: ShardIndex,
        cfg: DataConfig,
        *,
        modality: str,
        tokenizer: CaptionTokenizer,
        rank: int,
        world_size: int,
        first_epoch: int,
        start_batch: int,
        decode: bool = True,
        rows: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        if cfg.num_sample != 1:
            raise ValueError(f"stage-2 loaders take one view per item (data.num_sample = 1), got {cfg.num_sample}")
        if modality not in ("video", "image"):
            raise ValueError(f"modality must be 'video' or 'image', got {modality!r}")
        super().__init__(index, cfg, rank=rank, world_size=world_size, first_epoch=first_epoch,
                         start_batch=start_batch, decode=decode)
        self.modality = modality
        self.tokenizer = tokenizer
        self.rows = rows if cfg.train else None
        """``"each"``: (int64 [R] item of row r, int64 [R] caption of row r); None: one row per item."""
        self.num_real = 0
        """Evaluation: the real (unpadded) items of this rank's order."""

    @property
    def num_rows(self) -> int:
        return len(self.index) if self.rows is None else len(self.rows[0])

    def order(self, epoch: int) -> np.ndarray:
        """Row ids this rank reads in ``epoch`` (training: :func:`epoch_order` over the rows; evaluation: every item
        once, padded, :func:`eval_order`)."""
        if epoch not in self._orders:
            if self.cfg.train:
                order = epoch_order(self.num_rows, seed=self.cfg.seed, epoch=epoch, rank=self.rank,
                                    world_size=self.world_size, batch_size=self.cfg.batch_size)
            else:
                order, self.num_real = eval_order(len(self.index), rank=self.rank, world_size=self.world_size,
                                                  batch_size=self.cfg.batch_size)
            self._orders = {epoch: order}
        return self._orders[epoch]

    def row_at(self, epoch: int, j: int) -> int:
        """The row read at position ``j`` of ``epoch`` (raises ``IndexError`` past the end)."""
        order = self.order(epoch)
        if j >= len(order):
            raise IndexError(j)
        return int(order[j])

    def resolve(self, epoch: int, r: int) -> tuple[int, str]:
        """Row ``r`` of ``epoch``: (item index, its caption for this row, as stored). ``draw``: the caption drawn
        from ``(seed, epoch, item)`` (the first in evaluation); ``each``: the row's own caption."""
        i, k = (r, -1) if self.rows is None else (int(self.rows[0][r]), int(self.rows[1][r]))
        caps = decode_captions(self.index.read(i, "txt"))
        if k < 0:
            k = caption_choice(self.cfg.seed, epoch, i, len(caps)) if self.cfg.train else 0
        return i, caps[k]

    def text(self, caption: str) -> tuple[np.ndarray, int]:
        """A stored caption, preprocessed (:func:`pre_text`) and tokenised: (int32 [max_len], length)."""
        return self.tokenizer.encode(pre_text(caption))

    def window(self, epoch: int, r: int, i: int) -> tuple[dict[str, int], tuple[int, int, int, int, bool]]:
        """Item ``i``'s meta and the crop window ``(x, y, w, h, flip)`` in stored pixels drawn for row ``r``."""
        meta = decode_meta(self.index.read(i, "meta"))
        return meta, clip_windows(self.cfg, meta["width"], meta["height"], self.params(epoch, r))[0]

    def sample_at(self, order: np.ndarray, j: int) -> int:
        """The item that entry ``j`` of ``order`` (a row id) reads."""
        r = int(order[j])
        return r if self.rows is None else int(self.rows[0][r])

    def read_at(self, epoch: int, order: np.ndarray, j: int) -> tuple[np.ndarray, ...]:
        """The outputs (see the class docstring) for entry ``j`` of ``order`` in ``epoch``, meta int32 [9] with
        ``skipped`` 0.

        Raises:
            The data errors of reading and decoding the item (:func:`umt.data.clips.data_errors`).
        """
        r = int(order[j])
        i, caption = self.resolve(epoch, r)
        if self.modality == "video":
            clip = read_clip(self.index, i, self.cfg, self.params(epoch, r), decode=self.decode)
            meta = source_meta(clip.meta)  # [9]
            x, y, w, h, flip = clip.windows[0]
            if self.decode:  # hand DALI only the window (as ClipSource does): less to copy and to slice
                media = np.ascontiguousarray(clip.frames[:, y : y + h, x : x + w])  # type: ignore[index]  # [T,h,w,3]
                x = y = 0
            else:
                media = np.frombuffer(clip.encoded, np.uint8)  # type: ignore[arg-type]
            out: tuple[np.ndarray, ...] = (media, meta, np.array([x, y], np.int32), np.array([w, h], np.int32),
                                           np.array(int(flip), np.int32))
            if not self.decode:
                out += (clip.indices.astype(np.int32),)  # for the GPU decoder's ``frames``
        else:
            m, (x, y, w, h, flip) = self.window(epoch, r, i)
            jpeg = self.index.read(i, "jpg")
            check_jpeg(jpeg, m)  # DALI decodes it: a bad JPEG must fail here, where it can be skipped
            out = (np.frombuffer(jpeg, np.uint8), source_meta(m), np.array([x, y], np.int32),
                   np.array([w, h], np.int32), np.array(int(flip), np.int32))
        ids, n = self.text(caption)
        return (*out, ids, np.array(n, np.int32))

    def meta_position(self) -> int:
        """``meta`` is the second output (after the media) for videos and images alike."""
        return 1


def check_jpeg(data: bytes, meta: dict[str, int]) -> None:
    """Raise where PIL (hence the reference backend) cannot decode the stored JPEG, or its size is not the one
    ``KEY.meta`` records: DALI decodes images inside its graph, where a failure stops the pipeline, so the source
    checks first. PIL's draft mode decodes at 1/8 scale (the same entropy decoding, little of the rest).

    Raises:
        OSError: not a JPEG, or truncated (PIL's errors).
        ValueError: the header's size differs from ``meta``'s.
    """
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if im.size != (meta["width"], meta["height"]):
            raise ValueError(f"JPEG is {im.size[0]}x{im.size[1]}, meta says {meta['width']}x{meta['height']}")
        im.draft("RGB", (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
        im.load()


class PairDataset(EpochDataset):
    """Reference backend: the rows of one epoch for one rank from ``start_batch`` on, augmented with torch.

    Item j: ``{"video": float32 [3, T, S, S] (T = 1 for images), "text_ids": int32 [max_len], "text_len": int32 [],
    "index": int64 [], "skipped": int64 []}``, the j-th of that tail, with :class:`PairSource`'s draws and its
    replacement of rows that fail to read (``skipped``: failed rows before the delivered one).
    """

    def read_at(self, j: int) -> dict[str, torch.Tensor]:
        """Entry ``j`` of the whole epoch's order (a row), read, decoded and augmented (data errors propagate)."""
        src, cfg = self.source, self.source.cfg
        r = int(self.full_order[j])
        i, caption = src.resolve(self.epoch, r)
        if src.modality == "video":
            clip = read_clip(src.index, i, cfg, src.params(self.epoch, r))
            assert clip.frames is not None
            video = augment_clip(clip.frames, cfg, clip.windows[0])  # [3, T, S, S]
            index = clip.meta["index"]
        else:
            meta, window = src.window(self.epoch, r, i)
            jpeg = src.index.read(i, "jpg")
            check_jpeg(jpeg, meta)  # refuse what the DALI source refuses (a JPEG of another size than its meta)
            frames = decode_image(jpeg)[None]  # [1, H, W, 3]
            video = augment_clip(frames, cfg, window)  # [3, 1, S, S]
            index = meta["index"]
        ids, n = src.text(caption)
        return {"video": video, "text_ids": torch.from_numpy(ids), "text_len": torch.tensor(n, dtype=torch.int32),
                "index": torch.tensor(index, dtype=torch.int64)}
