"""The k-NN and linear probes (:mod:`umt.eval.probe`) on hand-worked feature files: which neighbours vote and with
what weight, which options reach the probe, how the class count is found, which file pairs are refused, and what
the shard-level probes hand on to the loader and the backbone builder."""

from __future__ import annotations

import json
import math
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from umt.eval import probe
from umt.eval.features import save_features

# Query e0 (label 0). Bank: one class-0 row at cosine 0.9, two class-1 rows at cosine 0.8 (unit vectors).
#   k = 1:            class 0 (the nearest row)                                   → top-1 100 %
#   k = 3, T = 0.07:  class 0 e^(0.9/0.07) = 3.8e5 > class 1 2·e^(0.8/0.07) = 1.8e5 → top-1 100 %
#   k = 3, T = 10:    class 0 e^0.09 = 1.09 < class 1 2·e^0.08 = 2.17              → top-1 0 %
S9, S8 = math.sqrt(1 - 0.81), math.sqrt(1 - 0.64)
BANK = np.array([[0.9, S9, 0.0], [0.8, 0.0, S8], [0.8, -S8, 0.0]], np.float32)
BANK_LABELS = np.array([0, 1, 1])
QUERY = np.array([[1.0, 0.0, 0.0]], np.float32)


def _files(tmp_path: Path, *, train_meta: dict | None = None, test_meta: dict | None = None,
           test_labels: list[int] | None = None, test_feats: np.ndarray | None = None) -> tuple[str, str]:
    a, b = tmp_path / "train.safetensors", tmp_path / "test.npz"
    save_features(a, BANK, BANK_LABELS, np.arange(3), train_meta or {})
    q = QUERY if test_feats is None else test_feats
    save_features(b, q, test_labels or [0] * q.shape[0], np.arange(q.shape[0]), test_meta or {})
    return str(a), str(b)


def _run(args: list[str], out: Path) -> dict:
    assert probe.main([*args, "--json", str(out)]) == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("opts, top1", [(["--k", "1", "--temperature", "10"], 100.0),
                                        (["--k", "3"], 100.0),
                                        (["--k", "3", "--temperature", "10"], 0.0),
                                        ([], 100.0),  # k = 20 capped at the bank's 3 rows, T = 0.07
                                        (["--temperature", "10"], 0.0)])
def test_knn_cli_k_and_temperature(tmp_path: Path, opts: list[str], top1: float) -> None:
    a, b = _files(tmp_path)
    res = _run(["knn", a, b, *opts], tmp_path / "r.json")
    assert res["knn_top1"] == top1 and res["knn_top5"] == 100.0
    want_k = int(opts[opts.index("--k") + 1]) if "--k" in opts else 20
    want_t = float(opts[opts.index("--temperature") + 1]) if "--temperature" in opts else 0.07
    assert (res["k"], res["temperature"]) == (want_k, want_t)
    assert (res["num_train"], res["num_test"], res["num_classes"]) == (3, 1, 2)
    assert (res["train"], res["test"]) == (a, b)


def test_knn_cli_prints_one_summary_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = _files(tmp_path)
    assert probe.main(["knn", a, b, "--k", "3", "--temperature", "10"]) == 0
    assert capsys.readouterr().out.strip() == ("knn probe: top-1 0.00 %, top-5 100.00 %, mean class 0.00 % "
                                               "(3 train → 1 test, 2 classes)")


def test_class_count_from_both_label_sets_and_the_bank_class_list(tmp_path: Path) -> None:
    # a query label (3) that no bank row has widens the class table; the bank file's class list wins when longer
    a, b = _files(tmp_path / "x", test_labels=[3])
    assert _run(["knn", a, b], tmp_path / "1.json")["num_classes"] == 4
    a, b = _files(tmp_path / "y", train_meta={"classes": ["a", "b", "c", "d", "e", "f"]}, test_labels=[1])
    assert _run(["knn", a, b], tmp_path / "2.json")["num_classes"] == 6
    # the query file's class list is not read
    a, b = _files(tmp_path / "z", test_meta={"classes": ["a", "b", "c", "d", "e", "f"]})
    assert _run(["knn", a, b], tmp_path / "3.json")["num_classes"] == 2


