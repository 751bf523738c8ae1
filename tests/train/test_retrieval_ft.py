"""Fine-tuned retrieval (task ``video_text`` without a teacher, official ``multi_modality/exp/finetuning/ret_*``):
no teacher is built, each loss's gradient reaches the parameters it should, the per-frame VTC equals a hand-worked
value, an official stage-2 file initialises the task, paragraph captions are joined as the official
``preprocess_para_retrieval_data``, and multi-video ground truth is ranked as the official ``itm_eval`` (hand-worked
cases)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from transformers import BertConfig

import umt.model  # noqa: F401 - registers umt_vit_*
from tests.train_utils import QUIET_LOG, read_metrics, tiny_cfg
from umt.model.heads import UMAHeads
from umt.model.text import BertTextEncoder
from umt.model.vision_text import UMTVisionText
from umt.train.runtime import Runtime

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CPU = Runtime(0, 1, 0, torch.device("cpu"), None)
#: the demo_retft recipe at the trainer tests' tiny size (2 frames of 32², synthetic pairs)
RETFT = ["synthetic_data=true", "synthetic_samples=4", "data.batch_size=2", "data.num_frames=2",
         "data.input_size=32", "model.teacher_image_size=32", "model.init_from=", "text.max_len=10",
         "text.embed_dim=32", "text.fusion_layer=2", *QUIET_LOG]


@pytest.fixture
def no_teacher_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building or loading a CLIP teacher fails the test."""
    from umt.model import teacher

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("a teacher was built")

    monkeypatch.setattr(teacher.CLIPTeacher, "__init__", refuse)
    monkeypatch.setattr(teacher, "load_clip_weights", refuse)


@pytest.mark.parametrize("uta,kind,ratio,image_ratio,expected", [
    (0.0, "semantic", 0.0, 0.0, False),  # the official ret_* configs
    (1.0, "semantic", 0.0, 0.0, True),  # UTA needs the teacher's targets
    (0.0, "semantic", 0.8, 0.0, True),  # the semantic mask needs its attention
    (0.0, "semantic", 0.0, 0.5, True),
    (0.0, "tube", 0.8, 0.5, False),  # a tube mask does not
    (0.0, "random", 0.5, 0.0, False),
])
def test_needs_teacher_table(uta: float, kind: str, ratio: float, image_ratio: float, expected: bool) -> None:
    from umt.train.video_text.task import needs_teacher

    cfg = tiny_cfg(f"text.uta_weight={uta}", f"mask.kind={kind}", f"mask.ratio={ratio}",
                   f"mask.image_ratio={image_ratio}", "text.vtc_weight=1", recipe="demo_retft", base=RETFT)
    assert needs_teacher(cfg) is expected


def test_teacher_free_task_builds_no_teacher(tiny_bert: str, no_teacher_allowed: None) -> None:
    from umt.train.task import build_task

    cfg = tiny_cfg(f"text.encoder={tiny_bert}", recipe="demo_retft", base=RETFT)
    task = build_task(cfg, CPU)
    assert task.teacher is None and task.teacher_free
    # UTA and MLM are off: their own parameters are frozen, the tied word embeddings stay trainable
    m = task.model
    assert not any(p.requires_grad for p in m.heads.parameters())
    assert not m.mlm_head.predictions.transform.dense.weight.requires_grad
    assert m.text.embeddings.word_embeddings.weight.requires_grad
    assert task.record()["teacher_free"] and task.flops({"index": torch.zeros(2)}) is None


@pytest.mark.slow
def test_teacher_free_run_through_the_trainer(tmp_path: Path, tiny_bert: str, no_teacher_allowed: None) -> None:
    from umt.train.trainer import Trainer

    # no evaluation set: the recipe's default (the sample shards) exists only after the demo has built it
    tr = Trainer(tiny_cfg(f"text.encoder={tiny_bert}", "optim.max_steps=2", "eval.shards=", "eval.every_epochs=0",
                          recipe="demo_retft", base=RETFT), tmp_path / "run")
    try:
        tr.fit()
    finally:
        tr.close()
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:  # total = VTC + VTM; UTA and MLM are exactly 0
        assert r["loss_uta"] == 0.0 and r["loss_mlm"] == 0.0
        assert r["loss"] == pytest.approx(r["loss_vtc"] + r["loss_vtm"], rel=1e-5)
    assert json.loads((tmp_path / "run" / "config.json").read_text())  # written without a teacher record


