"""Video-QA recipes (task ``video_qa``): MSRVTT-QA, MSVD-QA and ActivityNet-QA, UMT-B and UMT-L, each from the
stage-2 checkpoint of the 5M, 17M or 25M corpus (``qa_{msrvtt,msvd,anet}_{b16,l16}_{5m,17m,25m}``), and ``demo_qa``.

Numbers from the official ``multi_modality/exp/finetuning/qa_{msrvtt,msvd,anet}/{b16,l16}_{5m,17m,25m}.py`` (and
their ``.sh``: 1 node × 8 GPUs, ``pretrained_path`` = the stage-2 checkpoint of the same size and corpus), common to
all: 12 frames at 224² in training and test ("rand": a random frame per segment in training, "middle" in test),
``RandomResizedCrop(224, scale (0.5, 1), bicubic)`` + flip in training, the whole frame resized in test (official
``dataset/__init__.py``), batch 32 per GPU (256 on the official 8 GPUs: the recipes pin ``optim.global_batch =
256`` so fewer GPUs accumulate), no masking and no teacher, questions of at most 25 tokens, answers of at most 5
(``[CLS]`` and two ``[SEP]`` included), ``k_test`` 128 over the data set's answer list
(``{msrvtt,msvd,anet}_qa_answer_list.json``), AdamW betas (0.9, 0.999), weight decay 0.02, no clipping, cosine
after 1 warm-up epoch to 0.01 × lr, gradient checkpointing in BERT (fp16 officially, bf16 here). BERT-base fusing
from layer 9 (decoder: 3 layers) for UMT-B, BERT-large from layer 19 (5 layers) for UMT-L. What varies
(:data:`SETTINGS`): lr, epochs, drop path.

One official file does not match its name: ``qa_msrvtt/b16_25m.py`` holds the UMT-L model (``vit_l14``,
``bert_large``, drop path 0.4) and its ``.sh`` loads ``l16_5m.pth``: a copy of the L setting. ``qa_msrvtt_b16_25m``
keeps UMT-B with the settings of ``b16_5m.py``/``b16_17m.py`` (lr 2e-5, 8 epochs, drop path 0.2).

Set ``model.init_from`` (the stage-2 checkpoint), ``text.encoder`` (a local ``bert-base-uncased`` /
``bert-large-uncased``), ``data.shards`` / ``eval.shards`` (QA shard directories built by ``make_shards`` from the
official ``*_qa_{train,test}.json``) and ``qa.answer_list``.
"""

from __future__ import annotations

from collections.abc import Callable

from umt.config import (CheckpointConfig, EvalConfig, LogConfig, ModelConfig, OptimConfig, QAConfig, TextConfig,
                        TrainConfig)
from umt.data.config import DataConfig

__all__ = ["SETTINGS", "OFFICIAL", "QA_DATA", "QA_RECIPES", "qa_recipe", "demo_qa"]

#: (data set, size, corpus) → (lr, epochs, drop path) of the official ``exp/finetuning/qa_*/*.py``
SETTINGS: dict[tuple[str, str, str], tuple[float, int, float]] = {
    ("msrvtt", "b16", "5m"): (2e-5, 8, 0.2), ("msrvtt", "b16", "17m"): (2e-5, 8, 0.2),
    ("msrvtt", "b16", "25m"): (2e-5, 8, 0.2),  # the official file holds the L model: see the module docstring
    ("msrvtt", "l16", "5m"): (2e-5, 8, 0.4), ("msrvtt", "l16", "17m"): (2e-5, 6, 0.4),
    ("msrvtt", "l16", "25m"): (4e-5, 5, 0.4),
    ("msvd", "b16", "5m"): (2e-5, 15, 0.2), ("msvd", "b16", "17m"): (2e-5, 15, 0.2),
    ("msvd", "b16", "25m"): (6e-5, 6, 0.2),
    ("msvd", "l16", "5m"): (6e-5, 6, 0.4), ("msvd", "l16", "17m"): (6e-5, 6, 0.4),
    ("msvd", "l16", "25m"): (6e-5, 6, 0.4),
    ("anet", "b16", "5m"): (4e-5, 12, 0.2), ("anet", "b16", "17m"): (4e-5, 12, 0.2),
    ("anet", "b16", "25m"): (4e-5, 12, 0.2),
    ("anet", "l16", "5m"): (4e-5, 10, 0.3), ("anet", "l16", "17m"): (4e-5, 12, 0.3),
    ("anet", "l16", "25m"): (4e-5, 10, 0.3),
}

#: (data set, size, corpus) → top-1 accuracy (%) of the official ``multi_modality/MODEL_ZOO.md``
OFFICIAL: dict[tuple[str, str, str], float] = {
    ("anet", "b16", "5m"): 43.5, ("anet", "b16", "17m"): 44.9, ("anet", "b16", "25m"): 44.8,
    ("anet", "l16", "5m"): 45.1, ("anet", "l16", "17m"): 47.3, ("anet", "l16", "25m"): 47.9,
    ("msrvtt", "b16", "5m"): 44.3, ("msrvtt", "b16", "17m"): 44.9, ("msrvtt", "b16", "25m"): 44.9,
    ("msrvtt", "l16", "5m"): 45.5, ("msrvtt", "l16", "17m"): 46.4, ("msrvtt", "l16", "25m"): 47.1,
    ("msvd", "b16", "5m"): 49.1, ("msvd", "b16", "17m"): 48.9, ("msvd", "b16", "25m"): 49.5,
    ("msvd", "l16", "5m"): 51.3, ("msvd", "l16", "17m"): 53.4, ("msvd", "l16", "25m"): 55.2,
}