@pytest.mark.parametrize("key", ["sha256", "arch", "num_frames", "input_size", "checkpoint"])
def test_files_of_two_backbones_are_refused_unless_allowed(tmp_path: Path, key: str,
                                                           capsys: pytest.CaptureFixture) -> None:
    a, b = _files(tmp_path / "diff", train_meta={key: "one"}, test_meta={key: "two"})
    assert probe.main(["knn", a, b]) == 2
    assert f"different backbones ({key}: 'one' vs 'two')" in capsys.readouterr().err
    assert probe.main(["knn", a, b, "--allow-mismatch"]) == 0
    # recorded in one file only, or the same in both: nothing to compare against
    a, b = _files(tmp_path / "one", train_meta={key: "one"})
    assert probe.main(["knn", a, b]) == 0
    a, b = _files(tmp_path / "same", train_meta={key: "one", "arch": "x"}, test_meta={key: "one", "arch": "x"})
    assert probe.main(["knn", a, b]) == 0


def test_refused_pairs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = _files(tmp_path / "w", test_feats=np.ones((1, 4), np.float32))
    assert probe.main(["knn", a, b]) == 2
    assert "has 3 features per sample" in capsys.readouterr().err
    a, b = _files(tmp_path / "u", test_labels=[-1])
    assert probe.main(["knn", a, b]) == 2
    assert "1 unlabelled samples" in capsys.readouterr().err
    assert probe.main(["linear", a, str(tmp_path / "missing.npz")]) == 2
    assert probe.main([]) == 2 and probe.main(["svm", a, b]) == 2


def test_cli_options_reach_the_probes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, dict] = {}

    def fake(name: str):  # noqa: ANN202
        def f(*args, **kw):  # noqa: ANN002, ANN003, ANN202
            seen[name] = dict(kw, nargs=len(args))
            return {f"{name}_top1": 1.0, f"{name}_top5": 2.0, f"{name}_mean_class_acc": 3.0}
        return f

    monkeypatch.setattr(probe, "knn_classify", fake("knn"))
    monkeypatch.setattr(probe, "linear_probe", fake("linear"))
    a, b = _files(tmp_path, test_labels=[4])
    assert probe.main(["knn", a, b, "--k", "7", "--temperature", "0.5"]) == 0
    assert seen["knn"] == {"k": 7, "temperature": 0.5, "num_classes": 5, "nargs": 4}
    assert probe.main(["linear", a, b, "--C", "0.25", "--max-iter", "33"]) == 0
    assert seen["linear"] == {"C": 0.25, "max_iter": 33, "num_classes": 5, "nargs": 4}
    res = _run(["linear", a, b, "--C", "2"], tmp_path / "l.json")
    assert (res["C"], res["max_iter"]) == (2.0, probe.LINEAR_MAX_ITER) == (2.0, 1000)


def test_linear_probe_separable_by_hand(tmp_path: Path) -> None:
    a, b = tmp_path / "tr.npz", tmp_path / "te.npz"
    save_features(a, [[-2.0], [-1.0], [1.0], [2.0]], [0, 0, 1, 1], np.arange(4), {})
    save_features(b, [[-3.0], [3.0], [0.5]], [0, 1, 1], np.arange(3), {})
    res = _run(["linear", str(a), str(b)], tmp_path / "r.json")
    assert res["linear_top1"] == 100.0 and res["linear_train_top1"] == 100.0 and res["num_classes"] == 2
    with pytest.raises(ValueError, match="at least 2 classes"):
        probe.linear_probe([[0.0], [1.0]], [1, 1], [[0.0]], [1])