def test_the_stage2_recipe_still_builds_its_teacher(tiny_bert: str, no_teacher_allowed: None) -> None:
    """The guard above is live: a run with UTA does try to build the teacher."""
    from umt.train.task import build_task

    cfg = tiny_cfg(f"text.encoder={tiny_bert}", "text.uta_weight=1", recipe="demo_retft", base=RETFT)
    with pytest.raises(AssertionError, match="a teacher was built"):
        build_task(cfg, CPU)


# ----------------------------------------------------------------------------------------------- gradients
SPECIAL = {"cls": 1, "sep": 2, "pad": 0, "mask": 3}


def _tiny_model() -> UMTVisionText:
    torch.manual_seed(0)
    student = timm.create_model("umt_vit_pico_patch16_224", num_frames=2, img_size=32, align_layers=2)
    text = BertTextEncoder(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=64), 2, 96, SPECIAL)
    return UMTVisionText(student, UMAHeads(96, 48, 2), text, 24, mlm_prob=0.5)


def _batch(b: int = 4, length: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    video = torch.randn(b, 3, 2, 32, 32, generator=g)
    ids = torch.randint(4, 100, (b, length), generator=g)
    ids[:, 0], ids[:, -1] = SPECIAL["cls"], SPECIAL["sep"]
    return video, ids, torch.ones(b, length, dtype=torch.long), torch.arange(b)


def _grads(loss: torch.Tensor, model: UMTVisionText, names: list[str]) -> dict[str, bool]:
    params = dict(model.named_parameters())
    got = torch.autograd.grad(loss, [params[n] for n in names], retain_graph=True, allow_unused=True)
    return {n: g is not None and bool(g.abs().sum() > 0) for n, g in zip(names, got)}


NAMES = ["student.patch_embed.proj.weight", "student.blocks.3.attn.qkv.weight", "vision_proj.weight", "pool_norm.weight",
         "text_proj.weight", "temp", "text.layers.0.attention.self.query.weight",
         "text.layers.2.crossattention.self.key.weight", "itm_head.weight", "heads.proj.0.weight",
         "text.mlm_head.predictions.transform.dense.weight", "text.embeddings.word_embeddings.weight"]


def test_each_loss_reaches_the_parameters_it_should() -> None:
    """Unmasked (fine-tuned retrieval) forward: VTC trains both encoders, projections and the temperature, not the
    match head or the fusion layers; VTM trains the match head, the fusion layers and both encoders, not the
    projections (its negatives are drawn without gradient). With a mask and targets, UTA trains the heads and the
    student only; MLM the MLM head, the fusion layers and the word embeddings."""
    model = _tiny_model()
    video, ids, mask, index = _batch()
    out = model(video, None, ids, mask, index, None, seed=3, mlm=False)
    assert out["uta"].item() == 0.0 and out["mlm"].item() == 0.0 and not out["uta"].requires_grad
    vtc = _grads(out["vtc"], model, NAMES)
    assert vtc == {**{n: True for n in NAMES}, "text.layers.2.crossattention.self.key.weight": False,
                   "itm_head.weight": False, "heads.proj.0.weight": False,
                   "text.mlm_head.predictions.transform.dense.weight": False}
    vtm = _grads(out["vtm"], model, NAMES)
    assert vtm == {**{n: True for n in NAMES}, "vision_proj.weight": False, "pool_norm.weight": False,
                   "text_proj.weight": False, "temp": False, "heads.proj.0.weight": False,
                   "text.mlm_head.predictions.transform.dense.weight": False}

    idx = torch.arange(0, 8, 2).expand(4, -1).contiguous()  # 4 of the 8 tokens
    target = torch.nn.functional.normalize(torch.randn(2, 4, 4, 48), dim=-1)
    out = model(video, idx, ids, mask, index, target, seed=3, mlm=True)
    uta = _grads(out["uta"], model, NAMES)
    assert uta == {n: n in ("student.patch_embed.proj.weight", "student.blocks.3.attn.qkv.weight",
                            "heads.proj.0.weight") for n in NAMES}
    mlm = _grads(out["mlm"], model, NAMES)
    assert mlm["text.mlm_head.predictions.transform.dense.weight"] and mlm["text.embeddings.word_embeddings.weight"]
    assert mlm["text.layers.2.crossattention.self.key.weight"] and mlm["student.blocks.3.attn.qkv.weight"]
    assert not mlm["itm_head.weight"] and not mlm["vision_proj.weight"] and not mlm["heads.proj.0.weight"]


def test_per_frame_vtc_is_the_mean_of_the_frames_cosines() -> None:
    """Official ``get_sim`` with ``keep_temporal=True``, worked by hand: video 0's frames (1,0), (0,1); video 1's
    (1,0), (1,0); captions (1,0), (0,1); temperature 1 → similarities [[.5, .5], [1, 0]]."""
    from umt.losses import vtc_loss

    v = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]])  # [2, T=2, D=2]
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v2t = (math.log(2) + math.log(1 + math.e)) / 2  # rows [.5, .5] and [1, 0], targets 0 and 1
    t2v = math.log(1 + math.exp(0.5))  # columns [.5, 1] (target 0) and [.5, 0] (target 1)
    assert vtc_loss(v, t, torch.arange(2), 1.0).item() == pytest.approx((v2t + t2v) / 2, rel=1e-6)


