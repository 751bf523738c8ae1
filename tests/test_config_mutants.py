"""Every check of :mod:`umt.config` at its boundary (the last accepted value and the first refused one, written out
here), the override parser's types, the accumulation arithmetic and the dict round trip."""

from __future__ import annotations

import dataclasses

import pytest

from umt.data.config import DataConfig
from umt.config import (CheckpointConfig, ConfigError, EvalConfig, FinetuneConfig, LogConfig, MaskConfig,
                        ModelConfig, OptimConfig, QAConfig, TextConfig, TrainConfig, accumulation_steps,
                        apply_overrides, config_from_dict, config_to_dict)
from umt.config import _parse_value


def ok(cls: type, **kw: object) -> object:
    return cls(**kw)


def bad(cls: type, **kw: object) -> None:
    with pytest.raises(ConfigError):
        cls(**kw)


# ------------------------------------------------------------------------------------------------------ sections
def test_model_config_bounds() -> None:
    for k in ("torch", "triton"):
        ok(ModelConfig, kernels=k)
    bad(ModelConfig, kernels="cuda")
    for p in ("bf16", "fp16", "fp32"):
        ok(ModelConfig, teacher_precision=p)
    bad(ModelConfig, teacher_precision="fp8")
    for n in ("imagenet", "clip"):
        ok(ModelConfig, teacher_input_norm=n)
    bad(ModelConfig, teacher_input_norm="none")
    ok(ModelConfig, drop_path=0.0)
    ok(ModelConfig, drop_path=0.999)
    bad(ModelConfig, drop_path=1.0)
    bad(ModelConfig, drop_path=-0.01)
    ok(ModelConfig, align_layers=1)
    bad(ModelConfig, align_layers=0)


def test_mask_config_bounds() -> None:
    for kind in ("semantic", "tube", "random"):
        ok(MaskConfig, kind=kind)
    bad(MaskConfig, kind="block")
    for field in ("ratio", "image_ratio"):
        ok(MaskConfig, **{field: 0.0})
        ok(MaskConfig, **{field: 0.99})
        bad(MaskConfig, **{field: 1.0})  # keeps no token
        bad(MaskConfig, **{field: -0.01})


def test_text_config_bounds() -> None:
    bad(TextConfig, encoder="")
    ok(TextConfig, fusion_layer=1)
    bad(TextConfig, fusion_layer=0)
    ok(TextConfig, max_len=3)
    bad(TextConfig, max_len=2)
    ok(TextConfig, embed_dim=1)
    bad(TextConfig, embed_dim=0)
    ok(TextConfig, temp=0.001)
    ok(TextConfig, temp=0.5)
    bad(TextConfig, temp=0.0009)
    bad(TextConfig, temp=0.5001)
    ok(TextConfig, mlm_prob=0.0)
    ok(TextConfig, mlm_prob=1.0)
    bad(TextConfig, mlm_prob=-0.01)
    bad(TextConfig, mlm_prob=1.01)
    names = ("vtc_weight", "vtm_weight", "mlm_weight", "uta_weight")
    zero = dict.fromkeys(names, 0.0)
    bad(TextConfig, **zero)  # nothing to train
    for n in names:
        ok(TextConfig, **{**zero, n: 0.5})  # any one weight alone is enough
        bad(TextConfig, **{n: -0.1})  # a negative weight, the others at 1


def test_optim_config_bounds() -> None:
    for impl in ("auto", "fused", "foreach", "apex"):
        ok(OptimConfig, impl=impl)
    bad(OptimConfig, impl="sgd")
    bad(OptimConfig, lr=0.0, min_lr=0.0)
    ok(OptimConfig, lr=1e-9, min_lr=0.0)
    bad(OptimConfig, lr=1e-3, min_lr=-1e-9)
    ok(OptimConfig, lr=1e-3, min_lr=1e-3)  # min_lr may equal lr
    bad(OptimConfig, lr=1e-3, min_lr=1.0001e-3)
    ok(OptimConfig, epochs=1, warmup_epochs=0.0)
    bad(OptimConfig, epochs=0, warmup_epochs=0.0)
    ok(OptimConfig, epochs=5, warmup_epochs=5.0)
    bad(OptimConfig, epochs=5, warmup_epochs=5.5)
    bad(OptimConfig, epochs=5, warmup_epochs=-0.5)
    ok(OptimConfig, betas=(0.0, 0.0))
    ok(OptimConfig, betas=(0.9, 0.999))
    bad(OptimConfig, betas=(0.9, 1.0))
    bad(OptimConfig, betas=(1.0, 0.9))
    bad(OptimConfig, betas=(-0.1, 0.9))
    bad(OptimConfig, betas=(0.9, 0.95, 0.99))
    bad(OptimConfig, betas=(0.9,))
    ok(OptimConfig, global_batch=0)
    bad(OptimConfig, global_batch=-1)
    ok(OptimConfig, clip_grad=0.0, max_steps=0, max_nonfinite=1)
    bad(OptimConfig, clip_grad=-0.1)
    bad(OptimConfig, max_steps=-1)
    bad(OptimConfig, max_nonfinite=0)