def test_knn_predict_chunks_cap_and_arguments() -> None:
    bank, labels = torch.from_numpy(BANK), torch.from_numpy(BANK_LABELS)
    queries = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    full = probe.knn_predict(bank, labels, queries, num_classes=2, k=3, temperature=0.5)
    for chunk in (1, 2):
        torch.testing.assert_close(probe.knn_predict(bank, labels, queries, num_classes=2, k=3, temperature=0.5,
                                                     chunk_size=chunk, device="cpu"), full, rtol=0, atol=0)
    torch.testing.assert_close(probe.knn_predict(bank, labels, queries, num_classes=2, k=50, temperature=0.5), full)
    # a bank of unnormalised rows votes as its unit rows
    torch.testing.assert_close(probe.knn_predict(bank * 7, labels, queries * 3, num_classes=2, k=3,
                                                 temperature=0.5), full, rtol=1e-6, atol=0)
    want = torch.tensor([math.exp(0.9 / 0.5), 2 * math.exp(0.8 / 0.5)])
    torch.testing.assert_close(full[0], want, rtol=1e-5, atol=0)
    assert full.dtype == torch.float32 and full.shape == (3, 2)
    for kw in ({"k": 0}, {"chunk_size": 0}, {"temperature": 0.0}):
        with pytest.raises(ValueError, match="must be >= 1 and temperature > 0"):
            probe.knn_predict(bank, labels, queries, num_classes=2, **kw)
    with pytest.raises(ValueError, match="one width"):
        probe.knn_predict(bank, labels, queries[:, :2], num_classes=2)
    with pytest.raises(ValueError, match="one width"):
        probe.knn_predict(bank[:0], labels[:0], queries, num_classes=2)
    with pytest.raises(ValueError, match="2 labels for a bank of 3"):
        probe.knn_predict(bank, labels[:2], queries, num_classes=2)


def test_knn_classify_counts_classes_from_both_sets() -> None:
    res = probe.knn_classify(BANK, BANK_LABELS, QUERY, [2], k=1)  # label 2 only among the queries: 3 classes
    assert res == {"knn_top1": 0.0, "knn_top5": 100.0, "knn_mean_class_acc": 0.0}
    res = probe.knn_classify(BANK, BANK_LABELS, QUERY, [0], k=3, temperature=10.0)
    assert res == {"knn_top1": 0.0, "knn_top5": 100.0, "knn_mean_class_acc": 0.0}


