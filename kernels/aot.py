"""Ahead-of-time compilation of every Triton kernel for a named GPU, on a machine without one.

The interpreter (CPU tests) compiles nothing, so a kernel can pass every test and still fail to compile, spill
registers or exceed shared memory on the GPU it is meant for. This module compiles what a launch would compile:

1. **Capture.** Each op wrapper (``torch.ops.umt.flash_attn_fwd`` …) is called on small CPU tensors laid out as the
   model lays them out at the real sequence lengths (batch 1: strides do not depend on the batch), with its kernel
   replaced by a recorder, so the positional arguments, strides, constexprs, ``num_warps`` and ``num_stages`` are
   the wrapper's own, for the config it picks on the target (or a forced candidate, to cover every config).
2. **Specialise** like the launcher: Triton's binder (``triton.runtime.jit.create_function_from_signature``) turns
   the arguments into the (signature, constexprs, attrs) triple (16-byte alignment, divisibility by 16, stride 1 as
   a constant), exactly as ``JITFunction.run`` does.
3. **Compile** with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90 | 80, 32))`` (Triton's cache dir
   keeps the artefacts), and read resources: shared memory from ``metadata.shared``, registers and spills from
   ``ptxas -v`` on the PTX (same flags as Triton's own ptxas call), ``wgmma`` from the PTX.

It must run where ``TRITON_INTERPRET`` is unset (``@triton.jit`` returns interpreter objects otherwise):
:func:`run_matrix` starts ``python -m kernels.aot`` without it. Used by ``tests/test_kernels_aot.py`` and
``benchmarks/kernel_resources.py``.

Limits (bytes, CUDA C Programming Guide, "Compute capabilities" table): shared memory per block (opt-in) 227 KiB on
sm_90, 163 KiB on sm_80; per SM 228 / 164 KiB; 65,536 registers, 2,048 threads, 32 blocks per SM on both.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["ARCHS", "SMEM_PER_BLOCK", "Launch", "capture_matrix", "compile_launch", "occupancy", "run_matrix"]

ARCHS = {"sm90": 90, "sm80": 80}
SMEM_PER_BLOCK = {"sm90": 227 * 1024, "sm80": 163 * 1024}
_SMEM_PER_SM = {"sm90": 228 * 1024, "sm80": 164 * 1024}
_REGS_PER_SM, _THREADS_PER_SM, _BLOCKS_PER_SM, _SMEM_RESERVED_PER_BLOCK = 65536, 2048, 32, 1024

# Real shapes (docs/design.md): teacher B/16 and L/14 at 197 tokens per frame; students B and L at 320 visible and 1568
# tokens; head dim 64, and 128 (which the kernels claim) at the student's lengths.
ATTN_SHAPES = (  # (label, N, H, D, backward)
    ("teacher_b16", 197, 12, 64, False),
    ("teacher_l14", 197, 16, 64, False),
    ("student_b_320", 320, 12, 64, True),
    ("student_l_320", 320, 16, 64, True),
    ("student_b_1568", 1568, 12, 64, True),
    ("student_l_1568", 1568, 16, 64, True),
    ("d128_320", 320, 8, 128, True),
    ("d128_1568", 1568, 8, 128, True),
)
DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@dataclass
class Launch:
    """One kernel launch as a wrapper makes it: kernel object, arguments, meta-parameters, and what it is for."""

    op: str  # e.g. "flash_attn_fwd", "flash_attn_bwd_kv", "semantic_topk", "gather_rows"
    shape: str  # label of the real shape
    dtype: str
    arch: str
    config: str  # e.g. "128x64 w8 s3"
    pinned: bool  # the config the wrapper picks on this arch
    fn: Any = field(repr=False)
    args: tuple = field(repr=False)
    kwargs: dict = field(repr=False)

    def meta(self) -> dict[str, Any]:
        """The descriptive fields (JSON-ready)."""
        return {"op": self.op, "shape": self.shape, "dtype": self.dtype, "arch": self.arch, "config": self.config,
                "pinned": self.pinned}


# ------------------------------------------------------------------------------------------------ capture


class _Recorder:
    def __init__(self, fn: Any, sink: list[tuple[Any, tuple, dict]]) -> None:
        self.fn, self.sink = fn, sink

    def __getitem__(self, grid: Any):  # noqa: ANN204
        def launch(*args: Any, **kwargs: Any) -> None:
            self.sink.append((self.fn, args, kwargs))

        return launch


@contextlib.contextmanager
def _recording(module: Any, names: tuple[str, ...]) -> Iterator[list[tuple[Any, tuple, dict]]]:
    sink: list[tuple[Any, tuple, dict]] = []
    saved = {n: getattr(module, n) for n in names}
    try:
        for n in names:
            setattr(module, n, _Recorder(saved[n], sink))
        yield sink
    finally:
        for n, f in saved.items():
            setattr(module, n, f)


def _cfg_label(kw: dict) -> str:
    if "BLOCK_N" in kw:
        return f"{kw['BLOCK_M']}x{kw['BLOCK_N']} w{kw.get('num_warps', 4)} s{kw.get('num_stages', 3)}"
    blocks = ",".join(f"{k}={kw[k]}" for k in sorted(kw) if k.startswith("BLOCK_"))
    return f"{blocks} w{kw.get('num_warps', 4)}"


def _qkv(n: int, h: int, d: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """q, k, v as the models pass them: views of one fused projection ``[B, N, 3, H, D]`` (batch 1)."""
    qkv = torch.empty(1, n, 3, h, d, dtype=dtype).permute(2, 0, 3, 1, 4)  # [3, B, H, N, D]
    return qkv.unbind(0)


def _in_default(label: str, dtype: torch.dtype, d: int = 64) -> bool:
    """The representative subset compiled by default: bf16 at every shape; fp16 and fp32 at one student shape (and
    fp32 at D=128, whose configs differ)."""
    return (dtype == torch.bfloat16 or label in ("student_b_320", "umt_b", "teacher_b16_int_seed")
            or (d == 128 and label == "d128_320" and dtype == torch.float32))


def _attention_launches(arch: str, full: bool) -> list[Launch]:
    import kernels.flash_attention as fa

    out: list[Launch] = []
    names = ("_attn_fwd_kernel", "_attn_bwd_delta_kernel", "_attn_bwd_kv_kernel", "_attn_bwd_q_kernel")
    op_of = {"_attn_fwd_kernel": "fwd", "_attn_bwd_delta_kernel": "bwd_delta", "_attn_bwd_kv_kernel": "bwd_kv",
             "_attn_bwd_q_kernel": "bwd_q"}
    for label, n, h, d, backward in ATTN_SHAPES:
        if fa.unsupported_reason(d, arch) is not None:
            continue  # refused with a clear error (D=128 on sm_80); tests/test_kernels_attention.py checks it
        for dtype in DTYPES:
            if not (full or _in_default(label, dtype, d)):
                continue
            q, k, v = _qkv(n, h, d, dtype)
            o = torch.empty(1, n, h, d, dtype=dtype)  # [B, N, H, D], as the forward writes it
            do = torch.empty(1, n, h, d, dtype=dtype)  # the gradient of o.view(B, N, H·D): contiguous
            lse = torch.empty(1, h, n, dtype=torch.float32)
            kernels = ("fwd", "bwd_kv", "bwd_q") if backward else ("fwd",)
            pinned = {kn: fa.pick_config(kn, n, d, dtype, arch) for kn in kernels}
            variants: list[dict[str, fa.KernelConfig]] = [pinned]
            if full:  # every candidate of each kernel, the others at their pinned config
                for kn in kernels:
                    variants += [{**pinned, kn: c} for c in fa.CANDIDATES[kn][arch] if c != pinned[kn]]
            for i, cfgs in enumerate(variants):
                with contextlib.ExitStack() as stack:
                    sink = stack.enter_context(_recording(fa, names))
                    saved = fa.pick_config, fa.target_arch
                    fa.pick_config = lambda kn, n_, d_, dt, a, cfgs=cfgs: cfgs[kn]  # noqa: E731
                    fa.target_arch = lambda device: arch  # noqa: E731
                    stack.callback(lambda saved=saved: (setattr(fa, "pick_config", saved[0]),
                                                        setattr(fa, "target_arch", saved[1])))
                    fa._flash_attn_fwd(q, k, v)
                    if backward:
                        fa._flash_attn_bwd(do, q, k, v, o, lse)
                for fn, args, kw in sink:
                    kn = op_of[fn.fn.__name__]
                    if i > 0 and (kn == "bwd_delta" or cfgs.get(kn) == pinned.get(kn)):
                        continue  # each non-pinned variant contributes only the kernel it changes
                    out.append(Launch(f"flash_attn_{kn}", label, str(dtype).removeprefix("torch."), arch,
                                      _cfg_label(kw), kn == "bwd_delta" or i == 0, fn, args, kw))
    return out


def _topk_launches(arch: str, full: bool) -> list[Launch]:
    import kernels.semantic_topk as st

    out: list[Launch] = []
    for label, h in (("teacher_b16", 12), ("teacher_l14", 16)):
        for dtype in DTYPES:
            q, k, _ = _qkv(197, h, 64, dtype)  # [1, H, 197, 64] views; R = 1 frame
            for seed in (5, torch.tensor(5)):
                name = f"{label}_{'tensor' if isinstance(seed, torch.Tensor) else 'int'}_seed"
                if not (full or _in_default(name, dtype)):
                    continue
                with _recording(st, ("_semantic_topk_kernel",)) as sink:
                    if isinstance(seed, torch.Tensor):
                        st._semantic_topk_op(q[:, :, 0], k, 40, seed, 0, 1)
                    else:
                        st._semantic_topk_op(q[:, :, 0], k, 40, None, seed, 1)
                for fn, args, kw in sink:
                    out.append(Launch("semantic_topk", name, str(dtype).removeprefix("torch."), arch,
                                      _cfg_label(kw), True, fn, args, kw))
    return out


def _gather_launches(arch: str, full: bool) -> list[Launch]:
    import kernels.token_gather as tg

    out: list[Launch] = []
    for label, c, ct in (("umt_b", 768, 512), ("umt_l", 1024, 768)):
        for dtype in DTYPES:
            if not (full or _in_default(label, dtype)):
                continue
            calls = {
                "tokens": lambda: tg._gather_rows(torch.empty(1, 1, 1568, c, dtype=dtype),
                                                  torch.zeros(1, 320, dtype=torch.int64),
                                                  torch.empty(1568, c)),
                "targets": lambda: tg._gather_rows(torch.empty(6, 1, 1568, ct, dtype=dtype),
                                                   torch.zeros(1, 320, dtype=torch.int64), None),
                "scatter": lambda: tg._scatter_rows(torch.empty(1, 1, 320, c, dtype=dtype),
                                                    torch.zeros(1, 320, dtype=torch.int64), 1568, True),
            }
            for what, call in calls.items():
                with _recording(tg, ("_rows_kernel",)) as sink:
                    call()
                for fn, args, kw in sink:
                    out.append(Launch(f"gather_rows_{what}", label, str(dtype).removeprefix("torch."), arch,
                                      _cfg_label(kw), True, fn, args, kw))
    return out


def capture_matrix(archs: tuple[str, ...] = ("sm90", "sm80"), full: bool = False) -> list[Launch]:
    """Every launch the wrappers make at the real shapes, per target. ``full``: every dtype at every shape, and every
    attention candidate config (:data:`kernels.flash_attention.CANDIDATES`); default: the pinned configs on the
    representative subset of :func:`_in_default`.

    Raises:
        RuntimeError: ``TRITON_INTERPRET=1`` is set in this process (kernels are interpreter objects).
    """
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("AOT compilation needs TRITON_INTERPRET unset; use run_matrix(), which starts a subprocess")
    out: list[Launch] = []
    for arch in archs:
        out += _attention_launches(arch, full) + _topk_launches(arch, full) + _gather_launches(arch, full)
    return out


# ------------------------------------------------------------------------------------------------ compile


def _ptxas() -> str:
    import triton

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    return str(bundled) if bundled.exists() else "ptxas"


def _ptxas_resources(ptx: str, gpu_name: str, cache_dir: Path) -> dict[str, int]:
    """Registers, spill bytes and stack from ``ptxas -v`` with Triton's flags, cached by the PTX's hash."""
    key = hashlib.sha256((gpu_name + ptx).encode()).hexdigest()
    cached = cache_dir / f"{key}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        res = subprocess.run([_ptxas(), "-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={gpu_name}",
                              str(src), "-o", str(Path(tmp) / "k.o")], capture_output=True, text=True, check=True)
    log = res.stderr + res.stdout
    regs = re.search(r"Used (\d+) registers", log)
    stack = re.search(r"(\d+) bytes stack frame", log)
    stores = re.search(r"(\d+) bytes spill stores", log)
    loads = re.search(r"(\d+) bytes spill loads", log)
    out = {"registers": int(regs.group(1)) if regs else -1, "stack_bytes": int(stack.group(1)) if stack else 0,
           "spill_stores": int(stores.group(1)) if stores else 0, "spill_loads": int(loads.group(1)) if loads else 0}
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp_file = cached.with_suffix(f".{os.getpid()}.tmp")
    tmp_file.write_text(json.dumps(out))
    tmp_file.replace(cached)
    return out


def occupancy(arch: str, registers: int, num_warps: int, shared: int) -> tuple[int, float]:
    """Theoretical blocks per SM and occupancy (resident warps / 64) from registers per thread (allocated in units
    of 256 per warp), warps per block and dynamic shared memory per block (+1 KiB the driver reserves per block),
    after the CUDA occupancy calculator."""
    regs_per_warp = -(-max(registers, 1) * 32 // 256) * 256
    by_regs = _REGS_PER_SM // (regs_per_warp * num_warps)
    by_threads = _THREADS_PER_SM // (32 * num_warps)
    by_smem = _SMEM_PER_SM[arch] // (shared + _SMEM_RESERVED_PER_BLOCK)
    blocks = max(0, min(by_regs, by_threads, by_smem, _BLOCKS_PER_SM))
    return blocks, blocks * num_warps / (_THREADS_PER_SM // 32)


def compile_launch(launch: Launch, cache_dir: Path) -> dict[str, Any]:
    """Compile one captured launch for its target as ``JITFunction.run`` would, and measure it.

    Returns:
        A row: op, shape, dtype, arch, config, pinned, ``registers``, ``spill_stores``, ``spill_loads``,
        ``stack_bytes``, ``shared`` (bytes), ``smem_limit``, ``wgmma`` (bool), ``mma`` (``wgmma``/``mma``/``none``),
        ``num_warps``, ``blocks_per_sm``, ``occupancy``, ``narrow_loads`` (scalar 1-/2-byte global loads in the PTX),
        ``compile_s``; or the same keys with ``error`` set.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = launch.fn
    target = GPUTarget("cuda", ARCHS[launch.arch], 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(launch.kwargs)
    bound_args, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization, options)
    row: dict[str, Any] = launch.meta()
    row.update(num_warps=options.num_warps, smem_limit=SMEM_PER_BLOCK[launch.arch])
    t0 = time.perf_counter()
    try:
        compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)
    except Exception as e:  # noqa: BLE001 - a compile failure is a result to report, not a crash
        row.update(error=f"{type(e).__name__}: {str(e)[-500:]}", compile_s=time.perf_counter() - t0)
        return row
    ptx = compiled.asm["ptx"]
    res = _ptxas_resources(ptx, "sm_90a" if launch.arch == "sm90" else "sm_80", cache_dir)
    shared = int(compiled.metadata.shared)
    blocks, occ = occupancy(launch.arch, res["registers"], options.num_warps, shared)
    mma = "wgmma" if "wgmma.mma_async" in ptx else ("mma" if "mma.sync" in ptx else "none")
    narrow = len(re.findall(r"ld\.global(?:\.[a-z]+)*\.[bsu](?:8|16)\b", ptx))  # scalar 1-/2-byte loads
    row.update(res, shared=shared, wgmma=mma == "wgmma", mma=mma, blocks_per_sm=blocks, occupancy=round(occ, 4),
               narrow_loads=narrow,
               compile_s=round(time.perf_counter() - t0, 3), error=None)
    return row


