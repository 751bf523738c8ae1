"""Config and recipes: --set parsing, rejection of unknown keys/ill-typed values, cross-field checks."""

from __future__ import annotations

import pytest

from umt.train.__main__ import main
from umt.config import ConfigError, apply_overrides, config_from_dict, config_to_dict
from umt.train.recipes import RECIPES, get_recipe
from umt.train.step import peak_lr
from umt.train.task import check_config


def test_paper_recipes_follow_design() -> None:
    b, l = get_recipe("umt_b16_k710"), get_recipe("umt_l16_k710")
    assert (b.data.batch_size, b.data.num_frames, b.data.input_size) == (64, 8, 224)
    assert b.optim.betas == (0.9, 0.95) and b.optim.weight_decay == 0.05
    assert (b.optim.epochs, b.optim.warmup_epochs, b.optim.clip_grad) == (200, 40, 0.0)
    assert b.mask.kind == "semantic" and b.mask.ratio == 0.8 and b.model.drop_path == 0.1
    assert l.model.teacher == "ViT-L-14" and l.model.teacher_image_size == 196 and l.model.drop_path == 0.2
    # lr scaled by the global batch: 64 × 32 GPUs = 2048 → 1.5e-4 × 8 = 1.2e-3, min 8e-5.
    peak, low = peak_lr(b, world_size=32)
    assert peak == pytest.approx(1.2e-3) and low == pytest.approx(8e-5)
    assert set(RECIPES) >= {"umt_b16_k710", "umt_l16_k710", "demo"}


def test_overrides_parse_types() -> None:
    cfg = apply_overrides(get_recipe("demo"), ["optim.lr=5e-2", "optim.betas=0.8,0.9", "log.tensorboard=false",
                                               "data.scales=1.0,0.5", "mask.kind=tube", "seed=3",
                                               "synthetic_data=yes"])
    assert cfg.optim.lr == 5e-2 and cfg.optim.betas == (0.8, 0.9) and cfg.log.tensorboard is False
    assert cfg.data.scales == (1.0, 0.5) and cfg.mask.kind == "tube" and cfg.seed == 3 and cfg.synthetic_data
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize("override, needle", [
    ("optim.lrr=1", "valid fields of 'optim'"),
    ("optimizer.lr=1", "valid sections"),
    ("bogus=1", "root fields"),
    ("optim.lr=fast", "expected a float"),
    ("data.batch_size=1.5", "expected an int"),
    ("log.tensorboard=maybe", "expected a bool"),
    ("optim.betas=0.9", "2 comma-separated"),
    ("mask.kind=blocks", "mask.kind"),
    ("optim.min_lr=1", "min_lr"),
    ("model.teacher_image_size=100", "grid"),
    ("data.shards=", "data.shards is empty"),
    ("no_equals_sign", "section.field=value"),
])
def test_bad_overrides_rejected(override: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("(", r"\(")):
        check_config(apply_overrides(get_recipe("umt_b16_k710"), [override]))  # the task's own checks too


def test_unknown_field_message_lists_valid_fields() -> None:
    with pytest.raises(ConfigError) as e:
        apply_overrides(get_recipe("demo"), ["model.widht=3"])
    assert "drop_path" in str(e.value) and "teacher_weights" in str(e.value)


def test_cli_rejects_bad_set(capsys) -> None:
    assert main(["--recipe", "demo", "--set", "optim.nope=1"]) == 2
    assert "valid fields" in capsys.readouterr().err
    assert main(["--recipe", "demo", "--set", "optim.lr=0.5", "--print-config"]) == 0
    assert '"lr": 0.5' in capsys.readouterr().out


def test_recipe_epochs_documented_and_global_batch_fixed() -> None:
    from umt.config import accumulation_steps

    b = get_recipe("umt_b16_k710")
    assert b.optim.epochs == 200 and "201" in (RECIPES["umt_b16_k710"].__doc__ or "")  # paper 200, scripts 201
    assert b.optim.global_batch == 2048
    assert [accumulation_steps(b, w) for w in (8, 16, 32)] == [4, 2, 1]
    assert peak_lr(b, 8) == peak_lr(b, 32)  # same optimisation on 8 or 32 GPUs
    with pytest.raises(ConfigError, match="multiple"):
        accumulation_steps(b, 6)
