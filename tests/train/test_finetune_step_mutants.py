"""The fine-tuning step (umt.train.finetune.step) on a toy classifier whose logits are worked by hand: the cases the
mutation run found untested: the plain cross-entropy criterion, top-1 on hard and on mixed (soft) targets, the
loss scale and its default, the cfg's mixup settings reaching timm, bf16 autocast, DDP's ``no_sync`` only when
asked, and the state the trainer reads back (optimizer, scheduler, cfg, device, classes)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn as nn

from umt.config import TrainConfig, apply_overrides
from umt.train.finetune.step import FinetuneStep

K = 4
# logits = per-clip channel means @ W.T: class c < 3 scores channel c, class 3 scores minus their sum
W = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, -1.0, -1.0]])
# channel means of the 4 clips and the logits they give (worked out):
#   clip 0 (3, 1, 0)    → (3, 1, 0, −4)   argmax 0
#   clip 1 (0, 2, 1)    → (0, 2, 1, −3)   argmax 1
#   clip 2 (0, 0, 5)    → (0, 0, 5, −5)   argmax 2
#   clip 3 (−1, −1, −1) → (−1, −1, −1, 3) argmax 3
MEANS = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 5.0], [-1.0, -1.0, -1.0]])
LOGITS = [[3.0, 1.0, 0.0, -4.0], [0.0, 2.0, 1.0, -3.0], [0.0, 0.0, 5.0, -5.0], [-1.0, -1.0, -1.0, 3.0]]
LABEL = torch.tensor([0, 2, 2, 1])  # clips 0 and 2 right, 1 and 3 wrong: top-1 0.5


class Toy(nn.Module):
    """``video [B, 3, T, H, W] → mean over (T, H, W) @ W.T``; records DDP-style ``no_sync`` calls."""

    def __init__(self, w: torch.Tensor = W) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.no_sync_calls = 0

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return video.mean((2, 3, 4)) @ self.w.t()

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        self.no_sync_calls += 1
        yield


def _video(means: torch.Tensor = MEANS) -> torch.Tensor:
    return means.view(-1, 3, 1, 1, 1).expand(-1, 3, 2, 4, 4).contiguous()


def _step(overrides: list[str], amp: torch.dtype | None = None, k: int = K,
          w: torch.Tensor = W) -> tuple[FinetuneStep, Toy, TrainConfig, torch.optim.Optimizer, object]:
    cfg = apply_overrides(TrainConfig(task="finetune", device="cpu", synthetic_data=True),
                          [f"finetune.num_classes={k}", "data.batch_size=2", "data.num_sample=2",
                           "data.num_frames=2", "data.input_size=32", "synthetic_samples=4", *overrides])
    model = Toy(w)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return FinetuneStep(model, opt, sched, cfg, torch.device("cpu"), amp, k), model, cfg, opt, sched


PLAIN = ["finetune.mixup=0", "finetune.cutmix=0", "finetune.label_smoothing=0"]


def _hand_ce_and_grad() -> tuple[float, torch.Tensor]:
    # CE_b = logsumexp(z_b) − z_b[y_b]; dCE/dW[k, c] = mean_b (softmax(z_b)_k − [k = y_b]) · mean_b,c
    loss, grad = 0.0, torch.zeros(4, 3)
    for b in range(4):
        z = LOGITS[b]
        lse = math.log(sum(math.exp(v) for v in z))
        loss += (lse - z[int(LABEL[b])]) / 4
        for k in range(4):
            d = math.exp(z[k] - lse) - (1.0 if k == int(LABEL[b]) else 0.0)
            grad[k] += d * MEANS[b] / 4
    return loss, grad


def test_state_the_trainer_reads_back() -> None:
    step, model, cfg, opt, sched = _step(PLAIN)
    assert step.model is model and step.optimizer is opt and step.scheduler is sched and step.cfg is cfg
    assert step.device == torch.device("cpu") and step.amp_dtype is None and step.num_classes == K
    assert step.mixup is None and isinstance(step.criterion, nn.CrossEntropyLoss)


def test_plain_cross_entropy_top1_and_gradient() -> None:
    step, model, *_ = _step(PLAIN)
    want_loss, want_grad = _hand_ce_and_grad()
    out = step.train_batch({"video": _video(), "label": LABEL}, seed=0)
    assert set(out) == {"loss", "top1"}
    assert abs(out["loss"].item() - want_loss) < 1e-5
    assert out["top1"].item() == 0.5
    torch.testing.assert_close(model.w.grad, want_grad, rtol=1e-5, atol=1e-6)
    # scale: the gradient of scale · loss, the reported loss unscaled
    model.w.grad = None
    out = step.train_batch({"video": _video(), "label": LABEL}, seed=0, scale=0.25)
    assert abs(out["loss"].item() - want_loss) < 1e-5
    torch.testing.assert_close(model.w.grad, 0.25 * want_grad, rtol=1e-5, atol=1e-6)


def test_forward_backward_scale_and_its_default() -> None:
    step, model, *_ = _step(PLAIN)
    want_loss, want_grad = _hand_ce_and_grad()
    loss, logits = step.forward_backward(_video(), LABEL)
    torch.testing.assert_close(logits, torch.tensor(LOGITS))
    assert abs(loss.item() - want_loss) < 1e-5
    torch.testing.assert_close(model.w.grad, want_grad, rtol=1e-5, atol=1e-6)
    model.w.grad = None
    step.forward_backward(_video(), LABEL, 0.5)
    torch.testing.assert_close(model.w.grad, 0.5 * want_grad, rtol=1e-5, atol=1e-6)


def test_no_sync_only_when_asked() -> None:
    step, model, *_ = _step(PLAIN)
    step.train_batch({"video": _video(), "label": LABEL}, seed=0)
    assert model.no_sync_calls == 0  # default sync=True: the gradients are all-reduced
    step.train_batch({"video": _video(), "label": LABEL}, seed=0, sync=False)
    assert model.no_sync_calls == 1


def test_bf16_autocast_reaches_the_model() -> None:
    step, *_ = _step(PLAIN, amp=torch.bfloat16)
    loss, logits = step.forward_backward(_video(), LABEL)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32  # the criterion on fp32 logits
    # the logits are small integers, exact in bf16: the same loss as in fp32
    assert abs(loss.item() - _hand_ce_and_grad()[0]) < 1e-5


def test_cfg_mixup_settings_reach_timm() -> None:
    step, *_ = _step(["finetune.mixup=0.3", "finetune.cutmix=0.6", "finetune.mixup_prob=0.7",
                      "finetune.mixup_switch_prob=0.2", "finetune.label_smoothing=0.05"])
    m = step.mixup.mixup
    assert (m.mixup_alpha, m.cutmix_alpha, m.mix_prob, m.switch_prob, m.label_smoothing) == (0.3, 0.6, 0.7, 0.2, 0.05)
    assert m.num_classes == K


def test_top1_on_mixed_targets_is_against_the_larger_share() -> None:
    # mixup only, K = 5 (class 4 never wins: its weights are −10), B = 4. The step mixes clip i with clip 3 − i at one
    # λ; λ is read back from the pixels the model saw. The soft target of row i is λ·y_i + (1 − λ)·y_{3−i} (0.1
    # smoothing): its largest class is LABEL[i] when λ > 0.5, else LABEL[3 − i]; top-1 compares the logits' argmax
    # with that class.
    w5 = torch.cat([W, torch.full((1, 3), -10.0)])
    step, model, *_ = _step(["finetune.mixup=0.8", "finetune.cutmix=0", "finetune.mixup_prob=1.0"], k=5, w=w5)
    seen: list[torch.Tensor] = []
    model.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()))
    x = _video()
    checked = 0
    for seed in range(8):
        out = step.train_batch({"video": x.clone(), "label": LABEL}, seed=seed)
        mixed = seen[-1]
        lam = ((mixed[0, 0, 0, 0, 0] - x[3, 0, 0, 0, 0]) / (x[0, 0, 0, 0, 0] - x[3, 0, 0, 0, 0])).item()
        if abs(lam - 0.5) < 1e-3:
            continue
        hard = LABEL if lam > 0.5 else LABEL.flip(0)
        pred = (mixed.mean((2, 3, 4)) @ w5.t()).argmax(-1)
        assert out["top1"].item() == (pred == hard).float().mean().item()
        checked += 1
    assert checked >= 6