def _key(launch: Launch) -> str:
    """Identity of what a launch compiles to (rows with equal keys share one compile)."""
    spec = [launch.arch, launch.fn.fn.__qualname__, launch.kwargs]
    for a in launch.args:
        if isinstance(a, torch.Tensor):
            spec.append((str(a.dtype), a.data_ptr() % 16 == 0))
        elif isinstance(a, int) and not isinstance(a, bool):
            spec.append(("i", a == 1, a % 16 == 0, -2**31 <= a < 2**31))
        else:
            spec.append(repr(a))
    return repr(spec)


def _cache_dir() -> Path:
    import triton

    return Path(triton.knobs.cache.dir) / "umt_aot"


def _worker(payload: tuple[int, int, bool, tuple[str, ...]]) -> list[tuple[int, dict[str, Any]]]:
    index, jobs, full, archs = payload
    launches = capture_matrix(archs, full)
    cache_dir = _cache_dir()
    done: dict[str, dict[str, Any]] = {}
    rows = []
    for i, launch in enumerate(launches):
        key = _key(launch)
        if jobs > 1 and int(hashlib.sha1(key.encode()).hexdigest(), 16) % jobs != index:
            continue
        if key not in done:
            done[key] = compile_launch(launch, cache_dir)
        rows.append((i, {**done[key], **launch.meta()}))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="JSON file for the rows")
    p.add_argument("--full", action="store_true", help="every candidate config at every shape and dtype")
    p.add_argument("--archs", default="sm90,sm80")
    p.add_argument("--jobs", type=int, default=1, help="parallel compile processes")
    a = p.parse_args(argv)
    archs = tuple(a.archs.split(","))
    t0 = time.perf_counter()
    if a.jobs > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(a.jobs) as pool:
            parts = pool.map(_worker, [(i, a.jobs, a.full, archs) for i in range(a.jobs)])
        rows = [r for _, r in sorted(x for part in parts for x in part)]
    else:
        rows = [r for _, r in _worker((0, 1, a.full, archs))]
    Path(a.out).write_text(json.dumps({"rows": rows, "wall_s": round(time.perf_counter() - t0, 1)}, indent=1))
    return 0


def run_matrix(full: bool = False, archs: tuple[str, ...] = ("sm90", "sm80"), jobs: int = 2,
               timeout: float = 1800) -> dict[str, Any]:
    """Capture and compile the matrix in a fresh ``python -m kernels.aot`` process without ``TRITON_INTERPRET``.

    Returns:
        ``{"rows": [compile_launch rows], "wall_s": seconds}``.

    Raises:
        RuntimeError: the subprocess failed (its stderr tail is in the message).
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, "-m", "kernels.aot", "--out", str(out), "--archs", ",".join(archs), "--jobs", str(jobs)]
        res = subprocess.run(cmd + (["--full"] if full else []), capture_output=True, text=True, env=env, cwd=root,
                             timeout=timeout)
        if res.returncode != 0:
            raise RuntimeError(f"kernels.aot failed ({res.returncode}):\n{res.stderr[-4000:]}")
        return json.loads(out.read_text())


if __name__ == "__main__":
    sys.exit(main())