def test_checkpoint_config_bounds_and_signal_names() -> None:
    ok(CheckpointConfig, every_steps=0, keep_last=1)
    bad(CheckpointConfig, every_steps=-1)
    bad(CheckpointConfig, keep_last=0)
    c = CheckpointConfig(signals=["term", "SIGUSR1", "sigint", "Usr2"])  # a list from JSON, any case, SIG optional
    assert c.signals == ("term", "SIGUSR1", "sigint", "Usr2")
    assert isinstance(c.signals, tuple)
    assert CheckpointConfig(signals=()).signals == ()
    for uncatchable in ("SIGKILL", "kill", "SIGSTOP", "stop"):
        bad(CheckpointConfig, signals=(uncatchable,))
    with pytest.raises(ConfigError) as e:
        CheckpointConfig(signals=("SIGTERM", "SIGBOGUS"))
    assert "SIGBOGUS" in str(e.value) and "'SIGTERM'" not in str(e.value)  # only the bad name is listed


def test_log_config_bounds() -> None:
    ok(LogConfig, every_steps=1, image_every_steps=0)
    bad(LogConfig, every_steps=0)
    bad(LogConfig, image_every_steps=-1)


def test_eval_config_bounds_and_views() -> None:
    ok(EvalConfig, every_epochs=0, batch_size=1, rerank_k=1, knn_k=1, knn_temperature=1e-6)
    bad(EvalConfig, every_epochs=-1)
    bad(EvalConfig, batch_size=0)
    bad(EvalConfig, rerank_k=0)
    bad(EvalConfig, knn_k=0)
    bad(EvalConfig, knn_temperature=0.0)
    e = EvalConfig(views="2X3")  # TEMPORALxSPATIAL, either case of x
    assert (e.temporal_views, e.spatial_views) == (2, 3)
    e = EvalConfig(views="5x1")
    assert (e.temporal_views, e.spatial_views) == (5, 1)
    for v in ("0x3", "4x0", "4x", "x3", "4x3x1", "ax3", "4", "-1x3", "4 x 3"):
        bad(EvalConfig, views=v)


def test_finetune_config_bounds() -> None:
    for f in ("num_classes", "pretrain_num_frames", "pretrain_img_size"):
        ok(FinetuneConfig, **{f: 0})
        bad(FinetuneConfig, **{f: -1})
    ok(FinetuneConfig, layer_decay=1.0)
    ok(FinetuneConfig, layer_decay=1e-6)
    bad(FinetuneConfig, layer_decay=0.0)
    bad(FinetuneConfig, layer_decay=1.01)
    for f in ("head_init_scale", "mixup", "cutmix"):
        ok(FinetuneConfig, **{f: 0.0})
        bad(FinetuneConfig, **{f: -0.01})
    for f in ("mixup_prob", "mixup_switch_prob"):
        ok(FinetuneConfig, **{f: 0.0})
        ok(FinetuneConfig, **{f: 1.0})
        bad(FinetuneConfig, **{f: -0.01})
        bad(FinetuneConfig, **{f: 1.01})
    ok(FinetuneConfig, label_smoothing=0.0)
    ok(FinetuneConfig, label_smoothing=0.99)
    bad(FinetuneConfig, label_smoothing=1.0)
    bad(FinetuneConfig, label_smoothing=-0.01)
    ok(FinetuneConfig, pretrain_img_size=32)
    bad(FinetuneConfig, pretrain_img_size=24)  # not a multiple of the patch size


@pytest.mark.parametrize("mixup,cutmix,prob,active", [
    (0.0, 0.0, 1.0, False), (0.8, 0.0, 1.0, True), (0.0, 1.0, 1.0, True), (0.8, 1.0, 0.0, False),
    (0.0, 1.0, 0.5, True), (0.0, 0.0, 0.5, False)])
def test_mixup_active_truth_table(mixup: float, cutmix: float, prob: float, active: bool) -> None:
    assert FinetuneConfig(mixup=mixup, cutmix=cutmix, mixup_prob=prob).mixup_active is active