# ------------------------------------------------------------------------------- shard-level probes (plumbing)
def test_knn_probe_embeds_both_sets_and_counts_the_manifest_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    import umt.data.format
    import umt.eval.features

    calls = []

    def features_for(backbone, shards, **kw):  # noqa: ANN001, ANN003, ANN202
        calls.append((backbone, shards, kw))
        if shards == "train":
            return torch.from_numpy(BANK), torch.from_numpy(BANK_LABELS), torch.arange(3)
        return torch.from_numpy(QUERY), torch.tensor([0]), torch.arange(1)

    monkeypatch.setattr(umt.eval.features, "features_for", features_for)
    monkeypatch.setattr(umt.data.format, "read_manifest", lambda p: {"classes": ["a", "b", "c", "d"]}
                        if p == "train" else {})
    seen = {}
    real = probe.knn_classify

    def knn_classify(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        seen.update(kw)
        return real(*args, **kw)

    monkeypatch.setattr(probe, "knn_classify", knn_classify)
    model, base = object(), object()
    res = probe.knn_probe(model, "train", "test", batch_size=5, device="cpu", k=3, temperature=10.0,
                          amp_dtype=torch.bfloat16, base=base, num_workers=0)
    assert res == {"knn_top1": 0.0, "knn_top5": 100.0, "knn_mean_class_acc": 0.0}
    assert seen == {"k": 3, "temperature": 10.0, "num_classes": 4, "device": "cpu"}
    kw = {"batch_size": 5, "device": "cpu", "amp_dtype": torch.bfloat16, "base": base, "num_workers": 0}
    assert calls == [(model, "train", kw), (model, "test", kw)]
    res = probe.knn_probe(model, "train", "test", batch_size=1, device="cpu", k=1)
    assert res["knn_top1"] == 100.0


def test_knn_probe_checkpoints_builds_each_backbone_and_keeps_the_order(monkeypatch: pytest.MonkeyPatch) -> None:
    import umt.eval.features
    import umt.model.load

    built, probed = [], []

    class Model:
        def __init__(self, label: str) -> None:
            self.label, self.device = label, None

        def to(self, device):  # noqa: ANN001, ANN202
            self.device = device
            return self

    def build_backbone(path, *, arch, num_frames, input_size, seed):  # noqa: ANN001, ANN202
        built.append((path, arch, num_frames, input_size, seed))
        rec = {"arch": arch, "num_frames": num_frames, "input_size": input_size,
               "checkpoint": str(path) if path else "random"}
        if path is not None:
            rec.update(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
        return Model(str(path)), rec

    def knn_probe(model, train, test, **kw):  # noqa: ANN001, ANN003, ANN202
        probed.append((model.label, model.device, train, test, kw))
        return {"knn_top1": 10.0 * len(probed), "knn_top5": 100.0, "knn_mean_class_acc": 5.0}

    monkeypatch.setattr(umt.eval.features, "build_backbone", build_backbone)
    reads = []

    def read_backbone(p):  # noqa: ANN001, ANN202
        reads.append(p)
        return types.SimpleNamespace(arch="arch_of_file", num_frames=4, img_size=64)

    monkeypatch.setattr(umt.model.load, "read_backbone", read_backbone)
    monkeypatch.setattr(probe, "knn_probe", knn_probe)
    res = probe.knn_probe_checkpoints({"random": None, "trained": "ck.pt"}, "tr", "te", batch_size=3, k=5,
                                      temperature=0.2, device="cpu", seed=9, backend="reference")
    assert list(res) == ["random", "trained"]
    # sizes read from the first real checkpoint, for the random backbone too
    assert built == [(None, "arch_of_file", 4, 64, 9), ("ck.pt", "arch_of_file", 4, 64, 9)]
    assert res["random"] == {"knn_top1": 10.0, "knn_top5": 100.0, "knn_mean_class_acc": 5.0, "arch": "arch_of_file",
                             "num_frames": 4, "input_size": 64, "checkpoint": "random"}
    assert res["trained"]["knn_top1"] == 20.0 and res["trained"]["checkpoint"] == "ck.pt"
    common = {"batch_size": 3, "device": "cpu", "k": 5, "temperature": 0.2, "backend": "reference"}
    assert probed[0] == ("None", "cpu", "tr", "te", common)
    # the checkpoint's own normalisation, as tuples
    assert probed[1] == ("ck.pt", "cpu", "tr", "te", {**common, "mean": (0.5,) * 3, "std": (0.25,) * 3})
    # given sizes win; a caller's normalisation beats the checkpoint's
    built.clear(), probed.clear()
    probe.knn_probe_checkpoints({"trained": "ck.pt"}, "tr", "te", arch="a", num_frames=2, input_size=32,
                                mean=(0.1, 0.1, 0.1))
    assert built == [("ck.pt", "a", 2, 32, 0)]
    assert probed[0][4] == {"batch_size": 16, "device": "cpu", "k": 20, "temperature": 0.07,
                            "mean": (0.1, 0.1, 0.1), "std": (0.25,) * 3}
    # only random entries: the caller's sizes, no file read
    built.clear()
    probe.knn_probe_checkpoints({"random": None}, "tr", "te", arch="b", num_frames=8, input_size=224)
    assert built == [(None, "b", 8, 224, 0)]
    reads.clear(), built.clear()
    probe.knn_probe_checkpoints({"random": None}, "tr", "te")  # nothing to read: the builder is told nothing
    assert built == [(None, None, None, None, 0)] and reads == []
    # the file is read only for what the caller left open, and only then
    for given, want in [({"arch": "a", "num_frames": 2, "input_size": 32}, ("a", 2, 32)),
                        ({"num_frames": 2, "input_size": 32}, ("arch_of_file", 2, 32)),
                        ({"arch": "a", "input_size": 32}, ("a", 4, 32)),
                        ({"arch": "a", "num_frames": 2}, ("a", 2, 64))]:
        reads.clear(), built.clear()
        probe.knn_probe_checkpoints({"trained": "ck.pt"}, "tr", "te", **given)
        assert built == [("ck.pt", *want, 0)] and reads == ([] if len(given) == 3 else ["ck.pt"])


def test_format_knn_table() -> None:
    line = probe.format_knn_table({"random backbone": {"knn_top1": 20.0}, "stage-1": {"knn_top1": 45.26}})
    assert line == "k-NN top-1: random backbone 20.0 %, stage-1 45.3 %"


def test_defaults_are_dinos_k20_t007() -> None:
    # T = 0.07 picks class 0 (above); T = 1.07 would pick class 1 (e^0.84 = 2.3 < 2·e^0.75 = 4.2)
    assert probe.knn_predict(BANK, BANK_LABELS, QUERY, num_classes=2)[0].argmax() == 0
    assert probe.knn_classify(BANK, BANK_LABELS, QUERY, [0])["knn_top1"] == 100.0
    # k = 20: of 20 class-0 rows at cosine 0.5 and one class-1 row at cosine 0.1, the class-1 row gets no vote
    s5, s1 = math.sqrt(1 - 0.25), math.sqrt(1 - 0.01)
    bank = np.array([[0.5, s5]] * 20 + [[0.1, s1]], np.float32)
    labels = np.array([0] * 20 + [1])
    scores = probe.knn_predict(bank, labels, [[1.0, 0.0]], num_classes=2)
    assert scores[0, 1] == 0.0 and scores[0, 0] == pytest.approx(20 * math.exp(0.5 / 0.07), rel=1e-5)
    assert probe.knn_classify(bank, labels, [[1.0, 0.0]], [1], chunk_size=1)["knn_top1"] == 0.0
    with pytest.raises(ValueError, match="chunk_size"):  # keyword arguments reach knn_predict
        probe.knn_classify(bank, labels, [[1.0, 0.0]], [1], chunk_size=0)


def test_knn_inputs_of_any_float_dtype() -> None:
    want = probe.knn_predict(BANK, BANK_LABELS, QUERY, num_classes=2, k=3, temperature=0.5)
    got = probe.knn_predict(BANK.astype(np.float64), BANK_LABELS, QUERY, num_classes=2, k=3, temperature=0.5)
    torch.testing.assert_close(got, want)
    bank = torch.from_numpy(BANK).to(torch.bfloat16).requires_grad_()  # a tensor stays a tensor (numpy has no bf16)
    got = probe.knn_predict(bank, BANK_LABELS, torch.from_numpy(QUERY).double(), num_classes=2, k=3, temperature=0.5)
    torch.testing.assert_close(got, want, rtol=2e-2, atol=0)  # bf16 keeps 8 bits of the cosines


def test_linear_probe_standardises_regularises_and_counts_classes() -> None:
    # one feature spread over 1e-4 and 3 class-0 rows to 1 class-1 row: without standardising (or with a strong
    # penalty) the L2 term flattens the weight and the intercept calls every query class 0
    x, y, xt, yt = [[-3e-4], [-2e-4], [-1e-4], [2e-4]], [0, 0, 0, 1], [[-3e-4], [3e-4]], [0, 1]
    assert probe.linear_probe(x, y, xt, yt)["linear_top1"] == 100.0
    assert probe.linear_probe(x, y, xt, yt, C=1e-6)["linear_top1"] == 50.0
    from sklearn.exceptions import ConvergenceWarning

    with pytest.warns(ConvergenceWarning):
        probe.linear_probe(x, y, xt, yt, max_iter=1)
    # a class only among the queries, or only in the bank, widens the table (no label out of range)
    assert probe.linear_probe(x, y, xt, [0, 2])["linear_top1"] == 50.0
    assert probe.linear_probe(x, [0, 0, 2, 1], xt, yt)["linear_top5"] == 100.0


def test_knn_probe_defaults_and_class_count_from_both_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    import umt.data.format
    import umt.eval.features

    labels = {"train": torch.tensor([0, 1, 1]), "test": torch.tensor([0])}
    monkeypatch.setattr(umt.eval.features, "features_for",
                        lambda m, s, **kw: (torch.from_numpy(BANK if s == "train" else QUERY), labels[s],
                                            torch.arange(len(labels[s]))))
    monkeypatch.setattr(umt.data.format, "read_manifest", lambda p: {})
    seen = {}
    monkeypatch.setattr(probe, "knn_classify", lambda *a, **kw: seen.update(kw) or {})
    probe.knn_probe(object(), "train", "test", batch_size=1, device="cpu")
    assert (seen["k"], seen["temperature"], seen["num_classes"]) == (20, 0.07, 2)
    labels["test"] = torch.tensor([4])
    probe.knn_probe(object(), "train", "test", batch_size=1, device="cpu")
    assert seen["num_classes"] == 5
    labels["train"], labels["test"] = torch.tensor([0, 6, 1]), torch.tensor([0])
    probe.knn_probe(object(), "train", "test", batch_size=1, device="cpu")
    assert seen["num_classes"] == 7


def test_cli_usage_help_overwrite_and_json_layout(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert probe.main([]) == 2
    assert capsys.readouterr().err.strip() == "usage: python -m umt.eval {knn,linear} TRAIN_FEATS TEST_FEATS [...]"
    with pytest.raises(SystemExit):
        probe.main(["knn", "--help"])
    assert capsys.readouterr().out.startswith("usage: python -m umt.eval knn ")
    a, b = tmp_path / "tr.npz", tmp_path / "te.npz"
    save_features(a, [[-2.0], [-1.0], [1.0], [2.0]], [0, 0, 1, 1], np.arange(4), {})
    save_features(b, [[-3.0], [3.0]], [0, 1], np.arange(2), {})
    out = tmp_path / "r.json"
    out.write_text("old")
    assert probe.main(["knn", str(a), str(b), "--json", str(out)]) == 2 and out.read_text() == "old"
    assert probe.main(["knn", str(a), str(b), "--json", str(out), "--overwrite", "--k", "1"]) == 0
    text = out.read_text()
    assert text.startswith('{\n "knn_top1": 100.0,\n') and text.endswith("}\n")
    assert (json.loads(text)["num_train"], json.loads(text)["num_test"]) == (4, 2)


def test_knn_predict_shapes_beyond_the_easy_case() -> None:
    # more queries than feature channels, one per chunk: every row is filled
    bank, labels = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32), np.array([0, 1])
    queries = np.array([[1.0, 0.1], [0.1, 1.0], [2.0, 0.0], [0.0, 3.0], [1.0, 0.2]], np.float32)
    got = probe.knn_predict(bank, labels, queries, num_classes=2, k=1, chunk_size=1)
    assert got.argmax(1).tolist() == [0, 1, 0, 1, 0] and (got.max(1).values > 1).all()
    with pytest.raises(ValueError, match="one width"):  # a 3-D bank is refused, not broadcast
        probe.knn_predict(BANK[None], BANK_LABELS, QUERY, num_classes=2)


def test_class_count_with_an_empty_label_set() -> None:
    assert probe._num_classes(np.array([], np.int64), np.array([0])) == 1
    assert probe._num_classes(np.array([], np.int64), np.array([2])) == 3
    assert probe._num_classes(np.array([], np.int64), classes=["a", "b"]) == 2


def test_default_k_is_20() -> None:
    # 10 class-0 rows at cosine 0.5 and 10 class-1 rows at 0.4999: class 0 ahead by 10·e^(0.5/0.07)·(1 - e^(-1e-4/0.07))
    # ≈ 18; a 21st row (class 1, cosine 0.49, weight e^7 ≈ 1097) would turn it
    rows = [0.5] * 10 + [0.4999] * 10 + [0.49]
    bank = np.array([[c, math.sqrt(1 - c * c)] for c in rows], np.float32)
    labels = np.array([0] * 10 + [1] * 11)
    assert probe.knn_classify(bank, labels, [[1.0, 0.0]], [0])["knn_top1"] == 100.0
    assert probe.knn_classify(bank, labels, [[1.0, 0.0]], [0], k=21)["knn_top1"] == 0.0
