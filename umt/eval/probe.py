"""Frozen-backbone probes on extracted features (docs/evaluation.md): ``python -m umt.eval knn`` and ``linear``.

* **k-NN** (:func:`knn_predict`; Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance
  Discrimination", CVPR 2018, as DINO's ``knn_classifier``, Caron et al. 2021): features L2-normalised, cosine
  similarity of each query to every bank sample, the k most similar vote for their class with weight
  ``exp(sim / T)``; the class scores are the vote sums. k = 20, T = 0.07 (DINO's defaults; ``eval.knn_k``,
  ``eval.knn_temperature``). Queries are processed in chunks, so memory is ``chunk × N_bank``, not
  ``N_query × N_bank``.
* **Linear probe** (:func:`linear_probe`): scikit-learn's ``StandardScaler`` then ``LogisticRegression`` (L2,
  L-BFGS, multinomial) with ``C = 1.0`` (scikit-learn's default regularisation; raise it for large banks, sweep
  it on held-out data for a paper number, as CLIP's linear-probe protocol does) and ``max_iter = 1000``.

Usage::

    python -m umt.eval knn feats/train.safetensors feats/val.safetensors [--k 20] [--temperature 0.07] [--json OUT]
    python -m umt.eval linear feats/train.safetensors feats/val.safetensors [--C 1.0] [--json OUT]

Accuracies are in percent.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from umt.eval.common import check_free
from umt.eval.metrics import as_numpy, check_labels, classification_summary
from umt.fileio import atomic_write

__all__ = ["knn_predict", "knn_classify", "linear_probe", "knn_probe", "knn_probe_checkpoints", "format_knn_table",
           "MULTI_COMMAND", "main"]

log = logging.getLogger(__name__)

#: this module serves two subcommands (``knn``, ``linear``): :mod:`umt.eval.__main__` passes the name first
MULTI_COMMAND = True

LINEAR_C = 1.0
LINEAR_MAX_ITER = 1000


def _tensor(x: Any, dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return t.to(device=device if device is not None else t.device, dtype=dtype)


def knn_predict(train_feats: Any, train_labels: Any, test_feats: Any, *, num_classes: int, k: int = 20,
                temperature: float = 0.07, chunk_size: int = 1024,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Weighted k-NN class scores (see the module docstring).

    Args:
        train_feats: the bank, ``[N_b, C]`` (any scale: rows are L2-normalised here).
        train_labels: int ``[N_b]`` in ``[0, num_classes)``.
        test_feats: queries, ``[N_q, C]``.
        num_classes: K, the number of classes.
        k: neighbours per query (capped at N_b).
        temperature: T of the vote weights ``exp(sim / T)``.
        chunk_size: queries per similarity block.
        device: where to compute (default: the bank's).

    Returns:
        float32 ``[N_q, K]`` on the CPU: per class, the summed weights of the query's neighbours of that class.

    Raises:
        ValueError: widths differ, labels outside ``[0, num_classes)``, an empty bank, ``k < 1`` or ``T <= 0``.
    """
    if k < 1 or temperature <= 0 or chunk_size < 1:
        raise ValueError(f"k and chunk_size must be >= 1 and temperature > 0, got {k}, {chunk_size}, {temperature}")
    bank = _tensor(train_feats, torch.float32)
    dev = torch.device(device) if device is not None else bank.device
    bank = F.normalize(bank.to(dev), dim=1)  # [N_b, C]
    queries = F.normalize(_tensor(test_feats, torch.float32, dev), dim=1)  # [N_q, C]
    if bank.ndim != 2 or queries.ndim != 2 or bank.shape[1] != queries.shape[1] or bank.shape[0] == 0:
        raise ValueError(f"bank [N_b, C] and queries [N_q, C] of one width expected, got {tuple(bank.shape)} and "
                         f"{tuple(queries.shape)}")
    labels = torch.from_numpy(check_labels(as_numpy(train_labels), num_classes)).to(dev)  # [N_b]
    if labels.shape[0] != bank.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels for a bank of {bank.shape[0]}")
    k = min(k, bank.shape[0])
    out = torch.empty(queries.shape[0], num_classes, dtype=torch.float32)
    for s in range(0, queries.shape[0], chunk_size):
        sim = queries[s:s + chunk_size] @ bank.T  # [b, N_b] cosine similarities
        top_sim, top_idx = sim.topk(k, dim=1)  # [b, k]
        weights = (top_sim / temperature).exp()  # [b, k]
        votes = torch.zeros(sim.shape[0], num_classes, device=dev).scatter_add_(1, labels[top_idx], weights)
        out[s:s + chunk_size] = votes.cpu()  # [b, K]
    return out


def _num_classes(*label_sets: Any, classes: Any = None) -> int:
    hi = max(int(as_numpy(y).max(initial=-1)) for y in label_sets) + 1
    return max(hi, len(classes or []))