def test_qa_config_bounds() -> None:
    ok(QAConfig, max_question_len=3, max_answer_len=3, k_test=1)
    bad(QAConfig, max_question_len=2)
    bad(QAConfig, max_answer_len=2)
    bad(QAConfig, k_test=0)


def test_train_config_cross_checks() -> None:
    for d in ("auto", "cuda", "cpu"):
        TrainConfig(device=d)
    bad(TrainConfig, device="tpu")
    for p in ("auto", "bf16", "fp32"):
        TrainConfig(precision=p)
    bad(TrainConfig, precision="fp16")
    cfg = TrainConfig()  # no shards: fine until data is required
    with pytest.raises(ConfigError, match="data.shards is empty"):
        cfg.check()
    TrainConfig(synthetic_data=True).check()  # synthetic data needs no shards
    cfg.data.shards = "/some/where"
    cfg.check()
    cfg.data.input_size = 32
    cfg.check()
    cfg.data.input_size = 24
    with pytest.raises(ConfigError, match="multiple of the patch size"):
        cfg.check(require_data=False)
    s = TrainConfig(synthetic_data=True, synthetic_samples=4, data=DataConfig(batch_size=4))
    s.check()  # as many samples as the batch
    s.data.batch_size = 5
    with pytest.raises(ConfigError, match="synthetic_samples"):
        s.check()
    s.synthetic_data = False  # the rule is synthetic data's only
    s.data.shards = "/x"
    s.check()


# ---------------------------------------------------------------------------------------------------- accumulation
@pytest.mark.parametrize("batch,world,gb,steps", [(2, 1, 0, 1), (2, 1, 2, 1), (2, 1, 6, 3), (2, 3, 12, 2),
                                                  (3, 2, 6, 1), (1, 4, 64, 16)])
def test_accumulation_steps_by_hand(batch: int, world: int, gb: int, steps: int) -> None:
    cfg = TrainConfig()
    cfg.data.batch_size, cfg.optim.global_batch = batch, gb
    assert accumulation_steps(cfg, world) == steps


@pytest.mark.parametrize("batch,world,gb", [(2, 1, 3), (2, 3, 8), (4, 2, 4)])
def test_accumulation_steps_refuses_what_does_not_divide(batch: int, world: int, gb: int) -> None:
    cfg = TrainConfig()
    cfg.data.batch_size, cfg.optim.global_batch = batch, gb
    with pytest.raises(ConfigError, match="not a multiple"):
        accumulation_steps(cfg, world)


# ------------------------------------------------------------------------------------------------ override parsing
def test_parse_value_types() -> None:
    for t in ("1", "true", "TRUE", "yes", "on", "On"):
        assert _parse_value(t, bool, "k") is True
    for t in ("0", "false", "False", "no", "off"):
        assert _parse_value(t, bool, "k") is False
    with pytest.raises(ConfigError, match="expected a bool"):
        _parse_value("maybe", bool, "k")
    assert _parse_value("-3", int, "k") == -3 and type(_parse_value("3", int, "k")) is int
    with pytest.raises(ConfigError, match="expected an int"):
        _parse_value("3.5", int, "k")
    assert _parse_value("1e-3", float, "k") == 0.001 and type(_parse_value("2", float, "k")) is float
    with pytest.raises(ConfigError, match="expected a float"):
        _parse_value("fast", float, "k")
    assert _parse_value("a,b=c", str, "k") == "a,b=c"
    assert _parse_value("none", float | None, "k") is None and _parse_value("Null", float | None, "k") is None
    assert _parse_value("None", int | None, "k") is None
    assert _parse_value("8", float | None, "k") == 8.0 and type(_parse_value("8", float | None, "k")) is float
    assert _parse_value("0.9,0.95", tuple[float, float], "k") == (0.9, 0.95)
    assert _parse_value("(0.5, 0.25)", tuple[float, float], "k") == (0.5, 0.25)
    assert _parse_value("[1,2]", tuple[int, int], "k") == (1, 2)
    with pytest.raises(ConfigError, match="expected 2 comma-separated values"):
        _parse_value("0.9", tuple[float, float], "k")
    with pytest.raises(ConfigError, match="expected 2 comma-separated values"):
        _parse_value("1,2,3", tuple[float, float], "k")
    assert _parse_value("SIGTERM, SIGUSR1", tuple[str, ...], "k") == ("SIGTERM", "SIGUSR1")
    assert _parse_value("", tuple[str, ...], "k") == ()
    assert _parse_value("7", tuple[int, ...], "k") == (7,)
    with pytest.raises(ConfigError, match="cannot parse type"):
        _parse_value("1", list, "k")


