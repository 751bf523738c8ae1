"""Kernel benchmark: semantic mask + token gather, and attention, at UMT-B/UMT-L step shapes.

Each op runs three (attention: four) ways, forward and, where the training step differentiates it, forward+backward:

- ``a_original``: the original recipe's path. Mask: the teacher's last block's FULL attention map
  (``softmax(q kᵀ)`` over all 197 queries), its CLS row averaged over heads, ``torch.multinomial`` over all 196
  patches without replacement, a boolean mask, ``(x + pos)[~mask]`` and ``targets[:, ~mask]`` (both sync with the
  host to size their output). Attention: the explicit ``softmax(q kᵀ/√D) v`` with the map in memory.
- ``b_torch``: the best plain-PyTorch path, i.e. this project's references (``impl="torch"``): one CLS query row,
  Gumbel-top-k (``topk`` + ``sort``) on counter-based noise, ``torch.gather``; SDPA with PyTorch's own backend choice.
- ``c_sdpa_flash`` (attention only): SDPA restricted to the flash backend.
- ``triton``: this project's kernels (``impl="triton"``).

Shapes (docs/design.md, "Stage 1"): batch 64 clips × 8 frames; teacher 512 frames × (1 + 196) tokens, 12 (B) / 16 (L)
heads of 64; student 320 visible tokens, 12 / 16 heads of 64, width 768 / 1024; targets of 6 layers of width 512 /
768; keep 40 of 196 per frame. Rates: attention ``4·B·H·N²·D`` FLOPs forward, ×3.5 forward+backward (Triton
tutorial's count); memory ops count the bytes each op must read and write (formulas in :func:`_mask_bytes` and
friends). Ceilings measured in the same run: the best bf16 square matmul (:mod:`benchmarks.matmul`) and a 1 GiB
device-to-device copy (``2·bytes / time``). Host syncs are counted with ``torch.cuda.set_sync_debug_mode("warn")``.

Without a GPU the script runs the reference paths (a) and (b) on CPU at reduced shapes (2 clips, fp32) and says that
the kernel figures need a GPU: CPU figures exercise the code, they are not the GPU comparison.

``python -m benchmarks.bench_kernels [--quick] [--device cuda] [--model umt_b16,umt_l16] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from benchmarks.common import BenchResult, Stats, format_table, measure, write_report
from kernels.flash_attention import attention_flops, attention_reference, flash_attention
from kernels.semantic_topk import cls_attention, gumbel_topk, semantic_topk
from kernels.token_gather import gather_targets, gather_tokens
from umt.flops import UMT_SPECS

__all__ = ["count_host_syncs", "main", "run"]

log = logging.getLogger(__name__)

_HEAD_DIM = 64
_COLUMNS = ("model", "op", "pass", "path", "shape", "us", "rate", "unit", "frac_of_ceiling", "speedup_vs_a", "host_syncs")


def count_host_syncs(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Number of host↔device synchronisations ``fn()`` makes (CUDA sync debug mode warnings); None off CUDA."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize(device)
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def _copy_ceiling_gbs(device: torch.device, quick: bool) -> float:
    """Device-to-device copy rate in GB/s (read + write bytes ÷ time) of a 1 GiB (CPU: 64 MiB) buffer."""
    n = (1 << 29) if device.type == "cuda" else (1 << 25)  # bf16/fp16 elements: 1 GiB on GPU, 64 MiB on CPU
    src = torch.empty(n, dtype=torch.float16, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    st = measure(lambda: dst.copy_(src), warmup=2, repeat=5 if quick else 20, device=device)
    return 2 * src.numel() * src.element_size() / st.median / 1e9


def _matmul_ceiling_tflops(device: torch.device, quick: bool) -> float | None:
    from benchmarks.matmul import achievable_tflops
    from benchmarks.matmul import run as run_matmul

    return achievable_tflops(run_matmul(quick=True, device=str(device)))


def _mask_shapes(model: str, clips: int) -> dict[str, int]:
    spec = UMT_SPECS[model]
    n = spec.tokens_per_frame
    return dict(
        b=clips,
        t=spec.num_frames,
        n=n,
        keep=spec.keep_per_frame,
        h_t=spec.teacher.width // _HEAD_DIM,
        h_s=spec.student.width // _HEAD_DIM,
        c=spec.student.width,
        c_t=spec.teacher_dim,
        layers=spec.align_layers,
    )


def _mask_bytes(s: dict[str, int], elem: int) -> dict[str, float]:
    """Bytes each op must move at least (reads + writes), for GB/s."""
    r, m, kept = s["b"] * s["t"], 1 + s["n"], s["b"] * s["t"] * s["keep"]
    topk = elem * r * s["h_t"] * _HEAD_DIM * (1 + m) + 8 * r * s["keep"]  # q row + all keys in; indices out
    tokens = kept * s["c"] * elem * 3 + kept * 8  # kept x rows + their pos rows in, rows out; indices
    tokens_bwd = tokens + s["b"] * s["t"] * s["n"] * s["c"] * elem  # + the zero-filled full grad of x
    targets = 2 * s["layers"] * kept * s["c_t"] * elem + kept * 8
    return {"semantic_topk": topk, "gather_tokens": tokens, "gather_tokens_bwd": tokens_bwd,
            "gather_targets": targets, "mask+gather": topk + tokens + targets}


def _mask_ops(model: str, clips: int, device: torch.device, dtype: torch.dtype, triton_ok: bool) -> list[tuple]:
    """(op, pass, path, shape, fn, bytes) for the mask + gather family."""
    s = _mask_shapes(model, clips)
    b, t, n, keep, h, c, c_t, layers = s["b"], s["t"], s["n"], s["keep"], s["h_t"], s["c"], s["c_t"], s["layers"]
    r, m = b * t, 1 + n
    gen = torch.Generator(device=device).manual_seed(0)
    qkv_t = torch.randn(3, r, h, m, _HEAD_DIM, device=device, dtype=dtype, generator=gen)  # teacher last block
    q_all, k = qkv_t[0], qkv_t[1]  # [R, H, M, D]
    q_cls = q_all[:, :, 0]  # [R, H, D]
    x = torch.randn(b, t * n, c, device=device, dtype=dtype, generator=gen, requires_grad=True)  # patch embeddings
    pos = torch.randn(t * n, c, device=device, dtype=dtype, generator=gen)  # fixed sin-cos table stand-in
    tgt = torch.randn(layers, b, t * n, c_t, device=device, dtype=dtype, generator=gen)  # [L, B, T·N, C_t]
    seed = torch.tensor(17, device=device)
    offs = (torch.arange(t, device=device) * n).view(1, t, 1)  # frame offsets into T·N
    by = _mask_bytes(s, torch.finfo(dtype).bits // 8)
    grad_vis = torch.randn(b, t * keep, c, device=device, dtype=dtype, generator=gen)

    def original() -> tuple[torch.Tensor, torch.Tensor]:
        attn = (q_all @ k.transpose(-2, -1)) * _HEAD_DIM**-0.5  # [R, H, M, M]: the full map
        p = attn.float().softmax(-1)[:, :, 0, 1:].mean(1)  # [R, N]
        idx = torch.multinomial(p, keep, replacement=False)  # [R, K]
        mask = torch.ones(r, n, dtype=torch.bool, device=device).scatter_(1, idx, False).view(b, t * n)  # True = drop
        vis = (x + pos)[~mask].reshape(b, -1, c)  # host sync: output size from the mask
        targets = tgt[:, ~mask].reshape(layers, b, -1, c_t)  # host sync again
        return vis, targets

    def kept_flat(impl: str) -> torch.Tensor:
        idx = semantic_topk(q_cls, k, keep, seed, impl=impl)  # [R, K]
        return (idx.view(b, t, keep) + offs).view(b, t * keep)  # [B, T·K]

    def fused(impl: str) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
        def fn() -> tuple[torch.Tensor, torch.Tensor]:
            flat = kept_flat(impl)
            return gather_tokens(x, flat, pos, impl=impl), gather_targets(tgt, flat, impl=impl)

        return fn

    def topk_b() -> torch.Tensor:
        return gumbel_topk(torch.log(cls_attention(q_cls, k).clamp_min(1e-30)), keep, seed)

    flat = kept_flat("torch")
    shape_mask = f"R={r} H={h} M={m} D={_HEAD_DIM} K={keep}"
    shape_tok = f"B={b} {t * n}->{t * keep} C={c}"
    shape_tgt = f"L={layers} B={b} {t * n}->{t * keep} C={c_t}"

    def topk_a() -> torch.Tensor:
        attn = ((q_all @ k.transpose(-2, -1)) * _HEAD_DIM**-0.5).float().softmax(-1)  # [R, H, M, M]
        return torch.multinomial(attn[:, :, 0, 1:].mean(1), keep, replacement=False)

    ops: list[tuple] = [
        ("mask+gather", "fwd", "a_original", f"{shape_mask}; {shape_tok}; {shape_tgt}", original, by["mask+gather"]),
        ("mask+gather", "fwd", "b_torch", f"{shape_mask}; {shape_tok}; {shape_tgt}", fused("torch"), by["mask+gather"]),
        ("semantic_topk", "fwd", "a_original", shape_mask, topk_a, by["semantic_topk"]),
        ("semantic_topk", "fwd", "b_torch", shape_mask, topk_b, by["semantic_topk"]),
        ("gather_tokens", "fwd", "a_original", shape_tok, lambda: (x + pos)[torch.ones(b, t * n, dtype=torch.bool, device=device).scatter_(1, flat, False).logical_not()], by["gather_tokens"]),
        ("gather_tokens", "fwd", "b_torch", shape_tok, lambda: gather_tokens(x, flat, pos), by["gather_tokens"]),
        ("gather_tokens", "fwd+bwd", "b_torch", shape_tok,
         lambda: torch.autograd.grad(gather_tokens(x, flat, pos), x, grad_vis), by["gather_tokens_bwd"]),
        ("gather_targets", "fwd", "b_torch", shape_tgt, lambda: gather_targets(tgt, flat), by["gather_targets"]),
    ]
    if triton_ok:
        ops += [
            ("mask+gather", "fwd", "triton", f"{shape_mask}; {shape_tok}; {shape_tgt}", fused("triton"), by["mask+gather"]),
            ("semantic_topk", "fwd", "triton", shape_mask, lambda: semantic_topk(q_cls, k, keep, seed, impl="triton"), by["semantic_topk"]),
            ("gather_tokens", "fwd", "triton", shape_tok, lambda: gather_tokens(x, flat, pos, impl="triton"), by["gather_tokens"]),
            ("gather_tokens", "fwd+bwd", "triton", shape_tok,
             lambda: torch.autograd.grad(gather_tokens(x, flat, pos, impl="triton"), x, grad_vis), by["gather_tokens_bwd"]),
            ("gather_targets", "fwd", "triton", shape_tgt, lambda: gather_targets(tgt, flat, impl="triton"), by["gather_targets"]),
        ]
    return ops


def _attention_ops(model: str, clips: int, device: torch.device, dtype: torch.dtype, triton_ok: bool) -> list[tuple]:
    """(op, pass, path, shape, fn, flops) for the student's and the teacher's attention."""
    spec = UMT_SPECS[model]
    out: list[tuple] = []
    cases = [
        ("attn_student", clips, spec.student.width // _HEAD_DIM, spec.num_frames * spec.keep_per_frame, ("fwd", "fwd+bwd")),
        ("attn_teacher", clips * spec.num_frames, spec.teacher.width // _HEAD_DIM, 1 + spec.tokens_per_frame, ("fwd",)),
    ]

    def explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        attn = ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(-1)  # [B, H, N, N] in memory
        return attn @ v

    def sdpa_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return attention_reference(q, k, v)

    paths: list[tuple[str, Callable]] = [("a_original", explicit), ("b_torch", attention_reference)]
    if device.type == "cuda":
        paths.append(("c_sdpa_flash", sdpa_flash))
    if triton_ok:
        paths.append(("triton", lambda q, k, v: flash_attention(q, k, v, impl="triton")))
    gen = torch.Generator(device=device).manual_seed(1)
    for op, bsz, heads, tokens, passes in cases:
        q, k, v = (torch.randn(bsz, heads, tokens, _HEAD_DIM, device=device, dtype=dtype, generator=gen, requires_grad=True) for _ in range(3))
        do = torch.randn(bsz, heads, tokens, _HEAD_DIM, device=device, dtype=dtype, generator=gen)
        shape = f"B={bsz} H={heads} N={tokens} D={_HEAD_DIM}"
        for name, fn in paths:
            for p in passes:
                flops = attention_flops(bsz, heads, tokens, _HEAD_DIM, backward=p == "fwd+bwd")
                if p == "fwd":
                    call = (lambda fn=fn: fn(q.detach(), k.detach(), v.detach()))
                else:
                    call = (lambda fn=fn: torch.autograd.grad(fn(q, k, v), (q, k, v), do))
                out.append((op, p, name, shape, call, flops))
    return out


def run(
    *,
    quick: bool = False,
    models: Sequence[str] = ("umt_b16", "umt_l16"),
    device: str | None = None,
    **kwargs: Any,
) -> BenchResult:
    """Time every op and path at each model's step shapes.

    Args:
        quick: fewer repeats (and one clip on CPU).
        models: keys of :data:`umt.flops.UMT_SPECS`.
        device: ``"cuda"``/``"cpu"``; default CUDA when available.

    Returns:
        A :class:`BenchResult` named ``"kernels"``; rows ``{model, op, pass, path, shape, us, rate, unit
        (TFLOP/s or GB/s), frac_of_ceiling (of the matmul or copy ceiling measured in this run), speedup_vs_a,
        host_syncs}``; ``extra`` holds the ceilings.
    """
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = dev.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    clips = 64 if cuda else (1 if quick else 2)
    import umt.ops

    triton_ok = cuda and umt.ops.triton_available()
    warm, rep = (3, 10) if quick else (5, 30)
    if not cuda:
        warm, rep = (1, 2) if quick else (1, 3)
    copy_gbs = _copy_ceiling_gbs(dev, quick)
    mm_tflops = _matmul_ceiling_tflops(dev, quick)
    rows: list[dict[str, Any]] = []
    for model in models:
        families = [(_mask_ops(model, clips, dev, dtype, triton_ok), "GB/s", copy_gbs),
                    (_attention_ops(model, clips, dev, dtype, triton_ok), "TFLOP/s", mm_tflops)]
        for ops, unit, ceiling in families:
            base: dict[tuple[str, str], float] = {}
            for op, p, path, shape, fn, work in ops:
                st: Stats = measure(fn, warmup=warm, repeat=rep, device=dev)
                rate = work / st.median / (1e12 if unit == "TFLOP/s" else 1e9)
                if path == "a_original":
                    base[(op, p)] = st.median
                rows.append(
                    {
                        "model": model, "op": op, "pass": p, "path": path, "shape": shape,
                        "us": st.median * 1e6, "rate": rate, "unit": unit,
                        "frac_of_ceiling": rate / ceiling if ceiling else None,
                        "speedup_vs_a": base[(op, p)] / st.median if (op, p) in base else None,
                        "host_syncs": count_host_syncs(fn, dev),
                    }
                )
                log.info("%s %s %s %s: %.1f µs", model, op, p, path, st.median * 1e6)
            del ops
    notes = [
        "Median of repeated runs (CUDA events on GPU); us = microseconds per call; speedup_vs_a = time of the "
        "original recipe's path (a) ÷ this path's time.",
        f"Ceilings measured in this run: copy {copy_gbs:.1f} GB/s (2·bytes/time, {'1 GiB' if cuda else '64 MiB'} "
        "device copy), "
        f"matmul {mm_tflops if mm_tflops is None else round(mm_tflops, 1)} TFLOP/s (best square matmul).",
        "Attention FLOPs 4·B·H·N²·D forward, ×3.5 forward+backward; memory ops count the bytes they must read + write.",
    ]
    if not cuda:
        notes.append(
            f"NO GPU: CPU, fp32, {clips} clip(s) instead of 64; only the reference paths (a) original recipe and "
            "(b) plain PyTorch ran. The Triton kernel figures (and host-sync counts, and the SDPA-flash comparison) "
            "need a GPU: run `python -m benchmarks.bench_kernels` on one."
        )
    return BenchResult(name="kernels", rows=rows, notes=notes,
                       extra={"copy_gbs": copy_gbs, "matmul_tflops": mm_tflops, "clips": clips, "dtype": str(dtype)})


def main(argv: list[str] | None = None) -> int:
    """Command line: print the table and write ``<date>_kernels_<device>.{json,md}`` under ``--out``."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_kernels", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default=None)
    p.add_argument("--model", default="umt_b16,umt_l16", help="comma-separated keys of umt.flops.UMT_SPECS")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = run(quick=args.quick, models=tuple(args.model.split(",")), device=args.device)
    print(format_table(result.rows, _COLUMNS))
    for note in result.notes:
        print(f"- {note}")
    write_report(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
