"""Pure sampling and augmentation-parameter functions shared by the DALI graph and the reference backend.

Both backends implement the same two decisions, and this module is their single written-down definition:

* **TSN sparse sampling** (UMT recipe): split a video of ``N`` frames into ``T`` equal segments and take one
  frame per segment, a uniformly random one in training and the segment centre in evaluation::

      index_i = min(floor((i + u_i) * N / T), N - 1),   u_i ~ U[0, 1) (train) or u_i = 0.5 (eval)

  This is the continuous form of the official ``_get_seq_frames`` (UMT ``kinetics_sparse.py``). The arithmetic is
  done in float32 in the same order as the DALI graph (``((i + u) * N) / T``), so that given the same ``u`` both
  backends pick identical frames.

* **Stage-2 segment sampling** (``sampling="rand_middle"``, official ``multi_modality/dataset/video_utils.py``
  ``get_frame_indices``): the boundaries are ``b_i = int(linspace(0, N, T + 1)[i])``; training takes a uniformly
  random frame of ``b_i .. b_{i+1} - 2`` (the official ``random.choice(range(b_i, b_{i+1} - 1))`` never takes a
  segment's last frame), and when a segment is a single frame (``N < 2T`` or so) a uniformly random sorted T-subset
  of all frames instead (the official ``permutation(N)[:T]`` fallback); evaluation takes ``(b_i + b_{i+1} - 1) // 2``.
  With ``N < T`` the N frames are padded with the last one. The draws are the same ``u`` as TSN's, so they stay a
  function of ``(seed, epoch, sample)``. It differs from TSN: for N = 10, T = 4 the middles are 0, 3, 5, 8 against
  TSN's centres 1, 3, 6, 8, and training never picks frames 1, 4, 6 or 9.

* **SSv2 sampling** (``sampling="ssv2"``, official ``single_modality/datasets/ssv2.py`` ``loadvideo_decord``, T =
  ``num_segment`` = the clip length): training takes ``i · (N // T) + randint(N // T)`` (segments of the integer
  length ``N // T``, so the last ``N mod T`` frames are never taken); when ``N // T = 0`` it takes T sorted uniform draws from all N frames with replacement if ``N > T`` and frame 0 T times otherwise; the random
  integers come from the same ``u`` (``floor(u · n)``). Evaluation with ``tick = N / T``: the single view takes the
  segment centres ``int(tick / 2 + tick · i)`` (official ``validation``), the multi-view test's clip c of n ≤ 2
  takes every second entry from c of the sorted starts ``int(tick · i)`` and centres (official ``test``:
  ``buffer[chunk_nb::2]``), i.e. clip 0 the segment starts and clip 1 the centres
  (:func:`ssv2_test_indices`).

* **Multi-scale crop** (official ``GroupMultiScaleCrop(input_size, [1, .875, .75, .66])`` with ``max_distort=1``,
  ``fix_crop=True``, ``more_fix_crop=True``): crop sizes are the short side times each scale (snapped to the model
  size when within 3 px); a (width, height) pair is drawn uniformly from the pairs whose scale indices differ by at
  most 1 (10 pairs for 4 scales); the offset is drawn uniformly from 13 fixed positions on a 4×4 step grid
  (corners, centre, edge centres, quarter points). One crop for every frame of a clip.

* **Random resized crop** (torchvision ``RandomResizedCrop``, stage 2 and fine-tuning): up to 10 attempts, each
  drawing an area fraction uniformly in ``scale`` and an aspect ratio log-uniformly in ``ratio``; the first window that
  fits the frame is placed uniformly; otherwise the centred window of the frame clamped to ``ratio``. The uniforms are
  drawn before the frame size is known (:func:`rrc_window` turns them into a window), so draws stay a function of
  ``(seed, epoch, sample)`` alone. One crop for every frame of a clip.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "FIX_OFFSETS_13",
    "FIX_OFFSETS_5",
    "crop_pairs",
    "crop_size_table",
    "eval_crop",
    "frame_indices",
    "multiscale_crop",
    "rand_middle_indices",
    "ssv2_indices",
    "ssv2_test_indices",
    "RRC_ATTEMPTS",
    "rrc_window",
    "tsn_indices",
]

#: Attempts of the random resized crop before its fallback (torchvision's 10).
RRC_ATTEMPTS = 10

#: Offsets as (w multiple, h multiple) of ``step = (image - crop) // 4``, in the order of the official
#: ``GroupMultiScaleCrop.fill_fix_offset`` (first 5 without ``more_fix_crop``).
FIX_OFFSETS_13: tuple[tuple[int, int], ...] = (
    (0, 0), (4, 0), (0, 4), (4, 4), (2, 2),  # corners, centre
    (0, 2), (4, 2), (2, 4), (2, 0),  # centre left/right, lower/upper centre
    (1, 1), (3, 1), (1, 3), (3, 3),  # quarter points
)  # fmt: skip
FIX_OFFSETS_5 = FIX_OFFSETS_13[:5]

#: Crop side within this many pixels of the model size is snapped to it (official ``_sample_crop_size``).
_SNAP_PX = 3


def tsn_indices(num_frames: int, num_segments: int, u: np.ndarray | Sequence[float] | None = None) -> np.ndarray:
    """TSN sparse frame indices.

    Args:
        num_frames: N, frames in the video (>= 1).
        num_segments: T, segments (one frame each).
        u: [T] position inside each segment in [0, 1); ``None`` means the centre (0.5, evaluation).

    Returns:
        int32 [T] frame indices in [0, N), non-decreasing.

    Raises:
        ValueError: ``num_frames < 1`` or ``u`` of the wrong length.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    uu = np.full(num_segments, 0.5, np.float32) if u is None else np.asarray(u, np.float32)
    if uu.shape != (num_segments,):
        raise ValueError(f"u must have shape [{num_segments}], got {uu.shape}")
    seg = np.arange(num_segments, dtype=np.float32)
    pos = ((seg + uu) * np.float32(num_frames)) / np.float32(num_segments)  # [T] float32, same order as the graph
    return np.minimum(pos.astype(np.int32), num_frames - 1).astype(np.int32)