def test_caption_keys_make_equal_captions_positives() -> None:
    from umt.losses import caption_keys

    ids = torch.tensor([[1, 7, 9, 2, 0], [1, 7, 9, 2, 0], [1, 9, 7, 2, 0], [1, 7, 9, 2, 5]])
    mask = torch.tensor([[1, 1, 1, 1, 0]] * 3 + [[1, 1, 1, 1, 0]])
    k = caption_keys(ids, mask)
    assert k[0] == k[1] and k[0] != k[2] and k[3] == k[0]  # padding does not count


# ------------------------------------------------------------------------------------- official stage-2 init
def test_official_stage2_checkpoint_initialises_the_retrieval_task(tmp_path: Path, tiny_bert: str,
                                                                   no_teacher_allowed: None) -> None:
    """A stage-2 file in the official key layout (names written out independently in tests/model/test_official.py)
    initialises every tensor of the teacher-free fine-tuning model, read directly and after ``umt.convert``."""
    from tests.model.test_official import _randomise, official_names
    from umt import convert
    from umt.model.text import build_text_encoder
    from umt.train.task import build_task

    student = timm.create_model("umt_vit_pico_patch16_224", num_frames=4, align_layers=2)
    text, _ = build_text_encoder(tiny_bert, 2, 96)
    src_model = _randomise(UMTVisionText(student, UMAHeads(96, 64, 2), text, 32))
    off_sd = official_names("stage2", src_model.state_dict())
    off_sd["clip_teacher.conv1.weight"] = torch.randn(8, 3, 1, 16, 16)  # released files carry the teacher
    src = tmp_path / "b16_25m.pth"
    torch.save({"model": off_sd}, src)
    converted = tmp_path / "umt_b16_25m.pt"
    assert convert.main([str(src), str(converted)]) == 0
    for init in (src, converted):
        cfg = tiny_cfg(f"text.encoder={tiny_bert}", f"model.init_from={init}", "data.num_frames=4",
                       "data.input_size=224", "model.teacher_image_size=224", recipe="demo_retft", base=RETFT)
        task = build_task(cfg, CPU)
        assert task.teacher is None and task.init_report["missing"] == 0
        got = task.model.state_dict()
        for k, v in src_model.state_dict().items():
            assert torch.equal(got[k], v), k


