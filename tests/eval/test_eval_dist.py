"""Two gloo ranks: the multi-view evaluation counts each sample once across the ranks and
equals a single-process run; features on a real tiny shard set and the classify/features CLIs give what one process
gives.

Run as a script by torchrun (``python -m torch.distributed.run --nproc-per-node=2 tests/eval/test_eval_dist.py ARGS``)
for the worker side: one launch serves every check (each launch costs seconds on 2 cores).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.eval_utils import C, ContractLoader, TableModel, all_rows, tiny_classifier_checkpoint
from tests.train_utils import ROOT, torchrun

LOADER_ARGS = ["--backend", "reference", "--num-workers", "0", "--device", "cpu"]


@pytest.mark.dist
def test_two_ranks_equal_one_process(tmp_path: Path, good_shard_set: Path) -> None:
    import torch

    from umt.eval.classify import evaluate_classification
    from umt.eval.classify import main as classify_main
    from umt.eval.features import build_backbone, features_for, load_features
    from umt.eval.features import main as features_main

    shards = good_shard_set
    ckpt = tiny_classifier_checkpoint(tmp_path / "ft.pt")
    bs = 3  # 8 samples over 2 ranks: padded last batches
    res = torchrun([__file__, str(tmp_path), str(shards), str(ckpt), str(bs)], timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]

    # 1. hand-made contract loaders: rank 1 ran one batch more, views of some samples on both ranks, padding rows
    single = evaluate_classification(TableModel(), ContractLoader(all_rows(), 4), num_classes=C, device="cpu")
    for rank in range(2):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert r["batches"] == [2, 3][rank]
        assert r["result"] == pytest.approx(single) and r["result"]["top1"] == pytest.approx(80.0)
        assert r["missing_view_error"] and "not counted exactly once" in r["missing_view_error"]

    # 2. features over the real shards: 2 ranks == 1 process, one row per sample in index order
    backbone, _ = build_backbone(ckpt)
    f1, y1, i1 = features_for(backbone, shards, batch_size=bs, device="cpu", backend="reference", num_workers=0)
    two = np.load(tmp_path / "feats_2ranks.npz")
    assert two["index"].tolist() == i1.tolist() == list(range(8)) and two["labels"].tolist() == y1.tolist()
    np.testing.assert_allclose(two["feats"], f1.numpy(), rtol=1e-5, atol=1e-5)

    # 3. the CLIs under torchrun wrote what one process writes
    one = tmp_path / "one"
    assert classify_main(["--checkpoint", str(ckpt), "--shards", str(shards), "--views", "1x1", "--batch-size",
                          str(bs), "--out", str(one), *LOADER_ARGS]) == 0
    a = json.loads((one / "classify.json").read_text())
    b = json.loads((tmp_path / "cli2" / "classify.json").read_text())
    assert b["meta"]["world_size"] == 2 and a["confusion"] == b["confusion"]
    assert {k: b[k] for k in ("top1", "top5", "mean_class_acc")} == pytest.approx(
        {k: a[k] for k in ("top1", "top5", "mean_class_acc")})
    assert features_main(["--checkpoint", str(ckpt), "--shards", str(shards), "--batch-size", str(bs), "--out",
                          str(tmp_path / "one.safetensors"), *LOADER_ARGS]) == 0
    fa, fb = load_features(tmp_path / "one.safetensors"), load_features(tmp_path / "cli2.safetensors")
    np.testing.assert_allclose(fa.feats, fb.feats, rtol=1e-5, atol=1e-5)
    assert torch.equal(torch.from_numpy(fa.labels), torch.from_numpy(fb.labels))


def _worker(out: Path, shards: str, ckpt: str, bs: int) -> None:
    import torch.distributed as dist

    from tests.eval_utils import rank_rows
    from umt.eval.classify import evaluate_classification
    from umt.eval.classify import main as classify_main
    from umt.eval.common import CountError
    from umt.eval.features import build_backbone, features_for
    from umt.eval.features import main as features_main

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    rows, batch = rank_rows(rank)
    loader = ContractLoader(rows, batch)
    result = evaluate_classification(TableModel(), loader, num_classes=C, device="cpu")
    # rank 0 leaves out one of its views: every rank must raise (the check runs on the reduced tables)
    err = None
    try:
        evaluate_classification(TableModel(), ContractLoader(rows[1:] if rank == 0 else rows, batch), num_classes=C,
                                device="cpu")
    except CountError as e:
        err = str(e)
    (out / f"rank{rank}.json").write_text(json.dumps({"result": result, "batches": loader.batches,
                                                      "missing_view_error": err}))

    backbone, _ = build_backbone(ckpt)
    feats, labels, index = features_for(backbone, shards, batch_size=bs, device="cpu", backend="reference",
                                        num_workers=0)
    if rank == 0:
        np.savez(out / "feats_2ranks.npz", feats=feats.numpy(), labels=labels.numpy(), index=index.numpy())
    # the CLIs inside the existing group (init_distributed joins it); rank 0 writes
    rc = classify_main(["--checkpoint", ckpt, "--shards", shards, "--views", "1x1", "--batch-size", str(bs),
                        "--out", str(out / "cli2"), *LOADER_ARGS])
    rc |= features_main(["--checkpoint", ckpt, "--shards", shards, "--batch-size", str(bs), "--out",
                         str(out / "cli2.safetensors"), *LOADER_ARGS])
    assert rc == 0, rc
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    import umt  # noqa: F401

    _worker(Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]))
