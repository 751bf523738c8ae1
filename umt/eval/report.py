"""Classification reports: JSON + markdown + a confusion-matrix PNG (PIL + numpy; no matplotlib), written
atomically by rank 0.

Files of a report named NAME in ``out_dir``: ``NAME.json`` (summary, per-class table, the confusion matrix, the
caller's metadata), ``NAME.md`` (the same for people) and ``NAME_confusion.png`` (rows: true class, columns:
predicted class; cell colour = fraction of the true class's samples, white 0 → dark blue 1; counts printed in
the cells and class names on both axes when there are at most :data:`NAMED_MAX` classes).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from umt.eval.common import check_free
from umt.fileio import atomic_write

__all__ = ["report_paths", "report_conflicts", "render_confusion", "write_classification_report", "NAMED_MAX",
           "WRITTEN_BY"]

#: the marker in a report's JSON that says this module wrote it
WRITTEN_BY = "umt.eval.classify"
#: up to this many classes the PNG carries class names and per-cell counts
NAMED_MAX = 40
_CELL = 28  # pixels per cell with names
_SIDE = 800  # target matrix side in pixels without names
_NAME_CHARS = 18


def report_paths(out_dir: str | Path, name: str = "classify") -> dict[str, Path]:
    """``{"json", "md", "png"}`` → the report's paths in ``out_dir``."""
    d = Path(out_dir)
    return {"json": d / f"{name}.json", "md": d / f"{name}.md", "png": d / f"{name}_confusion.png"}


def report_conflicts(out_dir: str | Path, name: str = "classify", overwrite: bool | None = None) -> list[Path]:
    """The existing files that writing report ``name`` into ``out_dir`` would replace without permission.

    ``overwrite=True``: none. ``False``: every existing report file. ``None`` (the trainer hook's default): none when
    the existing ``NAME.json`` is a report this module wrote (``"written_by": "umt.eval.classify"``; a run replaces
    its own earlier report, also after a resume), else every existing report file (files of someone else's).
    """
    if overwrite:
        return []
    existing = [p for p in report_paths(out_dir, name).values() if p.exists()]
    if overwrite is None and existing:
        try:
            ours = json.loads(report_paths(out_dir, name)["json"].read_text()).get("written_by") == WRITTEN_BY
        except (OSError, ValueError, AttributeError):
            ours = False
        if ours:
            return []
    return existing


def write_json_and_markdown(js: str | Path, md: str | Path, payload: dict[str, Any], lines: list[str], *,
                            overwrite: bool = False) -> tuple[Path, Path]:
    """An evaluation report: ``payload`` as indented JSON in ``js`` and ``lines`` as markdown in ``md``, each
    atomically (missing directories created), after checking that neither exists.

    Raises:
        FileExistsError: ``js`` or ``md`` exists and ``overwrite`` is False (nothing is written).
    """
    js, md = Path(js), Path(md)
    check_free([js, md], overwrite)
    atomic_write(js, json.dumps(payload, indent=2) + "\n")
    atomic_write(md, "\n".join(lines))
    return js, md


def _colour(frac: np.ndarray) -> np.ndarray:
    """Fractions in [0, 1] ``[...]`` → uint8 RGB ``[..., 3]``: white → (8, 48, 107) (a dark blue)."""
    dark = np.array([8, 48, 107], np.float64)
    f = np.clip(np.nan_to_num(frac, nan=0.0), 0, 1)[..., None]
    return np.round(255 * (1 - f) + dark * f).astype(np.uint8)


def _short(name: str) -> str:
    return name if len(name) <= _NAME_CHARS else name[: _NAME_CHARS - 3] + "..."