def rand_middle_indices(
    num_frames: int, num_segments: int, u: np.ndarray | Sequence[float] | None = None
) -> np.ndarray:
    """Stage-2 frame indices: the official ``get_frame_indices(sample="rand")`` (``u`` given) or ``"middle"``
    (``u`` None), with the random choices taken from ``u`` (see the module docstring).

    Args:
        num_frames: N, frames in the video (>= 1).
        num_segments: T.
        u: [T] uniforms in [0, 1) (training), or None (evaluation: the middles).

    Returns:
        int32 [T] frame indices in [0, N), non-decreasing.

    Raises:
        ValueError: ``num_frames < 1`` or ``u`` of the wrong length.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    T = num_segments
    uu = None if u is None else np.asarray(u, np.float64)  # the float32 draws, widened: floor(u * n) < n
    if uu is not None and uu.shape != (T,):
        raise ValueError(f"u must have shape [{T}], got {uu.shape}")
    acc = min(T, num_frames)
    bounds = np.linspace(0, num_frames, acc + 1).astype(int)  # [acc + 1], the official boundaries
    lo, hi = bounds[:-1], bounds[1:] - 1  # [acc] each: the official (start, end) pairs
    if uu is None:
        idx = (lo + hi) // 2
    elif np.all(hi > lo):
        width = hi - lo  # choices lo .. hi - 1
        idx = lo + np.minimum(np.floor(uu[:acc] * width).astype(int), width - 1)
    else:  # a one-frame segment: a uniformly random sorted acc-subset of all frames (sequential selection)
        pool = list(range(num_frames))
        idx = np.sort([pool.pop(min(int(uu[t] * len(pool)), len(pool) - 1)) for t in range(acc)])
    out = np.full(T, idx[-1], np.int32)  # padded with the last frame when N < T
    out[:acc] = idx
    return out


def ssv2_indices(num_frames: int, num_segments: int, u: np.ndarray | Sequence[float] | None = None) -> np.ndarray:
    """SSv2 frame indices (official ``ssv2.py``): training (``u`` given) ``i · (N // T) + floor(u_i · (N // T))``,
    or when ``N // T = 0`` sorted ``floor(u_i · N)`` (``N > T``) or all 0 (``N <= T``); evaluation (``u`` None)
    the centres ``int(tick / 2 + tick · i)``, ``tick = N / T``.

    Args:
        num_frames: N, frames in the video (>= 1).
        num_segments: T.
        u: [T] uniforms in [0, 1) (training), or None (evaluation).

    Returns:
        int32 [T] frame indices in [0, N), non-decreasing.

    Raises:
        ValueError: ``num_frames < 1`` or ``u`` of the wrong length.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    n, t = num_frames, num_segments
    if u is None:
        tick = n / float(t)  # Python floats, as the official list comprehension
        return np.array([int(tick / 2.0 + tick * x) for x in range(t)], np.int32)
    uu = np.asarray(u, np.float64)  # the float32 draws, widened: floor(u * k) < k
    if uu.shape != (t,):
        raise ValueError(f"u must have shape [{t}], got {uu.shape}")
    avg = n // t
    if avg > 0:  # np.random.randint(avg, size=T) per segment, from u
        return (np.arange(t) * avg + np.minimum(np.floor(uu * avg).astype(np.int64), avg - 1)).astype(np.int32)
    if n > t:  # sorted np.random.randint(N, size=T): draws with replacement
        return np.sort(np.minimum(np.floor(uu * n).astype(np.int64), n - 1)).astype(np.int32)
    return np.zeros(t, np.int32)  # official np.zeros((num_segment,)): frame 0 throughout


def ssv2_test_indices(num_frames: int, num_segments: int, clip: int, num_clips: int) -> np.ndarray:
    """Frames of temporal test clip ``clip`` of ``num_clips`` under SSv2 sampling (official ``ssv2.py``, mode
    ``test``): the sorted union of the segment starts ``int(tick · i)`` and centres ``int(tick / 2 + tick · i)``
    (``tick = N / T``; 2T entries, padded with the last to ``num_clips · T``), every second one from ``clip``
    (``buffer[chunk_nb::2]``). As starts and centres interleave, clip 0 is the starts and clip 1 the centres.

    Returns:
        int32 [T], non-decreasing, in [0, N).

    Raises:
        ValueError: ``num_frames < 1``, ``clip`` out of range, or ``num_clips > 2`` (the official slicing would give
            clips of more than T frames).
    """
    if num_frames < 1 or not 0 <= clip < num_clips:
        raise ValueError(f"need num_frames >= 1 and 0 <= clip < {num_clips}, got {num_frames}, {clip}")
    if num_clips > 2:
        raise ValueError(f"SSv2 test sampling takes 1 or 2 temporal clips (official buffer[chunk::2]), got {num_clips}")
    tick = num_frames / float(num_segments)
    every = sorted([int(tick / 2.0 + tick * x) for x in range(num_segments)] +
                   [int(tick * x) for x in range(num_segments)])  # [2T]
    return np.asarray(every[clip::2][:num_segments], np.int32)


def frame_indices(
    num_frames: int, num_segments: int, u: np.ndarray | Sequence[float] | None, sampling: str = "tsn"
) -> np.ndarray:
    """The frames ``data.sampling`` takes: :func:`tsn_indices` (``tsn``), :func:`rand_middle_indices`
    (``rand_middle``) or :func:`ssv2_indices` (``ssv2``). Returns int32 [T].

    Raises:
        ValueError: an unknown ``sampling``.
    """
    if sampling == "tsn":
        return tsn_indices(num_frames, num_segments, u)
    if sampling == "rand_middle":
        return rand_middle_indices(num_frames, num_segments, u)
    if sampling == "ssv2":
        return ssv2_indices(num_frames, num_segments, u)
    raise ValueError(f"sampling must be 'tsn', 'rand_middle' or 'ssv2', got {sampling!r}")


def crop_pairs(num_scales: int, max_distort: int = 1) -> list[tuple[int, int]]:
    """(height scale index, width scale index) pairs with ``|i - j| <= max_distort``, in the official order."""
    return [(i, j) for i in range(num_scales) for j in range(num_scales) if abs(i - j) <= max_distort]


def crop_size_table(scales: Sequence[float], max_distort: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per crop pair, the (height, width) scale fractions: two float32 arrays [P] (P = 10 for 4 scales)."""
    pairs = crop_pairs(len(scales), max_distort)
    s = np.asarray(scales, np.float32)
    return s[[p[0] for p in pairs]], s[[p[1] for p in pairs]]


def _crop_side(short: int, frac: np.float32, size: int) -> int:
    side = int(np.float32(short) * np.float32(frac))  # float32 like the graph; floor for positive values
    return size if abs(side - size) < _SNAP_PX else side


def multiscale_crop(
    width: int,
    height: int,
    size: int,
    scales: Sequence[float],
    pair_index: int,
    offset_index: int,
    offsets: Sequence[tuple[int, int]] = FIX_OFFSETS_13,
) -> tuple[int, int, int, int]:
    """The crop window chosen by draws ``pair_index`` (uniform over :func:`crop_pairs`) and ``offset_index``.

    Args:
        width, height: frame size W, H in pixels.
        size: model input side in pixels (for the official 3-px snap).
        scales: crop fractions of the short side.
        pair_index: index into :func:`crop_pairs` (``len(scales)`` scales, ``max_distort=1``).
        offset_index: index into ``offsets``.

    Returns:
        ``(x, y, crop_w, crop_h)`` in pixels, with the window inside the frame (crop sides are clamped to the frame,
        which only matters when the snap to ``size`` exceeds a tiny frame).
    """
    fh, fw = crop_size_table(scales)
    short = min(width, height)
    ch = min(_crop_side(short, fh[pair_index], size), height)
    cw = min(_crop_side(short, fw[pair_index], size), width)
    mw, mh = offsets[offset_index]
    x = mw * ((width - cw) // 4)
    y = mh * ((height - ch) // 4)
    return x, y, cw, ch


def eval_crop(width: int, height: int) -> tuple[int, int, int, int]:
    """Evaluation crop: the centred square of the short side, ``(x, y, side, side)`` in pixels.

    Uses the same step grid as the training crop (scale 1, centre offset (2, 2)), so both backends agree exactly.
    """
    side = min(width, height)
    return 2 * ((width - side) // 4), 2 * ((height - side) // 4), side, side


def rrc_window(
    width: int,
    height: int,
    scale: Sequence[float],
    ratio: Sequence[float],
    uniforms: np.ndarray,
) -> tuple[int, int, int, int]:
    """The random resized crop window that ``uniforms`` select (torchvision ``RandomResizedCrop.get_params``).

    Args:
        width, height: frame size W, H in pixels.
        scale: (low, high) area fraction of the frame.
        ratio: (low, high) aspect ratio w/h, drawn log-uniformly.
        uniforms: float64 [:data:`RRC_ATTEMPTS`, 4] in [0, 1): per attempt (area, log-ratio, y, x).

    Returns:
        ``(x, y, crop_w, crop_h)`` in pixels, inside the frame.

    Raises:
        ValueError: ``uniforms`` of the wrong shape.
    """
    u = np.asarray(uniforms, np.float64)
    if u.shape != (RRC_ATTEMPTS, 4):
        raise ValueError(f"uniforms must have shape [{RRC_ATTEMPTS}, 4], got {u.shape}")
    area = float(width * height)
    lo, hi = np.log(ratio[0]), np.log(ratio[1])
    for ua, ur, uy, ux in u:
        target = area * (scale[0] + (scale[1] - scale[0]) * ua)
        aspect = float(np.exp(lo + (hi - lo) * ur))
        w = int(round(np.sqrt(target * aspect)))
        h = int(round(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(ux * (width - w + 1)), int(uy * (height - h + 1)), w, h  # uniform in [0, W-w] × [0, H-h]
    in_ratio = width / height  # fallback: the whole frame, clamped to the ratio range, centred
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h