# --------------------------------------------------------------------------------------- paragraph captions
def test_paragraph_shards_join_each_videos_captions(tmp_path: Path) -> None:
    """DiDeMo-style annotation: video a has three captions, b one. With ``paragraph`` the shards hold one caption
    per video, the captions joined with one space in file order (official ``" ".join(d.pop("caption"))``), and the
    readers see it through ``pre_text`` as the official does (lower case, punctuation deleted)."""
    from tests.data_utils import frame_image, mjpeg_clip
    from umt.data.build.cli import main as make_shards
    from umt.data.captions import read_captions

    for i, name in enumerate(("a.mp4", "b.mp4")):
        mjpeg_clip(tmp_path / name, [frame_image(k + 3 * i, 48, 32) for k in range(8)])
    rows = [{"video": "a.mp4", "caption": ["A man opens the door.", "He walks in,", "then sits down!"]},
            {"video": "b.mp4", "caption": ["A dog runs."]}]
    (tmp_path / "ann.json").write_text(json.dumps(rows))
    common = ["--annotations", str(tmp_path / "ann.json"), "--codec", "mjpeg", "--gop", "1", "--quiet"]
    assert make_shards([*common, "--out", str(tmp_path / "para"), "--paragraph"]) == 0
    assert make_shards([*common, "--out", str(tmp_path / "each")]) == 0
    def per_item(d: Path) -> list[list[str]]:  # item order is the build's shuffle: compare per item
        items: dict[int, list[str]] = {}
        for i, c in read_captions(d):
            items.setdefault(i, []).append(c)
        return sorted(items.values())

    assert per_item(tmp_path / "para") == [["a dog runs"], ["a man opens the door he walks in then sits down"]]
    assert per_item(tmp_path / "each") == [["a dog runs"], ["a man opens the door", "he walks in", "then sits down"]]
    m = json.loads((tmp_path / "para" / "manifest.json").read_text())
    assert m["num_samples"] == 2


# -------------------------------------------------------------------------------------- multi-video ground truth
def test_multi_video_ground_truth_hand_worked() -> None:
    """Text 0 describes videos 0 and 2, text 1 video 1 (SSv2: one label, several videos).

    scores (video × text): v0 [.2, .9], v1 [.5, .4], v2 [.8, .1].
    text 0: its best video v2 (.8) is first → rank 1 (v0, also right, does not count against it);
    text 1: v0 (.9) beats v1 (.4) → rank 2. Video → text: v0's text (.2) is behind text 1 (.9) → 2; v1's text (.4)
    behind .5 → 2; v2's (.8) first → 1. So text→video R@1 50 %, video→text R@1 33.3 %; with text 0 given only v0
    (one video per text) its rank would be 3."""
    from umt.eval.retrieval_metrics import retrieval_metrics, retrieval_ranks

    s = np.array([[0.2, 0.9], [0.5, 0.4], [0.8, 0.1]])
    t2v, v2t = retrieval_ranks(s, [[0, 2], [1]])
    assert t2v.tolist() == [1, 2] and v2t.tolist() == [2, 2, 1]
    m = retrieval_metrics(s, [[0, 2], [1]])
    assert m["t2v_r1"] == pytest.approx(50.0) and m["v2t_r1"] == pytest.approx(100 / 3)
    assert m["t2v_r5"] == 100.0 and m["t2v_medr"] == 1.5
    single, _ = retrieval_ranks(s[:2], [0, 1])  # one video per text: v0 for text 0, behind v1
    assert single.tolist() == [2, 2]
    with pytest.raises(ValueError, match="videos without a caption"):
        retrieval_ranks(s, [[0], [1]])  # v2 has no text


def test_group_captions_makes_one_query_per_distinct_text() -> None:
    from umt.eval.retrieval import group_captions

    caps = [(0, "pour water"), (1, "open a box"), (2, "pour water"), (3, "pour water"), (3, "open a box")]
    assert group_captions(caps) == (["pour water", "open a box"], [[0, 2, 3], [1, 3]])