def knn_classify(train_feats: Any, train_labels: Any, test_feats: Any, test_labels: Any, *, k: int = 20,
                 temperature: float = 0.07, num_classes: int | None = None, **kw: Any) -> dict[str, float]:
    """:func:`knn_predict` scored against ``test_labels``.

    Returns:
        ``{"knn_top1", "knn_top5", "knn_mean_class_acc"}`` in percent.

    Raises:
        ValueError: as :func:`knn_predict`, or unlabelled (-1) queries.
    """
    c = num_classes or _num_classes(train_labels, test_labels)
    scores = knn_predict(train_feats, train_labels, test_feats, num_classes=c, k=k, temperature=temperature, **kw)
    s = classification_summary(scores.numpy(), check_labels(as_numpy(test_labels), c))
    return {"knn_top1": s["top1"], "knn_top5": s["top5"], "knn_mean_class_acc": s["mean_class_acc"]}


def linear_probe(train_feats: Any, train_labels: Any, test_feats: Any, test_labels: Any, *, C: float = LINEAR_C,
                 max_iter: int = LINEAR_MAX_ITER, num_classes: int | None = None, seed: int = 0) -> dict[str, float]:
    """Logistic regression on standardised features (see the module docstring), trained on the bank, scored on the
    queries.

    Returns:
        ``{"linear_top1", "linear_top5", "linear_mean_class_acc", "linear_train_top1"}`` in percent (classes absent
        from the bank score 0 for every query).

    Raises:
        ValueError: labels outside ``[0, num_classes)`` or fewer than 2 classes in the bank.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    c = num_classes or _num_classes(train_labels, test_labels)
    x_tr, x_te = as_numpy(train_feats).astype(np.float64), as_numpy(test_feats).astype(np.float64)
    y_tr, y_te = check_labels(as_numpy(train_labels), c), check_labels(as_numpy(test_labels), c)
    if len(np.unique(y_tr)) < 2:
        raise ValueError("the linear probe needs at least 2 classes in the training features")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
    clf.fit(x_tr, y_tr)
    seen = clf.classes_.astype(np.int64)

    def scores(x: np.ndarray) -> np.ndarray:
        full = np.zeros((x.shape[0], c))
        full[:, seen] = clf.predict_proba(x)  # [N, classes seen in training]
        return full

    s = classification_summary(scores(x_te), y_te)
    train_top1 = classification_summary(scores(x_tr), y_tr, ks=(1,))["top1"]
    return {"linear_top1": s["top1"], "linear_top5": s["top5"], "linear_mean_class_acc": s["mean_class_acc"],
            "linear_train_top1": train_top1}


def knn_probe(backbone: torch.nn.Module, train_shards: str | Path, test_shards: str | Path, *, batch_size: int,
              device: torch.device | str, k: int = 20, temperature: float = 0.07,
              amp_dtype: torch.dtype | None = None, base: Any = None, **data_overrides: Any) -> dict[str, float]:
    """Embed ``train_shards`` (the bank) and ``test_shards`` with ``backbone`` (split over the ranks of the default
    process group; :func:`umt.eval.features.features_for`), then k-NN from the bank (on every rank, the same
    result).

    Returns:
        ``{"knn_top1", "knn_top5", "knn_mean_class_acc"}`` in percent.

    Raises:
        ValueError: unlabelled samples in either set.
        umt.eval.common.CountError: a loader that drops or repeats samples.
    """
    from umt.data.format import read_manifest
    from umt.eval.features import features_for

    kw = dict(batch_size=batch_size, device=device, amp_dtype=amp_dtype, base=base, **data_overrides)
    f_tr, y_tr, _ = features_for(backbone, train_shards, **kw)
    f_te, y_te, _ = features_for(backbone, test_shards, **kw)
    c = _num_classes(y_tr, y_te, classes=read_manifest(train_shards).get("classes"))
    return knn_classify(f_tr, y_tr, f_te, y_te, k=k, temperature=temperature, num_classes=c, device=device)


def knn_probe_checkpoints(checkpoints: Mapping[str, str | Path | None], train_shards: str | Path,
                          test_shards: str | Path, *, arch: str | None = None, num_frames: int | None = None,
                          input_size: int | None = None, batch_size: int = 16, k: int = 20,
                          temperature: float = 0.07, device: torch.device | str = "cpu", seed: int = 0,
                          **data_overrides: Any) -> dict[str, dict[str, float]]:
    """k-NN probe of several backbones on the same bank and queries, for a side-by-side line (the fine-tuning
    demo: a random backbone against the stage-1 checkpoint). Runs in this process (or on every rank of the
    current process group).

    Args:
        checkpoints: label → checkpoint/export path, or None for a randomly initialised backbone (seeded with
            ``seed``) of ``arch`` (default: the first checkpoint's architecture) at the first checkpoint's frames
            and size unless given.
        data_overrides: evaluation DataConfig fields (``num_workers``, ``backend``, ``mean``, ``std``).

    Returns:
        label → ``{"knn_top1", "knn_top5", "knn_mean_class_acc"}`` (percent) plus ``arch``, ``num_frames``,
        ``input_size`` and ``checkpoint``; in the order of ``checkpoints``.

    Raises:
        ValueError: only random entries and no ``arch``.
        umt.model.load.BackboneLoadError: an unreadable checkpoint.
    """
    from umt.eval.features import build_backbone

    results: dict[str, dict[str, Any]] = {}
    ref = next((p for p in checkpoints.values() if p is not None), None)
    if ref is not None and (arch is None or num_frames is None or input_size is None):
        from umt.model.load import read_backbone

        st = read_backbone(ref)
        arch, num_frames, input_size = arch or st.arch, num_frames or st.num_frames, input_size or st.img_size
    for label, path in checkpoints.items():
        model, record = build_backbone(path, arch=arch, num_frames=num_frames, input_size=input_size, seed=seed)
        norm = {k_: tuple(record[k_]) for k_ in ("mean", "std") if k_ in record and k_ not in data_overrides}
        res = knn_probe(model.to(device), train_shards, test_shards, batch_size=batch_size, device=device, k=k,
                        temperature=temperature, **norm, **data_overrides)
        results[label] = {**res, "arch": record["arch"], "num_frames": record["num_frames"],
                          "input_size": record["input_size"], "checkpoint": record["checkpoint"]}
    return results


def format_knn_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """One line: ``k-NN top-1: random backbone 20.0 %, stage-1 checkpoint 45.0 %`` (from
    :func:`knn_probe_checkpoints`)."""
    return "k-NN top-1: " + ", ".join(f"{label} {r['knn_top1']:.1f} %" for label, r in results.items())


# ---------------------------------------------------------------------------------------------------------- CLI
def _load_pair(train: str, test: str, allow_mismatch: bool) -> tuple[Any, Any, int]:
    from umt.eval.features import load_features

    a, b = load_features(train), load_features(test)
    if a.feats.shape[1] != b.feats.shape[1]:
        raise ValueError(f"{train} has {a.feats.shape[1]} features per sample, {test} {b.feats.shape[1]}")
    for key in ("sha256", "arch", "num_frames", "input_size", "checkpoint"):
        if key in a.metadata and key in b.metadata and a.metadata[key] != b.metadata[key] and not allow_mismatch:
            raise ValueError(f"the two files come from different backbones ({key}: {a.metadata[key]!r} vs "
                             f"{b.metadata[key]!r}); pass --allow-mismatch to probe anyway")
    for fs in (a, b):
        if (fs.labels < 0).any():
            raise ValueError(f"{fs.path}: {int((fs.labels < 0).sum())} unlabelled samples (label -1)")
    classes = json.loads(a.metadata["classes"]) if "classes" in a.metadata else []
    return a, b, _num_classes(a.labels, b.labels, classes=classes)


def main(argv: list[str] | None = None) -> int:
    """``knn|linear TRAIN_FEATS TEST_FEATS [...]``; returns 0, or 2 on bad input or an existing ``--json``."""
    argv = list(argv or [])
    if not argv or argv[0] not in ("knn", "linear"):
        print("usage: python -m umt.eval {knn,linear} TRAIN_FEATS TEST_FEATS [...]", file=sys.stderr)
        return 2
    cmd, rest = argv[0], argv[1:]
    p = argparse.ArgumentParser(prog=f"python -m umt.eval {cmd}",
                                description=("k-NN probe (cosine, temperature-weighted votes)" if cmd == "knn" else
                                             "linear probe (standardised features, logistic regression)"))
    p.add_argument("train_feats", help="bank / training features (umt.eval features output)")
    p.add_argument("test_feats", help="query / test features")
    if cmd == "knn":
        p.add_argument("--k", type=int, default=20, help="neighbours (DINO: 20)")
        p.add_argument("--temperature", type=float, default=0.07, help="vote temperature T (DINO: 0.07)")
    else:
        p.add_argument("--C", type=float, default=LINEAR_C, help="inverse L2 strength of LogisticRegression")
        p.add_argument("--max-iter", type=int, default=LINEAR_MAX_ITER, help="L-BFGS iterations")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json")
    p.add_argument("--allow-mismatch", action="store_true", help="probe files from different backbones")
    args = p.parse_args(rest)
    try:
        if args.json:
            check_free([args.json], args.overwrite)
        a, b, c = _load_pair(args.train_feats, args.test_feats, args.allow_mismatch)
        if cmd == "knn":
            res: dict[str, Any] = knn_classify(a.feats, a.labels, b.feats, b.labels, k=args.k,
                                               temperature=args.temperature, num_classes=c)
            res.update(k=args.k, temperature=args.temperature)
        else:
            res = linear_probe(a.feats, a.labels, b.feats, b.labels, C=args.C, max_iter=args.max_iter,
                               num_classes=c)
            res.update(C=args.C, max_iter=args.max_iter)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"umt.eval {cmd}: error: {e}", file=sys.stderr)
        return 2
    res.update(train=args.train_feats, test=args.test_feats, num_train=int(a.feats.shape[0]),
               num_test=int(b.feats.shape[0]), num_classes=c)
    top = res[f"{cmd}_top1"]
    print(f"{cmd} probe: top-1 {top:.2f} %, top-5 {res[f'{cmd}_top5']:.2f} %, mean class "
          f"{res[f'{cmd}_mean_class_acc']:.2f} % ({res['num_train']} train → {res['num_test']} test, {c} classes)")
    if args.json:
        atomic_write(args.json, json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
