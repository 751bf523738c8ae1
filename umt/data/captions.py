"""Captions of stage-2 shards: storage, the official preprocessing, the per-epoch draw and host-side tokenisation.

* **Storage** (``KEY.txt``, see ``shards/README.md``): an item's captions, UTF-8, one per line, in annotation order
  (a single caption is the whole member, as in the video format before caption lists). Line breaks inside a caption
  are stored as spaces (:func:`clean_caption`).
* **Preprocessing** (:func:`pre_text`): the official ``pre_text`` rules of ``multi_modality/dataset/utils.py``,
  applied when a caption is read, in training and in evaluation alike.
* **Draw** (:func:`caption_choice`): in training one caption per item and epoch, drawn from ``(seed, epoch, item)``
  (the official pre-training datasets pick a random one of the item's captions each time it is read); evaluation
  batches carry the first caption, and :func:`read_captions` lists them all for retrieval.
* **Tokenisation** (:class:`CaptionTokenizer`): the text encoder's own Hugging Face fast tokenizer, on the host in
  the loader's source workers, truncated to ``max_len`` (official ``max_txt_l`` 32), stored fixed-size (int32
  [max_len] padded with ``[PAD]`` + the length) so it passes through DALI; the loader trims each batch to its
  longest row (:func:`pad_to_longest`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from umt.data.format import ShardIndex, decode_captions, decode_meta, read_manifest, require_captions

__all__ = [
    "CaptionTokenizer",
    "caption_choice",
    "caption_rows",
    "pad_to_longest",
    "pre_text",
    "read_captions",
]

#: Characters the official ``pre_text`` deletes (after lower-casing).
_DELETE = str.maketrans("", "", ",.'!?\"()*#:;~")
_WS_RUN = re.compile(r"\s{2,}")
#: Distinct generator stream of the caption draw (the crop/frame draws use ``[seed, epoch, index]``).
_CAPTION_STREAM = 0x43415054  # "CAPT"


def pre_text(text: str) -> str:
    """The official caption preprocessing (``pre_text`` in ``multi_modality/dataset/utils.py``, without the word
    cap, which pre-training does not use): lower-case; delete ``, . ' ! ? " ( ) * # : ; ~``; ``-`` and ``/`` become
    spaces; ``<person>`` becomes ``person``; runs of two or more whitespace characters become one space; then trailing
    newlines and surrounding spaces are stripped."""
    t = text.lower().translate(_DELETE)
    t = t.replace("-", " ").replace("/", " ").replace("<person>", "person")
    t = _WS_RUN.sub(" ", t)
    return t.rstrip("\n").strip(" ")


def caption_choice(seed: int, epoch: int, index: int, num_captions: int) -> int:
    """Which of an item's ``num_captions`` captions training reads in ``epoch``: uniform, from a generator seeded with
    ``(seed, epoch, index)`` (its own stream, independent of the crop and frame draws)."""
    if num_captions < 1:
        raise ValueError(f"num_captions must be >= 1, got {num_captions}")
    return int(np.random.default_rng([seed, epoch, index, _CAPTION_STREAM]).integers(num_captions))


class CaptionTokenizer:
    """The text encoder's Hugging Face fast tokenizer, loaded lazily (picklable: DALI's workers load their own).

    ``encode(text)`` gives the ids of ``[CLS] text [SEP]`` truncated to ``max_len`` tokens, exactly as
    ``tokenizer(text, truncation=True, max_length=max_len)`` (the official loop pads to ``max_len`` instead; the
    attention mask makes the two equal for every loss).

    Raises (on construction):
        FileNotFoundError: ``directory`` does not exist.
        ValueError: it holds no loadable tokenizer, or ``max_len < 2``.
    """

    def __init__(self, directory: str | Path, max_len: int) -> None:
        self.directory = str(directory)
        self.max_len = int(max_len)
        if self.max_len < 2:
            raise ValueError(f"max_len must be >= 2 ([CLS] and [SEP]), got {max_len}")
        if not Path(self.directory).is_dir():
            raise FileNotFoundError(f"text encoder directory {self.directory} not found")
        self._tok: Any = None
        tok = self.tokenizer  # validate now, in the parent: a bad directory fails before any worker starts
        self.pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else 0)

    @property
    def tokenizer(self) -> Any:
        """The ``transformers`` tokenizer (``AutoTokenizer.from_pretrained(dir, local_files_only=True)``)."""
        if self._tok is None:
            import os

            # one caption per call from the loader's worker processes: no thread pool in them (and no warning
            # when a worker forks after the parent tokenised); a user's own setting wins
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            from transformers import AutoTokenizer

            try:
                tok = AutoTokenizer.from_pretrained(self.directory, local_files_only=True)
            except (OSError, ValueError, TypeError, KeyError) as e:
                raise ValueError(f"{self.directory} holds no loadable Hugging Face tokenizer "
                                 f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
            if not getattr(tok, "is_fast", False):
                raise ValueError(f"{self.directory}: the tokenizer is not a fast (tokenizers) one")
            self._tok = tok
        return self._tok

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tok": None}

    def encode(self, text: str) -> tuple[np.ndarray, int]:
        """Token ids of ``text`` (already :func:`pre_text`-ed): (int32 [max_len] padded with ``[PAD]``, length)."""
        ids = self.tokenizer(text, truncation=True, max_length=self.max_len)["input_ids"]
        out = np.full(self.max_len, self.pad_id, np.int32)
        out[: len(ids)] = ids
        return out, len(ids)


def pad_to_longest(ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Trim fixed-size token rows to the batch's longest and build the attention mask.

    Args:
        ids: int [B, max_len], rows padded with ``[PAD]``.
        lengths: int [B], real tokens per row.

    Returns:
        ``(text_ids int64 [B, L], text_mask int64 [B, L])`` with ``L = max(lengths)``; mask 1 on real tokens.
    """
    L = int(lengths.max())  # host value: lengths come from the host-side source
    pos = torch.arange(L, device=ids.device)  # [L]
    mask = (pos[None, :] < lengths.to(ids.device).long()[:, None]).long()  # [B, L]
    return ids[:, :L].long(), mask


def read_captions(shard_dir: str | Path) -> list[tuple[int, str]]:
    """Every caption of every item of a captioned shard directory, preprocessed as in training (:func:`pre_text`).

    Returns:
        ``[(item index, caption), ...]`` in item order, each item's captions in annotation order.

    Raises:
        FileNotFoundError: no ``manifest.json``.
        ValueError: the directory's items carry no captions (one line naming it).
    """
    m = read_manifest(shard_dir)
    index = ShardIndex(shard_dir, m["shards"])
    try:
        require_captions(index, shard_dir)
        out: list[tuple[int, str]] = []
        for i in range(len(index)):
            item = decode_meta(index.read(i, "meta"))["index"]
            out += [(item, pre_text(c)) for c in decode_captions(index.read(i, "txt"))]
    finally:
        index.close()
    return out


def caption_rows(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One row per (item, caption) pair: ``(item int64 [R], caption int64 [R])``, R = ``counts.sum()``, item-major."""
    counts = np.asarray(counts, np.int64)
    item = np.repeat(np.arange(len(counts), dtype=np.int64), counts)  # [R]
    first = np.repeat(np.cumsum(counts) - counts, counts)  # [R] row of each item's caption 0
    return item, np.arange(len(item), dtype=np.int64) - first