def render_confusion(confusion: np.ndarray, class_names: list[str] | None = None,
                     title: str = "") -> np.ndarray:
    """The confusion matrix as an image, uint8 RGB ``[H, W, 3]``.

    Args:
        confusion: int ``[C, C]`` (rows true, columns predicted).
        class_names: C names for the axes (used when C ≤ :data:`NAMED_MAX`; else indices are implied).
        title: a line above the matrix.

    Raises:
        ValueError: ``confusion`` is not square, or ``class_names`` has another length than C.
    """
    from PIL import Image, ImageDraw, ImageFont

    cm = np.asarray(confusion, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion must be [C, C], got {cm.shape}")
    c = cm.shape[0]
    if class_names is not None and len(class_names) != c:
        raise ValueError(f"{len(class_names)} class names for {c} classes")
    support = cm.sum(1, keepdims=True)
    frac = np.where(support > 0, cm / np.maximum(support, 1), 0.0)  # [C, C] row-normalised
    named = c <= NAMED_MAX
    cell = _CELL if named else max(1, _SIDE // c)
    cells = np.kron(_colour(frac), np.ones((cell, cell, 1), np.uint8))  # [C·cell, C·cell, 3]
    try:
        font: Any = ImageFont.load_default(size=12)  # Pillow >= 10.1 with FreeType
    except (TypeError, AttributeError, OSError):
        font = ImageFont.load_default()
    names = [_short(n) for n in class_names] if (named and class_names) else [str(i) for i in range(c)]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_w(s: str) -> int:
        box = probe.textbbox((0, 0), s, font=font)
        return int(math.ceil(box[2] - box[0]))

    text_h = int(math.ceil(probe.textbbox((0, 0), "Ag", font=font)[3])) + 2
    label_w = (max(text_w(n) for n in names) + 8) if named else 0
    top = text_h * 2 + 4 + label_w  # title + "predicted" line, then the rotated column names
    left = text_h + 4 + label_w  # the rotated "true" caption, then the row names
    side = c * cell
    w, h = left + side + 8, top + side + 8
    w = max(w, text_w(title) + 16)
    img = Image.new("RGB", (w, h), (255, 255, 255))
    img.paste(Image.fromarray(cells), (left, top))
    draw = ImageDraw.Draw(img)
    draw.text((4, 2), title, fill=(0, 0, 0), font=font)
    draw.text((left, text_h + 2), "predicted (columns)", fill=(60, 60, 60), font=font)
    cap = Image.new("RGB", (text_w("true (rows)") + 4, text_h), (255, 255, 255))
    ImageDraw.Draw(cap).text((0, 0), "true (rows)", fill=(60, 60, 60), font=font)
    img.paste(cap.rotate(90, expand=True), (2, top))
    if named:
        for i, n in enumerate(names):
            y = top + i * cell + (cell - text_h) // 2
            draw.text((left - 4 - text_w(n), y), n, fill=(0, 0, 0), font=font)  # row names, right-aligned
            col = Image.new("RGB", (label_w, text_h), (255, 255, 255))
            ImageDraw.Draw(col).text((label_w - 4 - text_w(n), 0), n, fill=(0, 0, 0), font=font)
            img.paste(col.rotate(90, expand=True), (left + i * cell + (cell - text_h) // 2, top - label_w))
        for i in range(c):
            for j in range(c):
                if cm[i, j]:
                    s = str(int(cm[i, j]))
                    ink = (255, 255, 255) if frac[i, j] > 0.5 else (0, 0, 0)
                    draw.text((left + j * cell + (cell - text_w(s)) // 2, top + i * cell + (cell - text_h) // 2),
                              s, fill=ink, font=font)
        for k in range(c + 1):  # grid lines
            draw.line([(left + k * cell, top), (left + k * cell, top + side)], fill=(200, 200, 200))
            draw.line([(left, top + k * cell), (left + side, top + k * cell)], fill=(200, 200, 200))
    return np.asarray(img)


def _fmt(x: float) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def write_classification_report(out_dir: str | Path, summary: dict[str, Any], *, class_names: list[str] | None,
                                meta: dict[str, Any] | None = None, name: str = "classify",
                                overwrite: bool | None = None) -> dict[str, Path]:
    """Write ``NAME.json``, ``NAME.md`` and ``NAME_confusion.png`` (atomically) from a
    :func:`umt.eval.metrics.classification_summary` (plus ``num_views``).

    Args:
        meta: what was evaluated (checkpoint, sha256, shards, views, ...), recorded in both text files.

        overwrite: see :func:`report_conflicts` (None: replace an earlier report of ours only).

    Returns:
        The paths (:func:`report_paths`).

    Raises:
        FileExistsError: a file :func:`report_conflicts` names.
    """
    paths = report_paths(out_dir, name)
    check_free(report_conflicts(out_dir, name, overwrite), False)
    cm = np.asarray(summary["confusion"])
    c = cm.shape[0]
    names = list(class_names) if class_names is not None and len(class_names) == c else [str(i) for i in range(c)]
    per = np.asarray(summary["per_class"], dtype=np.float64)
    support = cm.sum(1)
    rows = [{"class": i, "name": names[i], "samples": int(support[i]), "correct": int(cm[i, i]),
             "accuracy": None if math.isnan(per[i]) else 100.0 * float(per[i])} for i in range(c)]
    scalars = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    doc = {"written_by": WRITTEN_BY, **scalars, "meta": meta or {}, "classes": names,
           "per_class": rows, "confusion": cm.tolist()}
    atomic_write(paths["json"], json.dumps(doc, indent=1) + "\n")

    lines = [f"# Classification: {name}", ""]
    for k, v in (meta or {}).items():
        lines.append(f"- {k}: `{v}`")
    lines += ["", "| metric | value |", "|---|---|"]
    for k, v in scalars.items():
        lines.append(f"| {k} | {_fmt(float(v)) if isinstance(v, float) else v} |")
    lines += ["", "Accuracies in percent; views averaged as softmax scores per sample.", "",
              "| class | name | samples | correct | accuracy % |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['class']} | {r['name']} | {r['samples']} | {r['correct']} | {_fmt(r['accuracy'])} |")
    lines += ["", f"![confusion matrix]({paths['png'].name})", ""]
    atomic_write(paths["md"], "\n".join(lines))

    from PIL import Image

    title = (f"{name}: top-1 {summary.get('top1', float('nan')):.2f} %, mean class "
             f"{summary.get('mean_class_acc', float('nan')):.2f} %, {summary.get('num_samples', '?')} samples")
    buf = io.BytesIO()
    Image.fromarray(render_confusion(cm, names, title)).save(buf, format="PNG")
    atomic_write(paths["png"], buf.getvalue())
    return paths
