"""Stage configurations, recipes, resume rules and the learning-rate schedule."""

import pytest
import yaml

from mixitcli.train.config import (
    ConfigError,
    FinetuneConfig,
    FreezeFinetuneConfig,
    PretrainConfig,
    build_config,
    resume_config,
)
from mixitcli.train.schedule import lr_factor


def test_stage_defaults_follow_the_paper():
    pre, fine, freeze = PretrainConfig(), FinetuneConfig(), FreezeFinetuneConfig()
    assert (pre.n_outputs, pre.batch_size, pre.epochs, pre.steps_per_epoch, pre.decay_factor, pre.loss) == (12, 128, 150, 2038, 0.965, "mixit")
    assert (pre.warmup_steps, pre.decay_stop_epoch * pre.steps_per_epoch) == (4000, 152_850)  # the authors' FMA-large config
    assert (fine.n_outputs, fine.batch_size, fine.epochs, fine.steps_per_epoch, fine.decay_start_epoch) == (4, 32, 900, 110, 550)
    assert (freeze.trainable, freeze.epochs) == ("encdec", 200)
    assert pre.weight_decay == fine.weight_decay == 1e-2 and pre.clip_norm == 5.0 and fine.warmup_steps == 5000
    assert pre.stem_norm == fine.stem_norm == "rms"  # the paper's; the table recipes choose mean_abs


def test_recipe_then_command_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"stage": "pretrain", "size": "small", "lr": 5e-4, "batch_size": 64}))
    config = build_config("pretrain", recipe=recipe, overrides={"data": "d", "out": "o", "batch_size": 16, "lr": None})
    assert (config.size, config.lr, config.batch_size) == ("small", 5e-4, 16)


def test_recipe_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: pretrain\nlearning_rate: 1\n")
    with pytest.raises(ConfigError, match="unknown option.*learning_rate"):
        build_config("pretrain", recipe=bad, overrides={"data": "d", "out": "o"})
    other = tmp_path / "other.yaml"
    other.write_text("stage: finetune\n")
    with pytest.raises(ConfigError, match="is a 'finetune' recipe"):
        build_config("pretrain", recipe=other, overrides={"data": "d", "out": "o"})


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as e:
        build_config("finetune", overrides={"batch_size": 0, "selection": "s.json", "mixit_solver": "greedy"})
    message = str(e.value)
    for part in ("data", "out", "batch_size", "selection needs init", "mixit_solver"):
        assert part in message


def test_resume_allows_only_runtime_changes():
    saved = build_config("pretrain", overrides={"data": "d", "out": "o", "max_steps": 10}).to_dict()
    assert resume_config(saved, {"max_steps": 20, "data": "d"}).max_steps == 20
    with pytest.raises(ConfigError, match="lr"):
        resume_config(saved, {"lr": 0.1})


def test_pretraining_schedule():
    # warm-up (s - 1) / 99 (clamped at 0), decay from step 101 every 50 steps, frozen from step 300
    c = PretrainConfig(warmup_steps=100, steps_per_epoch=50, decay_factor=0.5, decay_stop_epoch=6)
    assert [lr_factor(s, c) for s in (0, 1)] == [0.0, 0.0]
    assert lr_factor(50, c) == pytest.approx(49 / 99)
    assert lr_factor(99, c) == pytest.approx(98 / 99) and lr_factor(100, c) == 1.0
    assert lr_factor(101, c) == 1.0 and lr_factor(150, c) == 1.0
    assert lr_factor(151, c) == 0.5 and lr_factor(201, c) == 0.25
    assert lr_factor(251, c) == 0.5**3 and lr_factor(300, c) == lr_factor(10_000, c) == 0.5**3  # frozen after epoch 6


def test_no_warmup_means_full_rate_from_the_first_step():
    for warmup in (0, 1):
        c = PretrainConfig(warmup_steps=warmup, steps_per_epoch=4, decay_factor=0.5, decay_stop_epoch=None)
        assert [lr_factor(s, c) for s in range(warmup + 1)] == [1.0] * (warmup + 1)
        assert lr_factor(warmup + 1 + 4, c) == 0.5


def test_finetuning_schedule_holds_then_decays_every_two_epochs():
    # as the authors' fine-tuning configs: decay_start_step = 550 epochs x 110 steps, step_size 220
    c = FinetuneConfig(warmup_steps=10, steps_per_epoch=5, decay_start_epoch=4, decay_every_epochs=2, decay_factor=0.5)
    assert [lr_factor(s, c) for s in (0, 1, 2, 10, 19)] == [0.0, 0.0, pytest.approx(1 / 9), 1.0, 1.0]
    assert [lr_factor(s, c) for s in (20, 29, 30, 40)] == [1.0, 1.0, 0.5, 0.25]
