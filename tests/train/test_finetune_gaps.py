"""Fine-tuning loss without mixup/CutMix: label smoothing still applies (official: ``LabelSmoothingCrossEntropy``
when ``smoothing > 0`` and no mixup), checked against the formula written out here."""

from __future__ import annotations

import timm
import torch

import umt.model  # noqa: F401 - registers the umt_vit_* names
from umt.config import TrainConfig, apply_overrides
from umt.train.finetune.step import FinetuneStep
from umt.train.step import build_optimizer


def _step(smoothing: float) -> tuple[FinetuneStep, torch.nn.Module]:
    cfg = apply_overrides(TrainConfig(task="finetune", device="cpu", synthetic_data=True),
                          ["finetune.num_classes=4", "data.batch_size=2", "data.num_sample=2", "data.num_frames=2",
                           "data.input_size=32", "synthetic_samples=4", "finetune.mixup=0", "finetune.cutmix=0",
                           f"finetune.label_smoothing={smoothing}", "model.drop_path=0.0"])
    torch.manual_seed(0)
    model = timm.create_model("umt_vit_pico_patch16_224", num_frames=2, img_size=32, num_classes=4)
    with torch.no_grad():  # a confident head (the fresh one is ~0: near-uniform logits hide the smoothing term)
        model.head.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(2))
    opt = build_optimizer(model, cfg.optim, 1e-3, torch.device("cpu"))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return FinetuneStep(model, opt, sched, cfg, torch.device("cpu"), None, 4), model


def _run(smoothing: float) -> tuple[float, float, float]:
    step, model = _step(smoothing)
    logits: list[torch.Tensor] = []
    model.register_forward_hook(lambda m, i, o: logits.append(o.detach().float()))
    label = torch.tensor([0, 3, 1, 3])
    out = step.train_batch({"video": torch.randn(4, 3, 2, 32, 32, generator=torch.Generator().manual_seed(1)),
                            "label": label}, seed=1)
    logp = logits[0].log_softmax(-1)  # [4, 4]
    nll = -logp[torch.arange(4), label]  # [4]
    # label smoothing (Szegedy et al. 2016; timm LabelSmoothingCrossEntropy): (1 − ε)·NLL + ε·mean_c(−log p_c)
    want = ((1 - smoothing) * nll + smoothing * (-logp.mean(-1))).mean()
    return float(out["loss"]), float(want), float(nll.mean())


def test_label_smoothing_applies_without_mixup() -> None:
    got, want, plain = _run(0.1)
    # fp32 log-softmax over 4 classes and a 4-sample mean of values ~16: a few ulps of 16 (~2e-6)
    assert abs(got - want) < 1e-5
    assert abs(want - plain) > 1e-3  # plain cross-entropy differs on this batch: the check tells them apart