#: the official QA data path: stage 2's frame choice and crop, the whole frame resized at test time
QA_DATA: dict = {"sampling": "rand_middle", "crop": "rrc", "rrc_scale": (0.5, 1.0), "interp": "bicubic",
                 "eval_crop": "resize"}

_SIZES = {"b16": ("umt_vit_base_patch16_224", "bert-base-uncased", 9),
          "l16": ("umt_vit_large_patch16_224", "bert-large-uncased", 19)}
#: official GPUs (``.sh``: ``NNODE=1``, ``NUM_GPUS=8``) × 32 per GPU
OFFICIAL_GLOBAL_BATCH = 8 * 32


def qa_recipe(dataset: str, size: str, corpus: str) -> TrainConfig:
    """The official QA fine-tuning of ``size`` (b16 | l16) from its ``corpus`` (5m | 17m | 25m) stage-2 checkpoint on
    ``dataset`` (msrvtt | msvd | anet)."""
    lr, epochs, drop_path = SETTINGS[(dataset, size, corpus)]
    student, bert, fusion = _SIZES[size]
    return TrainConfig(
        task="video_qa",
        data=DataConfig(shards=f"shards/{dataset}_qa_train", batch_size=32, num_frames=12, input_size=224,
                        num_workers=12, **QA_DATA),
        model=ModelConfig(student=student, drop_path=drop_path, init_from=f"{size}_{corpus}.pth"),
        text=TextConfig(encoder=bert, fusion_layer=fusion, grad_checkpointing=True),
        optim=OptimConfig(lr=lr, min_lr=0.01 * lr, betas=(0.9, 0.999), weight_decay=0.02, epochs=epochs,
                          warmup_epochs=1, clip_grad=0.0, global_batch=OFFICIAL_GLOBAL_BATCH),
        qa=QAConfig(max_question_len=25, max_answer_len=5, k_test=128,
                    answer_list=f"annotations/{dataset}_qa_answer_list.json"),
        checkpoint=CheckpointConfig(every_steps=1000, keep_last=3),
        log=LogConfig(every_steps=20),
        eval=EvalConfig(shards=f"shards/{dataset}_qa_test", batch_size=32, every_epochs=1, at_end=True),
    )


def demo_qa() -> TrainConfig:
    """Video QA on 2 CPU cores in minutes: the embedded sample clips with three questions each about their labels
    (``shards/samples/qa.json``, the official annotation layout: what is shown, whether there is a bunny, whether it
    is a cartoon; 60 questions, 6 distinct answers), the stage-1 demo's pico student (``model.init_from`` =
    ``runs/demo``, trained first when absent) and the MiniLM BERT (fusion in its top two layers, so a 2-layer
    decoder seeded from them), 4 frames × 112², batch 8, 4 epochs (28 steps). A stage-2 checkpoint is what the paper
    recipes start from; ``--set model.init_from=runs/demo_stage2`` starts from the stage-2 demo's run once it exists
    (about 3 more minutes on a quiet machine). Accuracy on the same questions before and after (the answer list: every
    answer of the training set, which is this set; k_test 4): it shows the machinery learning, not
    generalisation."""
    return TrainConfig(
        task="video_qa",
        data=DataConfig(shards="shards/built/sample_qa", batch_size=8, num_frames=4, input_size=112, num_workers=2,
                        **QA_DATA),
        model=ModelConfig(student="umt_vit_pico_patch16_224", drop_path=0.0, init_from="runs/demo"),
        text=TextConfig(encoder="minilm", fusion_layer=4),
        optim=OptimConfig(lr=5e-4, min_lr=5e-6, betas=(0.9, 0.999), weight_decay=0.02, epochs=4, warmup_epochs=1,
                          clip_grad=0.0),
        qa=QAConfig(max_question_len=25, max_answer_len=5, k_test=4),
        checkpoint=CheckpointConfig(every_steps=0, keep_last=2),
        log=LogConfig(every_steps=5),
        eval=EvalConfig(shards="shards/built/sample_qa", batch_size=8, every_epochs=0, at_end=True),
        device="cpu",
    )


def _named(dataset: str, size: str, corpus: str) -> Callable[[], TrainConfig]:
    def recipe() -> TrainConfig:
        return qa_recipe(dataset, size, corpus)

    recipe.__name__ = f"qa_{dataset}_{size}_{corpus}"
    recipe.__doc__ = (f"QA fine-tuning on {dataset} from the {size} {corpus} stage-2 checkpoint (official "
                      f"exp/finetuning/qa_{dataset}/{size}_{corpus}.py; :func:`qa_recipe`).")
    return recipe


#: name → recipe, merged into :data:`umt.train.recipes.RECIPES`
QA_RECIPES: dict[str, Callable[[], TrainConfig]] = {
    **{f"qa_{d}_{s}_{c}": _named(d, s, c) for (d, s, c) in SETTINGS}, "demo_qa": demo_qa}