def test_apply_overrides_sections_roots_and_errors() -> None:
    base = TrainConfig(synthetic_data=True)
    out = apply_overrides(base, [" seed =7", "eval.shards=/data/a=b", "optim.betas=0.8,0.9", "data.batch_size=3",
                                 "checkpoint.signals=term", "synthetic_samples=3"])
    assert out is not base and base.seed == 0 and base.eval.shards == ""  # a new config; the input untouched
    assert out.seed == 7 and out.eval.shards == "/data/a=b" and out.optim.betas == (0.8, 0.9)
    assert out.data.batch_size == 3 and out.checkpoint.signals == ("term",) and out.synthetic_samples == 3
    with pytest.raises(ConfigError, match="not of the form"):
        apply_overrides(base, ["seed"])
    with pytest.raises(ConfigError, match="unknown key 'data'"):
        apply_overrides(base, ["data=3"])  # a section is no root field
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        apply_overrides(base, ["bogus=1"])
    with pytest.raises(ConfigError, match="unknown key 'optim.lr.x'"):
        apply_overrides(base, ["optim.lr.x=1"])
    with pytest.raises(ConfigError, match="unknown key 'nosection.lr'"):
        apply_overrides(base, ["nosection.lr=1"])
    with pytest.raises(ConfigError, match="unknown field 'optim.rate'"):
        apply_overrides(base, ["optim.rate=1"])
    with pytest.raises(ConfigError, match="optim.lr: expected a float"):
        apply_overrides(base, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="data.shards is empty"):
        apply_overrides(TrainConfig(), [])  # the data check runs after overrides
    with pytest.raises(ConfigError, match="mask.ratio"):
        apply_overrides(base, ["mask.ratio=1.0"])  # the section's own checks run again


def test_dict_round_trip_and_build_errors() -> None:
    cfg = apply_overrides(TrainConfig(synthetic_data=True), ["optim.betas=0.8,0.9", "checkpoint.signals=SIGINT",
                                                             "finetune.num_classes=5", "qa.k_test=9"])
    d = config_to_dict(cfg)
    assert d["optim"]["betas"] == [0.8, 0.9] and d["checkpoint"]["signals"] == ["SIGINT"]  # JSON lists
    assert list(d) == [f.name for f in dataclasses.fields(TrainConfig)]
    back = config_from_dict(d)
    assert back == cfg and back.optim.betas == (0.8, 0.9) and isinstance(back.checkpoint.signals, tuple)
    assert config_from_dict({"seed": 3}).seed == 3  # absent sections take their defaults
    assert config_from_dict({"seed": 3}).qa == QAConfig()
    with pytest.raises(ConfigError, match=r"unknown fields \['zz'\] in optim"):
        config_from_dict({"optim": {"lr": 1e-3, "zz": 1}})
    with pytest.raises(ConfigError, match=r"unknown fields \['zz'\] in root"):
        config_from_dict({"zz": 1})
    with pytest.raises(ConfigError, match="^model: "):  # a TypeError of the section's constructor, named
        config_from_dict({"model": {"drop_path": "x"}})
    with pytest.raises(ConfigError, match="mask.ratio must be in"):  # a ConfigError passes through unwrapped
        config_from_dict({"mask": {"ratio": 2.0}})


def test_parse_errors_name_the_key_and_tuples_keep_inner_letters() -> None:
    for text, tp in (("x", float | None), ("0.9,x", tuple[float, float]), ("1,x", tuple[int, ...])):
        with pytest.raises(ConfigError, match=r"^optim.k: expected an? (float|int), got 'x'$"):
            _parse_value(text, tp, "optim.k")
    with pytest.raises(ConfigError, match=r"^seed: expected an int, got 'abc'$"):
        apply_overrides(TrainConfig(synthetic_data=True), ["seed=abc"])
    # only brackets, parentheses and spaces are stripped from a tuple's ends, not letters
    assert _parse_value("XA,BX", tuple[str, ...], "k") == ("XA", "BX")


@pytest.mark.parametrize("batch,world,gb", [(2, 1, 6), (2, 3, 12)])
def test_accumulation_steps_is_an_int(batch: int, world: int, gb: int) -> None:
    cfg = TrainConfig()
    cfg.data.batch_size, cfg.optim.global_batch = batch, gb
    assert type(accumulation_steps(cfg, world)) is int