# ---------------------------------------------------------------------------------------------------- the demo
def test_demo_trains_the_stage2_demo_first_when_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``demo_retft`` starts from ``runs/demo_stage2``: absent, it is trained there first (recipe ``demo_stage2``)
    and its newest checkpoint becomes ``model.init_from``; a named directory without checkpoints is refused."""
    from umt.train.demo import DemoError
    from umt.train.recipes import DEMOS, get_recipe

    monkeypatch.chdir(tmp_path)
    for d in ("shards/built/sample",):  # the demo's sample shards, as if built
        Path(d).mkdir(parents=True)
        (Path(d) / "manifest.json").write_text("{}")
    calls = []

    def train(run_dir: Path, recipe: str = "demo") -> int:
        calls.append((str(run_dir), recipe))
        (Path(run_dir) / "checkpoints").mkdir(parents=True)
        (Path(run_dir) / "checkpoints" / "step_00000216.pt").write_bytes(b"x")
        return 0

    monkeypatch.setattr("umt.data.build.samples.ensure_sample_shards", lambda d: None)
    cfg = DEMOS["demo_retft"].prepare(get_recipe("demo_retft"), train)
    assert calls == [("runs/demo_stage2", "demo_stage2")]
    assert cfg.model.init_from == str(Path("runs/demo_stage2/checkpoints/step_00000216.pt"))
    cfg = DEMOS["demo_retft"].prepare(get_recipe("demo_retft"), train)  # present: used as it is
    assert len(calls) == 1
    Path("empty").mkdir()
    c = get_recipe("demo_retft")
    c.model.init_from = "empty"
    with pytest.raises(DemoError, match="neither a checkpoint file nor a run directory"):
        DEMOS["demo_retft"].prepare(c, train)


def test_official_retrieval_annotation_rows_are_videos(tmp_path: Path) -> None:
    """The official downstream files name videos ``image`` (``{"image": "v.mp4", "caption": [...]}``), and an SSv2 test
    row lists every video of one caption (``{"caption": "...", "image": ["a.webm", "b.webm"]}``): video rows, one per
    path, each with the row's caption; a real image row stays an image."""
    from umt.data.build.shards import _read_annotations

    (tmp_path / "didemo.json").write_text(json.dumps([{"image": "v.mp4", "caption": ["one", "two"]}]))
    rows, modality = _read_annotations(tmp_path / "didemo.json")
    assert modality == "video" and [(Path(r[0]).name, r[2]) for r in rows] == [("v.mp4", ["one", "two"])]
    (tmp_path / "ssv2.json").write_text(json.dumps([{"caption": "pouring water", "image": ["a.webm", "b.webm"]},
                                                    {"caption": "opening a box", "image": "c.webm"}]))
    rows, modality = _read_annotations(tmp_path / "ssv2.json")
    assert modality == "video"
    assert [(Path(r[0]).name, r[2]) for r in rows] == [("a.webm", ["pouring water"]), ("b.webm", ["pouring water"]),
                                                       ("c.webm", ["opening a box"])]
    (tmp_path / "coco.json").write_text(json.dumps([{"image": "x.jpg", "caption": "a cat"}]))
    assert _read_annotations(tmp_path / "coco.json")[1] == "image"


def test_evaluate_retrieval_takes_several_videos_per_text() -> None:
    """The whole protocol with a model whose answers are known (tests/eval/test_retrieval.py): each text's dual
    embedding points at a video that is one of its ground truths but not the one its match head knows, so with
    several ground-truth videos per text every text is found first by both the dual encoder and the re-ranking."""
    from tests.eval.test_retrieval import _Known
    from umt.eval.retrieval import evaluate_retrieval

    batches = []
    for s in (0, 2, 4):
        ids = list(range(s, min(s + 2, 5)))
        ids += [-1] * (2 - len(ids))
        v = torch.tensor([float(max(i, 0)) for i in ids]).view(-1, 1, 1, 1, 1).expand(-1, 3, 1, 2, 2)
        batches.append({"video": v.clone(), "index": torch.tensor(ids)})
    text_ids = torch.tensor([[101, 0, 1], [101, 2, 2], [101, 3, 4]])  # [CLS, dual encoder's video, true video]
    gt = [[1, 0], [2], [4, 3]]
    m = evaluate_retrieval(_Known(), batches, 5, gt, text_ids, torch.ones_like(text_ids), device=torch.device("cpu"),
                           rerank_k=5)
    assert m["emb_t2v_r1"] == 100.0 and m["t2v_r1"] == 100.0
