"""``python -m umt.train.preview``: look at what the model sees, as a PNG.

For a few clips of a shard directory, after the recipe's training augmentation (the loader the trainer uses), one
block per clip with T columns and these rows: the frames (de-normalised), the teacher's last-block CLS attention
(the semantic mask's scores) as a heat map over the frame, and the kept tokens of the semantic, tube and random masks
(the recipe's mask ratio; masked patches greyed out, kept patches show the frame). Deterministic for a seed. Runs on
CPU (DALI's CPU backend or the reference backend); the teacher is the recipe's (random unless
``--teacher-weights``: with random weights the attention map, and so the semantic mask, is not meaningful).
The PNG is written atomically and never over a file this command did not make unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from umt.fileio import atomic_path

__all__ = ["render_clip", "preview", "main"]

GREY = 96  # masked patches: this grey level, blended with the frame at 25 %


def _frames_uint8(video: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """``[3, T, H, W]`` normalised → uint8 ``[T, H, W, 3]``."""
    m = torch.tensor(mean).view(3, 1, 1, 1)
    s = torch.tensor(std).view(3, 1, 1, 1)
    pix = ((video.float().cpu() * s + m) * 255).clamp(0, 255).round().to(torch.uint8)
    return pix.permute(1, 2, 3, 0).numpy()


def _heat(values: np.ndarray) -> np.ndarray:
    """``[g, g]`` scores → uint8 RGB ``[g, g, 3]`` (black → red → yellow, min-max scaled)."""
    v = (values - values.min()) / max(float(values.max() - values.min()), 1e-12)
    return (np.stack([np.clip(2 * v, 0, 1), np.clip(2 * v - 1, 0, 1), np.zeros_like(v)], -1) * 255).astype(np.uint8)


def render_clip(video: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], grid: int,
                attention: torch.Tensor | None, masks: dict[str, torch.Tensor]) -> np.ndarray:
    """One clip's panel as uint8 RGB ``[rows·S, T·S, 3]`` (S = frame side).

    Args:
        video: ``[3, T, S, S]`` normalised with ``mean``/``std``.
        grid: patches per side (S / patch size).
        attention: ``[T, grid²]`` CLS→patch attention (a heat-map row), or None.
        masks: name → kept clip-level positions ``[T·K]`` (T-major, ``t·grid² + patch``); one row each, in order.
    """
    frames = _frames_uint8(video, mean, std)  # [T, S, S, 3]
    t, size = frames.shape[0], frames.shape[1]
    cell = size // grid
    rows = [np.concatenate(list(frames), axis=1)]
    if attention is not None:
        att = attention.float().cpu().numpy().reshape(t, grid, grid)
        heat = [np.kron(_heat(a), np.ones((cell, cell, 1), np.uint8)) for a in att]
        rows.append(np.concatenate([(0.4 * f + 0.6 * h).astype(np.uint8) for f, h in zip(frames, heat)], axis=1))
    for kept in masks.values():
        keep = np.zeros(t * grid * grid, bool)
        keep[kept.cpu().numpy()] = True
        cells = np.kron(keep.reshape(t, grid, grid), np.ones((cell, cell), bool))  # [T, S, S]
        out = np.where(cells[..., None], frames, (0.25 * frames + 0.75 * GREY).astype(np.uint8))
        rows.append(np.concatenate(list(out), axis=1))
    return np.concatenate(rows, axis=0)


def _write_png(img: np.ndarray, out: Path, overwrite: bool) -> None:
    from PIL import Image

    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        Image.fromarray(img).save(tmp, format="PNG")


def preview(shards: str, out: str | Path, *, recipe: str = "demo", teacher_weights: str = "", seed: int = 0,
            clips: int = 2, overwrite: bool = False, overrides: list[str] | None = None) -> Path:
    """Write the preview PNG for ``clips`` clips of ``shards`` (see the module docstring); returns its path.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is False.
        FileNotFoundError: no shard manifest in ``shards``.
    """
    from umt import masking
    from umt.data import build_loader
    from umt.model import CLIPTeacher
    from umt.config import apply_overrides
    from umt.train.recipes import get_recipe

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    cfg = apply_overrides(get_recipe(recipe), [f"data.shards={shards}", f"data.batch_size={clips}",
                                               "data.num_workers=0", "data.num_sample=1", f"seed={seed}",
                                               f"data.seed={seed}", *(overrides or [])])
    d, m = cfg.data, cfg.model
    loader = build_loader(d)
    try:
        video = next(iter(loader.epoch_iter(0)))["video"]  # [B, 3, T, S, S]
    finally:
        loader.close()
    torch.manual_seed(seed)  # a random-init teacher is drawn from the global generator
    teacher = CLIPTeacher(m.teacher, m.teacher_image_size, teacher_weights or None, m.teacher_quick_gelu,
                          m.align_layers, m.teacher_input_norm, video_mean=d.mean, video_std=d.std)
    with torch.no_grad():
        tout = teacher(video)
    b, _, t = video.shape[:3]
    grid = m.teacher_image_size // teacher.patch_size
    n = grid * grid
    keep = masking.keep_per_frame(n, cfg.mask.ratio)
    # one noise stream per kind: with one seed the three kinds share their Gumbel noise and look alike
    kinds = {kind: masking.make_mask(kind, batch=b, frames=t, tokens_per_frame=n, keep=keep,
                                     seed=masking.step_seed(seed, 0, 0, stream), q_cls=tout.q_cls, k=tout.k)
             for stream, kind in enumerate(("semantic", "tube", "random"))}
    attention = tout.cls_attention().view(b, t, n)
    blocks = [render_clip(video[i], d.mean, d.std, grid, attention[i], {k: v[i] for k, v in kinds.items()})
              for i in range(b)]
    sep = np.full((8, blocks[0].shape[1], 3), 255, np.uint8)
    img = np.concatenate([x for blk in blocks for x in (blk, sep)][:-1], axis=0)
    _write_png(img, out, overwrite)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m umt.train.preview", description=__doc__.split("\n\n")[0],
                                 epilog="Rows per clip: frames, CLS attention, semantic / tube / random kept tokens.")
    ap.add_argument("--shards", required=True, help="shard directory (tools/make_shards.py output)")
    ap.add_argument("--recipe", default="demo", help="recipe whose augmentation, teacher and mask ratio to use")
    ap.add_argument("--teacher-weights", default="", help="CLIP weights (see model.teacher_weights); default random")
    ap.add_argument("--seed", type=int, default=0, help="seed of the augmentation draws and masks")
    ap.add_argument("--clips", type=int, default=2, help="number of clips (rows of panels)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override")
    ap.add_argument("--out", required=True, help="PNG path")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = ap.parse_args(argv)
    try:
        path = preview(args.shards, args.out, recipe=args.recipe, teacher_weights=args.teacher_weights,
                       seed=args.seed, clips=args.clips, overwrite=args.overwrite, overrides=args.set)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
