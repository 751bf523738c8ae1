"""Re-map a fine-tuned classifier head to another label set (K710 → K400/K600/K700).

The official recipe fine-tunes on Kinetics-710 (the union of K400, K600 and K700, 710 classes) and then on K400,
K600 or K700 starting from the K710 head: ``single_modality/run_class_finetuning.py`` keeps the first 400 rows of
``head.weight``/``head.bias`` for K400 (the K710 class list puts K400's classes first) and indexes the rows with a
label map for K600/K700 (``k710/label_mixto600.json``, a JSON list holding, for each target class in order, its
K710 index). ``fc_norm`` is kept as it is.

Label-map file formats (:func:`read_label_map`):

- ``.json``: a JSON list of ints, one K710 (source) index per target class, in target-class order: the official
  ``label_mixto{600,700}.json`` files as they are;
- anything else: text, one source index per non-empty line (``#`` starts a comment), line ``i`` for target class
  ``i``.

``finetune.label_map`` may also be ``first`` (keep the first ``num_classes`` rows: the official K710 → K400 rule).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

__all__ = ["LabelMapError", "read_label_map", "remap_head", "FIRST"]

#: ``finetune.label_map`` value that keeps the first ``num_classes`` rows (official K710 → K400)
FIRST = "first"


class LabelMapError(ValueError):
    """A label map that cannot be read or does not fit the head (the one-line message names the file and why)."""


def read_label_map(path: str | Path) -> list[int]:
    """Source-row index of every target class, from a label-map file (module docstring for the formats).

    Raises:
        LabelMapError: missing file, malformed content, a non-integer or negative entry, or an empty map.
    """
    path = Path(path)
    if not path.is_file():
        raise LabelMapError(f"label map {path}: no such file")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise LabelMapError(f"label map {path}: not valid JSON ({e})") from e
        if not isinstance(data, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in data):
            raise LabelMapError(f"label map {path}: expected a JSON list of integers (one source index per target "
                                "class, as the official label_mixto600.json)")
        rows = list(data)
    else:
        rows = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                rows.append(int(line))
            except ValueError:
                raise LabelMapError(f"label map {path}:{lineno}: expected one integer source index, got "
                                    f"{line!r}") from None
    if not rows:
        raise LabelMapError(f"label map {path}: empty")
    if min(rows) < 0:
        raise LabelMapError(f"label map {path}: negative source index {min(rows)}")
    return rows


def remap_head(weight: torch.Tensor, bias: torch.Tensor, num_classes: int,
               label_map: str | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of a head for ``num_classes`` target classes from a head over ``K_src`` source classes.

    Args:
        weight: ``[K_src, C]`` head weight; bias: ``[K_src]``.
        num_classes: K, the target classes.
        label_map: :data:`FIRST` (rows ``0 .. K-1``), a path to a label-map file, or the list of source indices.

    Returns:
        ``(weight [K, C], bias [K])``: row ``i`` is source row ``label_map[i]``, copied exactly.

    Raises:
        LabelMapError: the map's length is not ``num_classes``, an index is out of ``[0, K_src)``, ``first`` with
            ``K > K_src``, or an unreadable map file.
    """
    k_src = weight.shape[0]
    if label_map == FIRST:
        if num_classes > k_src:
            raise LabelMapError(f"label_map=first keeps the first {num_classes} rows of a {k_src}-class head: it has "
                                "too few")
        rows = list(range(num_classes))
        where = "first"
    else:
        where = str(label_map) if isinstance(label_map, (str, Path)) else "the label map"
        rows = read_label_map(label_map) if isinstance(label_map, (str, Path)) else list(label_map)
        if len(rows) != num_classes:
            raise LabelMapError(f"{where}: {len(rows)} entries for {num_classes} target classes "
                                "(one source index per target class)")
        bad = [r for r in rows if not 0 <= r < k_src]
        if bad:
            raise LabelMapError(f"{where}: source index {bad[0]} outside the {k_src}-class head "
                                f"({len(bad)} out of range)")
    idx = torch.tensor(rows, dtype=torch.long, device=weight.device)
    return weight.index_select(0, idx).clone(), bias.index_select(0, idx).clone()
