"""Multi-GPU scaling: the gradient all-reduce, measured where there are several GPUs and modelled otherwise.

Model (ring all-reduce, as NCCL runs it within and across nodes; Patarasuk & Yuan 2009, NCCL's nccl-tests
"busbw" convention)::

    bytes sent per GPU per step = 2·(n − 1)/n × gradient bytes
    all-reduce time             = 2·(n − 1)/n × gradient bytes / bus bandwidth

Gradient bytes = trainable parameters × 4 (DDP keeps fp32 master parameters and gradients under bf16 autocast; the
frozen teacher has none). Parameters are counted from the architecture (:func:`trainable_params`): the student ViT
and its 6 alignment heads.

DDP overlaps the all-reduce with the backward pass. The exposed (non-overlapped) time is modelled as
``max(0, t_allreduce − t_backward)`` with ``t_backward = t_step × 2·student_forward / train_flops`` (the student's
backward is 2× its forward; the teacher has no backward). The no-overlap share ``t_ar / (t_step + t_ar)`` is the
worst case. Scaling efficiency = ``t_step / (t_step + exposed)``.

Assumed bus bandwidths (:data:`INTERCONNECTS`) are stated in every report; they are typical nccl-tests all-reduce
busbw figures, not measurements on this machine. With more than one GPU, :func:`measure_allreduce` measures the
busbw at 2, 4, …, n GPUs (NCCL) and the model is evaluated with the measured figure as well.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.common import BenchResult
from umt.flops import UMT_SPECS, UMTSpec, student_forward_flops, train_flops_per_clip

__all__ = [
    "INTERCONNECTS",
    "Interconnect",
    "allreduce_bytes_per_gpu",
    "allreduce_seconds",
    "measure_allreduce",
    "model_step",
    "run",
    "trainable_params",
]

log = logging.getLogger(__name__)

#: Per-GPU batch of the stage-1 recipe (docs/design.md, "Stage 1").
BATCH_PER_GPU = 64
#: Bytes per gradient element (fp32 gradients under bf16 autocast).
GRAD_BYTES = 4


@dataclass(frozen=True)
class Interconnect:
    """An assumed all-reduce bus bandwidth."""

    name: str
    busbw_gb_s: float  # GB/s (1e9 bytes/s), nccl-tests "busbw" convention
    source: str


#: Assumptions, stated in every report (GB/s = 1e9 bytes/s).
INTERCONNECTS: tuple[Interconnect, ...] = (
    Interconnect("NVLink3, 8×A100 node", 230.0, "DGX A100 nccl-tests all_reduce busbw ≈ 230 GB/s (NVLink3 300 GB/s per direction)"),
    Interconnect("NVLink4, 8×H100 node", 450.0, "DGX H100 nccl-tests all_reduce busbw ≈ 450 GB/s (NVLink4 450 GB/s per direction)"),
    Interconnect("IB HDR 200 Gb/s per GPU", 25.0, "multi-node, one 200 Gb/s HDR NIC per GPU: 25 GB/s line rate"),
    Interconnect("IB NDR 400 Gb/s per GPU", 50.0, "multi-node, one 400 Gb/s NDR NIC per GPU: 50 GB/s line rate"),
)


def trainable_params(spec: UMTSpec) -> int:
    """Trainable parameters of the stage-1 student and its alignment heads (the teacher is frozen).

    Patch embedding ``3·p²·d + d``; per block ``12·d²`` weights (qkv 3, proj 1, MLP 8) and ``12·d`` vectors
    (q and v biases 2d, proj bias d, fc1 bias 4d, fc2 bias d, two LayerNorms 4d); final LayerNorm ``2d``; each of the
    ``align_layers`` heads ``Linear(d → d_t)`` + ``LayerNorm(d_t)``: ``d·d_t + 3·d_t``. The position table is fixed.
    Example: UMT-B 88.0 M, UMT-L 307.8 M.
    """
    s = spec.student
    d, dt = s.width, spec.teacher_dim
    patch = 3 * s.patch**2 * d + d
    blocks = s.depth * (12 * d * d + 12 * d)
    heads = spec.align_layers * (d * dt + 3 * dt)
    return patch + blocks + 2 * d + heads


def allreduce_bytes_per_gpu(grad_bytes: float, n: int) -> float:
    """Bytes each GPU sends in a ring all-reduce of ``grad_bytes``: ``2·(n−1)/n × grad_bytes`` (0 for n = 1)."""
    if n < 1:
        raise ValueError("n must be >= 1")
    return 2.0 * (n - 1) / n * grad_bytes


def allreduce_seconds(grad_bytes: float, n: int, busbw_gb_s: float) -> float:
    """Ring all-reduce time in seconds at bus bandwidth ``busbw_gb_s`` (GB/s = 1e9 bytes/s)."""
    if busbw_gb_s <= 0:
        raise ValueError("busbw_gb_s must be positive")
    return allreduce_bytes_per_gpu(grad_bytes, n) / (busbw_gb_s * 1e9)


def model_step(model: str, clips_per_s: float, n: int, busbw_gb_s: float, batch: int = BATCH_PER_GPU) -> dict[str, float]:
    """Model one data-parallel step of ``model`` at a single-GPU rate ``clips_per_s`` on ``n`` GPUs.

    Returns:
        ``{"grad_mb", "step_s", "allreduce_s", "share_no_overlap", "exposed_s", "efficiency",
        "clips_per_s_total"}``; times in seconds, ``clips_per_s_total`` over all ``n`` GPUs.
    """
    spec = UMT_SPECS[model]
    grad = trainable_params(spec) * GRAD_BYTES
    step = batch / clips_per_s
    ar = allreduce_seconds(grad, n, busbw_gb_s)
    backward = step * 2.0 * student_forward_flops(spec) / train_flops_per_clip(spec)
    exposed = max(0.0, ar - backward)
    eff = step / (step + exposed)
    return {
        "grad_mb": grad / 1e6,
        "step_s": step,
        "allreduce_s": ar,
        "share_no_overlap": ar / (step + ar),
        "exposed_s": exposed,
        "efficiency": eff,
        "clips_per_s_total": n * clips_per_s * eff,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _allreduce_worker(rank: int, world: int, port: int, nbytes: int, repeat: int, backend: str, queue: Any) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        dev = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        buf = torch.randn(nbytes // 4, device=dev)  # fp32 gradients, not all zeros
        for _ in range(3):  # warm-up (NCCL sets up its rings on the first call)
            dist.all_reduce(buf)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        dist.barrier()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            dist.all_reduce(buf)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times.append(time.perf_counter() - t0)
        if rank == 0:
            queue.put(sorted(times)[len(times) // 2])
    finally:
        dist.destroy_process_group()


def measure_allreduce(world: int, nbytes: int, *, backend: str | None = None, repeat: int = 10) -> dict[str, float]:
    """Measure an all-reduce of ``nbytes`` fp32 bytes over ``world`` processes (one per GPU with NCCL, gloo on CPU).

    Returns:
        ``{"world", "seconds" (median), "algbw_gb_s" (bytes / time), "busbw_gb_s" (algbw × 2(n−1)/n)}``.

    Raises:
        RuntimeError: NCCL asked for with fewer than ``world`` GPUs.
    """
    import torch.multiprocessing as mp

    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl" and torch.cuda.device_count() < world:
        raise RuntimeError(f"NCCL all-reduce over {world} GPUs needs {world} GPUs, found {torch.cuda.device_count()}")
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_allreduce_worker, args=(world, _free_port(), nbytes, repeat, backend, queue), nprocs=world, start_method="spawn")
    seconds = float(queue.get())
    algbw = nbytes / seconds / 1e9
    return {"world": world, "seconds": seconds, "algbw_gb_s": algbw, "busbw_gb_s": algbw * 2 * (world - 1) / world}


def run(
    *,
    quick: bool = False,
    models: Sequence[str] = ("umt_b16", "umt_l16"),
    device: str | None = None,
    step_rates: dict[str, float] | None = None,
    gpus: Sequence[int] = (8, 16, 32),
    **kwargs: Any,
) -> BenchResult:
    """Scaling rows per model: the all-reduce model at each assumed interconnect and GPU count, at reference rates
    (the paper's 5.7 % MFU and 50 % MFU on an A100, docs/design.md) and at the measured rate where one is given.

    With more than one CUDA GPU the all-reduce busbw is also measured at 2, 4, …, n GPUs and fed to the model.

    Args:
        step_rates: measured single-GPU train-step clips/s per model (from the step benchmark), if any.
        gpus: GPU counts to model.

    Returns:
        A :class:`BenchResult` named ``"scaling"``.
    """
    from benchmarks.budget import A100_PEAK_TFLOPS

    rates: dict[str, dict[str, float]] = {}
    for m in models:
        flops = train_flops_per_clip(UMT_SPECS[m])
        rates[m] = {"A100 @5.7% MFU (paper)": 0.057 * A100_PEAK_TFLOPS * 1e12 / flops, "A100 @50% MFU": 0.5 * A100_PEAK_TFLOPS * 1e12 / flops}
        if step_rates and step_rates.get(m):
            rates[m]["measured"] = step_rates[m]
    links: list[Interconnect] = list(INTERCONNECTS)
    measured: list[dict[str, float]] = []
    ngpu = torch.cuda.device_count() if torch.cuda.is_available() and (device is None or "cuda" in str(device)) else 0
    if ngpu > 1:
        nbytes = trainable_params(UMT_SPECS[models[-1]]) * GRAD_BYTES
        world = 2
        while world <= ngpu:
            log.info("measuring NCCL all-reduce of %.0f MB over %d GPUs", nbytes / 1e6, world)
            measured.append(measure_allreduce(world, nbytes, repeat=5 if quick else 20))
            world *= 2
        best = measured[-1]
        links.append(Interconnect(f"measured ({best['world']} GPUs)", best["busbw_gb_s"], "nccl all_reduce on this machine"))
    rows: list[dict[str, Any]] = []
    for m in models:
        for rate_name, rate in rates[m].items():
            for link in links:
                for n in gpus:
                    if ("node" in link.name) != (n <= 8) and not link.name.startswith("measured"):
                        continue  # NVLink within one 8-GPU node; InfiniBand across nodes
                    r = model_step(m, rate, n, link.busbw_gb_s)
                    rows.append(
                        {
                            "model": m,
                            "single-GPU rate": rate_name,
                            "clips/s per GPU": rate,
                            "interconnect": link.name,
                            "GPUs": n,
                            "grad MB": r["grad_mb"],
                            "step s": r["step_s"],
                            "all-reduce s": r["allreduce_s"],
                            "share (no overlap)": r["share_no_overlap"],
                            "efficiency (overlap)": r["efficiency"],
                        }
                    )
    notes = [
        "Ring all-reduce: each GPU sends 2·(n−1)/n × gradient bytes; time = that / busbw. Gradients fp32 (4 B/param) "
        "of the student + heads; batch 64 per GPU.",
        "Efficiency assumes DDP overlaps the all-reduce with the student's backward (2× its forward FLOPs); "
        "'share (no overlap)' is the worst case.",
        *(f"Assumed {c.name}: {c.busbw_gb_s:g} GB/s — {c.source}." for c in INTERCONNECTS),
    ]
    if measured:
        notes.append("Measured NCCL busbw: " + ", ".join(f"{x['world']} GPUs {x['busbw_gb_s']:.0f} GB/s" for x in measured))
    else:
        notes.append("One GPU or none: the all-reduce is modelled, not measured.")
    return BenchResult(name="scaling", rows=rows, notes=notes, extra={"measured_allreduce": measured})
