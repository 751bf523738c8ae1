"""Multi-view classification (docs/evaluation.md), feature extraction and the probe CLIs, single process: hand-made
loaders that follow the data contract (views split across batches, padding rows ``index = -1``) and the real tiny
shard set. The two-rank runs are in ``tests/eval/test_eval_dist.py``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.eval_utils import C, LABELS, V, ContractLoader, TableModel, all_rows, expected_scores, tiny_classifier_checkpoint
from umt.eval.common import CountError, IndexAccumulator, eval_data_config
from umt.eval.metrics import classification_summary, confusion_matrix


def test_multiview_mean_softmax_hand_worked() -> None:
    loader = ContractLoader(all_rows(), batch_size=4)  # 15 rows → 4 batches, the last with one padding row
    res = evaluate(loader)
    # samples 0-3 right only through the view average, sample 4 wrong; padding (class 0 at logit 50) ignored
    assert res["top1"] == pytest.approx(80.0) and res["top5"] == pytest.approx(100.0)
    assert res["mean_class_acc"] == pytest.approx((0.5 + 1 + 1 + 1) / 4 * 100)  # class 0: samples 0 ✓, 4 ✗
    assert res["num_samples"] == 5 and res["num_views"] == V
    ref = classification_summary(expected_scores(), np.array(LABELS))
    assert {k: res[k] for k in ("top1", "top5", "mean_class_acc")} == pytest.approx(
        {k: ref[k] for k in ("top1", "top5", "mean_class_acc")})


def test_accumulator_sums_views_and_drops_padding() -> None:
    acc = IndexAccumulator(5, C, V, torch.device("cpu"))
    model = TableModel()
    for batch in ContractLoader(all_rows(1), batch_size=4).epoch_iter():
        acc.add(model(batch["video"]).softmax(-1), batch["index"], batch["label"], batch["view"])
    acc.reduce()
    acc.check()
    sums, labels = acc.totals()
    np.testing.assert_allclose(sums.numpy() / V, expected_scores(), rtol=1e-6)
    assert labels.tolist() == LABELS


@pytest.mark.parametrize("edit, match", [
    (lambda rows: rows[1:], "never seen|not counted exactly once"),  # a view missing
    (lambda rows: rows + rows[:1], "not counted exactly once"),  # a view twice (e.g. an unpadded duplicate)
    (lambda rows: rows + [(2, V)], "view outside"),  # a view id the loader should not produce
    (lambda rows: [r for r in rows if r[0] != 3], "1 never seen"),  # a sample dropped (drop_last)
])
def test_count_errors(edit, match: str) -> None:  # noqa: ANN001
    with pytest.raises(CountError, match=match):
        evaluate(ContractLoader(edit(all_rows()), batch_size=4))


def test_rows_of_one_sample_with_two_labels_are_an_error() -> None:
    class TwoLabels(ContractLoader):
        def epoch_iter(self, epoch: int = 0, start_batch: int = 0):  # noqa: ANN201
            for b in super().epoch_iter(epoch, start_batch):
                b["label"] = torch.where((b["index"] == 2) & (b["view"] == 1), 1, b["label"])
                yield b

    with pytest.raises(CountError, match="different labels"):
        evaluate(TwoLabels(all_rows(), batch_size=4))


def evaluate(loader, **kw):  # noqa: ANN001, ANN201
    from umt.eval.classify import evaluate_classification

    return evaluate_classification(TableModel(), loader, num_classes=C, device="cpu", **kw)


def test_report_files_and_no_overwrite(tmp_path: Path) -> None:
    from PIL import Image

    names = ["walk", "run", "jump", "swim"]
    res = evaluate(ContractLoader(all_rows(), 4), out_dir=tmp_path, class_names=names, meta={"checkpoint": "x.pt"})
    doc = json.loads((tmp_path / "classify.json").read_text())
    assert doc["top1"] == pytest.approx(res["top1"]) and doc["meta"]["checkpoint"] == "x.pt"
    pred = expected_scores().argmax(1)
    assert doc["confusion"] == confusion_matrix(pred, LABELS, C).tolist()
    assert [r["accuracy"] for r in doc["per_class"]] == pytest.approx([50.0, 100.0, 100.0, 100.0])
    md = (tmp_path / "classify.md").read_text()
    assert "| 0 | walk | 2 | 1 | 50.00 |" in md and "classify_confusion.png" in md
    img = np.asarray(Image.open(tmp_path / "classify_confusion.png").convert("RGB"))
    colours = {tuple(c) for c in img.reshape(-1, 3)}
    assert (8, 48, 107) in colours and (132, 152, 181) in colours  # the cells of fraction 1 and 0.5
    # overwrite=False (the CLI without --overwrite) refuses before touching the loader; True replaces
    loader = ContractLoader(all_rows(), 4)
    with pytest.raises(FileExistsError, match="overwrite"):
        evaluate(loader, out_dir=tmp_path, overwrite=False)
    assert loader.batches == 0
    evaluate(loader, out_dir=tmp_path, overwrite=True)
    # the default (a trainer's periodic + final evaluations) replaces a report of ours, never someone else's file
    evaluate(ContractLoader(all_rows(), 4), out_dir=tmp_path)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "classify.json").write_text('{"mine": true}')
    with pytest.raises(FileExistsError, match="classify.json"):
        evaluate(ContractLoader(all_rows(), 4), out_dir=foreign)
    assert (foreign / "classify.json").read_text() == '{"mine": true}'
    (foreign / "classify.json").unlink()
    (foreign / "classify_confusion.png").write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match="classify_confusion.png"):
        evaluate(ContractLoader(all_rows(), 4), out_dir=foreign)


# ----------------------------------------------------------------------------------- real shards: classify CLI
@pytest.fixture(scope="module")
def shards(good_shard_set: Path) -> Path:
    return good_shard_set  # 8 clips of 3 classes (cat, dog, eel), 3 per shard


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_classifier_checkpoint(tmp_path_factory.mktemp("ckpt") / "ft.pt")


LOADER_ARGS = ["--backend", "reference", "--num-workers", "0", "--device", "cpu"]


def _per_sample(model, shards: Path, fn) -> dict[int, tuple[int, torch.Tensor]]:  # noqa: ANN001
    """index → (label, fn(model, video)) from a batch-1 evaluation loader (the reference for both tests)."""
    from umt.data import build_loader

    loader = build_loader(eval_data_config(shards, batch_size=1, num_frames=2, input_size=32, backend="reference",
                                           num_workers=0))
    out = {}
    with torch.no_grad():
        for b in loader.epoch_iter(0):
            out[int(b["index"][0])] = (int(b["label"][0]), fn(model, b["video"])[0])
    loader.close()
    return out


def test_classify_cli_on_real_shards(shards: Path, ckpt: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture) -> None:
    from umt.eval.classify import build_classifier, main

    out = tmp_path / "report"
    assert main(["--checkpoint", str(ckpt), "--shards", str(shards), "--views", "1x1", "--batch-size", "2",
                 "--out", str(out), *LOADER_ARGS]) == 0
    doc = json.loads((out / "classify.json").read_text())
    model, _ = build_classifier(ckpt)
    model.eval()
    ref = _per_sample(model, shards, lambda m, v: m(v).softmax(-1))
    assert sorted(ref) == list(range(8)) and doc["num_samples"] == 8
    scores = np.stack([ref[i][1].numpy() for i in range(8)])
    labels = np.array([ref[i][0] for i in range(8)])
    s = classification_summary(scores, labels)
    assert doc["top1"] == pytest.approx(s["top1"]) and doc["mean_class_acc"] == pytest.approx(s["mean_class_acc"])
    assert doc["confusion"] == s["confusion"].tolist() and doc["classes"] == ["cat", "dog", "eel"]
    assert doc["meta"]["views"] == "1x1" and len(doc["meta"]["sha256"]) == 64
    # a report it did not create in this run: refused; --overwrite replaces it
    argv = ["--checkpoint", str(ckpt), "--shards", str(shards), "--views", "1x1", "--batch-size", "4", "--out",
            str(out), *LOADER_ARGS]
    assert main(argv) == 2 and "already holds a classify report" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    # not a fine-tuned checkpoint: a one-line error
    plain = tmp_path / "plain.pt"
    torch.save({"model": {k: v for k, v in torch.load(ckpt)["model"].items() if not k.startswith(("head", "fc_"))},
                "task": "finetune", "student": "umt_vit_pico_patch16_224", "config": {}}, plain)
    assert main(["--checkpoint", str(plain), "--shards", str(shards), *LOADER_ARGS]) == 2
    assert "no classification head" in capsys.readouterr().err


def test_classify_cli_multiview_counts_every_view(shards: Path, ckpt: Path, tmp_path: Path) -> None:
    from umt.eval.classify import main

    assert main(["--checkpoint", str(ckpt), "--shards", str(shards), "--views", "2x3", "--batch-size", "5",
                 "--out", str(tmp_path), *LOADER_ARGS]) == 0  # 48 rows in batches of 5: padding on the last
    doc = json.loads((tmp_path / "classify.json").read_text())
    assert doc["num_samples"] == 8 and doc["num_views"] == 6 and sum(r["samples"] for r in doc["per_class"]) == 8


# ------------------------------------------------------------------------------------------- features + probes
def test_features_one_row_per_sample_in_index_order(shards: Path, ckpt: Path) -> None:
    from umt.eval.features import build_backbone, features_for

    backbone, record = build_backbone(ckpt)  # the classifier file: its head is dropped
    assert not hasattr(backbone.head, "weight") and record["arch"] == "umt_vit_pico_patch16_224"
    bs = 3  # 8 samples: a padded last batch
    feats, labels, index = features_for(backbone, shards, batch_size=bs, device="cpu", backend="reference",
                                        num_workers=0)
    assert feats.shape == (8, 96) and feats.dtype == torch.float32 and index.tolist() == list(range(8))
    ref = _per_sample(backbone, shards, lambda m, v: m.forward_features(v).mean(1))
    torch.testing.assert_close(feats, torch.stack([ref[i][1] for i in range(8)]), rtol=1e-5, atol=1e-5)
    assert labels.tolist() == [ref[i][0] for i in range(8)]


def test_features_and_probe_clis(shards: Path, ckpt: Path, tmp_path: Path) -> None:
    from umt.eval.features import load_features
    from umt.eval.features import main as features_main
    from umt.eval.probe import knn_classify, linear_probe
    from umt.eval.probe import main as probe_main

    f1, f2 = tmp_path / "ckpt.safetensors", tmp_path / "rand.npz"
    common = ["--shards", str(shards), "--batch-size", "2", *LOADER_ARGS]
    assert features_main(["--checkpoint", str(ckpt), "--out", str(f1), *common]) == 0
    assert features_main(["--checkpoint", str(ckpt), "--out", str(f1), *common]) == 2  # exists
    assert features_main(["--random", "umt_vit_pico_patch16_224", "--num-frames", "2", "--input-size", "32",
                          "--out", str(f2), *common]) == 0
    a, b = load_features(f1), load_features(f2)
    assert a.feats.shape == b.feats.shape == (8, 96) and (a.labels == b.labels).all()
    assert a.metadata["arch"] == "umt_vit_pico_patch16_224" and a.metadata["num_frames"] == "2"
    assert len(a.metadata["sha256"]) == 64 and a.metadata["shards"] == str(shards.resolve())
    assert json.loads(a.metadata["classes"]) == ["cat", "dog", "eel"] and b.metadata["checkpoint"] == "random"
    assert not np.allclose(a.feats, b.feats)
    out = tmp_path / "knn.json"
    assert probe_main(["knn", str(f1), str(f1), "--k", "3", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    want = knn_classify(a.feats, a.labels, a.feats, a.labels, k=3, num_classes=3)
    assert got["knn_top1"] == pytest.approx(want["knn_top1"]) and got["knn_top5"] == pytest.approx(100.0)
    assert probe_main(["knn", str(f1), str(f1), "--json", str(out)]) == 2  # --json exists
    assert probe_main(["knn", str(f1), str(f2)]) == 2  # two different backbones
    out = tmp_path / "linear.json"
    assert probe_main(["linear", str(f2), str(f2), "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["linear_top1"] == pytest.approx(linear_probe(b.feats, b.labels, b.feats, b.labels)["linear_top1"])


def test_build_classifier_rebuilds_the_interpolated_position_table(tmp_path: Path) -> None:
    """A classifier fine-tuned at 4 frames from a 2-frame pre-training is evaluated with the table it was trained with
    (built at 2 frames, interpolated), not a fresh 4-frame sin-cos table."""
    import timm

    import umt.model  # noqa: F401 - registers umt_vit_* (the test must not rely on an earlier test's import)
    from umt.eval.classify import build_classifier

    ft = timm.create_model("umt_vit_pico_patch16_224", num_classes=3, num_frames=4, img_size=32,
                           pretrain_num_frames=2, pretrain_img_size=32)
    fresh = timm.create_model("umt_vit_pico_patch16_224", num_classes=3, num_frames=4, img_size=32)
    assert not torch.allclose(ft.pos_embed, fresh.pos_embed)
    torch.save({"model": ft.state_dict(), "task": "finetune", "student": "umt_vit_pico_patch16_224",
                "config": {"data": {"num_frames": 4, "input_size": 32}, "finetune": {"pretrain_num_frames": 2,
                                                                                      "pretrain_img_size": 32}}},
               tmp_path / "best.pt")
    model, _ = build_classifier(tmp_path / "best.pt")
    assert torch.equal(model.pos_embed, ft.pos_embed) and torch.equal(model.head.weight, ft.head.weight)
