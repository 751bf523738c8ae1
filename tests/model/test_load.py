"""umt.model.load: a backbone from every file kind the project writes loads into a student with equal weights; a
file of another architecture is refused with a message naming the mismatched keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

import umt.model  # noqa: F401 - registers the umt_vit_* names
from umt.model import UMTPretrain
from umt.model.load import BackboneLoadError, load_backbone, read_backbone
from umt.train.export import export_student


def _student(name: str = "umt_vit_pico_patch16_224", **kw):  # noqa: ANN202
    return timm.create_model(name, num_frames=2, img_size=32, align_layers=2, **kw)


def _equal_backbone(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    keys = [k for k in sa if not k.startswith(("head.", "fc_norm."))]
    return all(torch.equal(sa[k], sb[k]) for k in keys)


def test_stage1_checkpoint_loads_backbone_and_reports_heads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    pre = UMTPretrain(_student(), teacher_dim=16)
    path = tmp_path / "step_00000010.pt"
    torch.save({"model": pre.state_dict(), "task": "distill", "student": "umt_vit_pico_patch16_224",
                "config": {"data": {"num_frames": 2, "input_size": 32}}}, path)
    st = read_backbone(path)
    assert (st.kind, st.arch, st.num_frames, st.img_size) == ("distill", "umt_vit_pico_patch16_224", 2, 32)
    assert st.rest and all(k.startswith("heads.") for k in st.rest)
    torch.manual_seed(1)
    clf = _student(num_classes=5)
    head_before = clf.head.weight.clone()
    rep = load_backbone(clf, path)
    assert _equal_backbone(clf, pre.student)
    assert torch.equal(clf.head.weight, head_before)  # the fresh classifier is kept
    assert set(rep.missing) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    # the UMA heads and the pre-training final norm (the classifier has none, as official) are dropped
    assert all(k.startswith("heads.") for k in rep.dropped if k not in ("norm.weight", "norm.bias"))
    assert {"norm.weight", "norm.bias"} <= set(rep.dropped) and "norm.weight" not in clf.state_dict()


def test_export_and_finetuned_files(tmp_path: Path) -> None:
    torch.manual_seed(0)
    s = _student()
    out = export_student(s, tmp_path / "s.safetensors", {"arch": "umt_vit_pico_patch16_224", "num_frames": "2",
                                                         "img_size": "32"})
    st = read_backbone(out)
    assert (st.kind, st.num_frames) == ("export", 2)
    m = _student()
    load_backbone(m, out)
    assert _equal_backbone(m, s)
    # a fine-tuned classifier: unprefixed keys with a head; head=True resumes it, head=False drops it
    ft = _student(num_classes=3)
    torch.save({"model": ft.state_dict(), "task": "finetune"}, tmp_path / "best.pt")
    m2 = _student(num_classes=3)
    rep = load_backbone(m2, tmp_path / "best.pt", head=True)
    assert torch.equal(m2.head.weight, ft.head.weight) and not rep.missing
    m3 = _student(num_classes=3)
    rep3 = load_backbone(m3, tmp_path / "best.pt")
    assert "head.weight" in rep3.dropped and not torch.equal(m3.head.weight, ft.head.weight)
    # the fine-tuned classifier has no final norm (official): a pre-training-layout student keeps its own, reported
    m4 = _student()
    rep4 = load_backbone(m4, tmp_path / "best.pt")
    assert set(rep4.missing) == {"norm.weight", "norm.bias"} and torch.equal(m4.norm.weight, torch.ones(96))
    assert all(torch.equal(m4.state_dict()[k], v) for k, v in ft.state_dict().items() if k.startswith("blocks."))


def test_other_architecture_is_refused_naming_keys(tmp_path: Path) -> None:
    tiny = _student("umt_vit_tiny_patch16_224")  # width 192, depth 12
    torch.save({"model": {f"student.{k}": v for k, v in tiny.state_dict().items()}, "task": "distill"},
               tmp_path / "c.pt")
    with pytest.raises(BackboneLoadError, match=r"another architecture.*width 192, depth 12.*model \(width 96, "
                                                r"depth 4.*shape mismatches \(\S+: file \(\d+"):
        load_backbone(_student(), tmp_path / "c.pt")


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(BackboneLoadError, match="no such file"):
        read_backbone(tmp_path / "missing.pt")
    (tmp_path / "junk.bin").write_bytes(b"not a model at all")
    with pytest.raises(BackboneLoadError, match="neither a torch checkpoint nor a safetensors"):
        read_backbone(tmp_path / "junk.bin")
    torch.save({"model": {"x": torch.zeros(1)}}, tmp_path / "nobackbone.pt")
    with pytest.raises(BackboneLoadError, match="holds no student backbone"):
        read_backbone(tmp_path / "nobackbone.pt")
