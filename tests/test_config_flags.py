"""Flags and environment variables generated from the config models: every
field has a flag, an environment variable and help text, values reach the
configs, every problem is reported at once naming its flag, and the server runs
with the training, evaluation and retrain-policy settings it was given."""

from __future__ import annotations

import argparse
import enum
from pathlib import Path

import pytest
from pydantic import Field

import launch
from core.config import MAX_TEMPERATURE, ServeConfig, Settings
from core.errors import ConfigError
from core.flags import add_flags, config_flags, from_args
from training.config import EvalConfig, RetrainPolicy, TrainConfig


class Colour(str, enum.Enum):
    RED = "red"
    BLUE = "blue"


class Example(Settings):
    """A config as someone might add a field to it."""

    flag_prefix = "ex"

    size: int = Field(default=3, ge=1, description="How big.")
    ratio: float | None = Field(default=None, description="How much; empty for none.")
    colour: Colour = Field(default=Colour.RED, description="Which colour.")
    loud: bool = Field(default=False, description="Shout.")
    token: str | None = Field(default="s3cret-default", repr=False, description="A secret.")


SERVE_CONFIGS = [(ServeConfig, ""), (TrainConfig, "train"), (EvalConfig, "eval"), (RetrainPolicy, "retrain")]


def words(text: str) -> str:
    """Text with argparse's line wrapping undone."""
    return " ".join(text.split())


def help_of(*argv: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        launch.main([*argv, "--help"])
    assert exited.value.code == 0
    return words(capsys.readouterr().out)


@pytest.mark.parametrize(("config_class", "prefix"), SERVE_CONFIGS)
def test_serve_help_shows_every_field_with_its_help_text(config_class, prefix, capsys):
    text = help_of("serve", capsys=capsys)
    assert config_class.flag_prefix == prefix
    for name, f in config_class.model_fields.items():
        flag = "--" + (f"{prefix}-" if prefix else "") + name.replace("_", "-")
        env = "EXEMPLAR_" + (f"{prefix}_" if prefix else "").upper() + name.upper()
        assert flag in text, f"{config_class.__name__}.{name} has no flag {flag}"
        assert f"env {env}" in text, f"{config_class.__name__}.{name} has no environment variable {env}"
        assert f.description, f"{config_class.__name__}.{name} has no help text"
        assert "".join(f.description.split()) in "".join(text.split())  # argparse wraps lines at hyphens too


def test_train_and_eval_commands_take_their_settings(capsys):
    train = help_of("train", capsys=capsys)
    assert all(f"--train-{name.replace('_', '-')}" in train for name in TrainConfig.model_fields)
    assert all(f"--eval-{name.replace('_', '-')}" in train for name in EvalConfig.model_fields)
    evaluate = help_of("eval", capsys=capsys)
    assert all(f"--eval-{name.replace('_', '-')}" in evaluate for name in EvalConfig.model_fields)


def test_flags_and_environment_fill_the_configs(monkeypatch):
    monkeypatch.setenv("EXEMPLAR_RETRAIN_MIN_NEW_EXAMPLES", "40")
    monkeypatch.setenv("EXEMPLAR_TRAIN_EPOCHS", "4")
    monkeypatch.setenv("EXEMPLAR_FEW_SHOT", "false")
    args = launch.build_parser().parse_args(
        ["serve", "--train-epochs", "6", "--no-retrain-enabled", "--retrain-every-hours", "2", "--eval-max-heldout",
         "9", "--review-policy", "manual", "--top-p", "0.9", "--data-dir", "/tmp/somewhere"]
    )
    config, train, evaluation, policy = launch.serve_configs(args)
    assert train.epochs == 6.0 and train.batch_size == TrainConfig().batch_size  # the flag beats the environment
    assert policy == RetrainPolicy(enabled=False, min_new_examples=40, every_hours=2.0)
    assert evaluation.max_heldout == 9
    assert config.review_policy == "manual" and config.top_p == 0.9 and config.few_shot is False
    assert config.data_dir == Path("/tmp/somewhere")


def test_defaults_match_the_models(monkeypatch):
    for config_class, _ in SERVE_CONFIGS:
        for flag in config_flags(config_class):
            monkeypatch.delenv(flag.env, raising=False)
    configs = launch.serve_configs(launch.build_parser().parse_args(["serve"]))
    assert configs == (ServeConfig(), TrainConfig(), EvalConfig(), RetrainPolicy())


def test_a_new_field_gets_its_flag_without_further_code():
    parser = argparse.ArgumentParser()
    add_flags(parser, Example, environ={"EXEMPLAR_EX_RATIO": "0.5"})
    parsed = from_args(parser.parse_args(["--ex-size", "5", "--ex-colour", "blue", "--ex-loud"]), Example)
    assert parsed == Example(size=5, ratio=0.5, colour=Colour.BLUE, loud=True)
    assert from_args(parser.parse_args(["--ex-ratio", ""]), Example).ratio is None
    text = words(parser.format_help())
    assert "How big. (env EXEMPLAR_EX_SIZE; default 3)" in text and "{red,blue}" in text
    assert "A secret. (env EXEMPLAR_EX_TOKEN)" in text and "s3cret" not in text  # a secret's default never shows
    with pytest.raises(SystemExit):
        parser.parse_args(["--ex-colour", "green"])
    with pytest.raises(ConfigError, match=r"--ex-size 0: must be at least 1, e\.g\. 3"):
        from_args(parser.parse_args(["--ex-size", "0"]), Example)
    with pytest.raises(ConfigError) as caught:
        Example(token="x" * 3, ratio=float("inf"))
    assert "--ex-ratio inf: must be a finite number" in str(caught.value) and "xxx" not in str(caught.value)


@pytest.mark.parametrize(("name", "value"), [("EXEMPLAR_PORT", "eighty"), ("EXEMPLAR_FEW_SHOT", "maybe"),
                                             ("EXEMPLAR_BACKEND", "vllm")])
def test_a_bad_environment_value_is_a_usage_error(name, value, capsys):
    with pytest.raises(SystemExit) as exited:
        add_flags(argparse.ArgumentParser(), ServeConfig, environ={name: value})
    assert exited.value.code == 2 and f"{name}={value!r}" in capsys.readouterr().err


def test_problems_of_every_config_are_reported_together(tmp_path, capsys):
    code = launch.main(["serve", "--port", "0", "--train-epochs", "0", "--retrain-min-new-examples", "0",
                        "--eval-batch-size", "0", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    for fragment in ("--port 0: must be at least 1", "--train-epochs 0: must be greater than 0, e.g. 6",
                     "--retrain-min-new-examples 0", "--eval-batch-size 0"):
        assert fragment in err


def test_the_server_runs_with_the_settings_it_was_given(tmp_path, monkeypatch):
    """launch.py serve hands its training, evaluation and retrain settings to the training manager."""
    import uvicorn

    import bot.server
    from bot.serving.engine import Engine
    from tests.fakes import FakeEngine

    built = {}
    real_build = bot.server.build_server

    def build_server(*args, **kwargs):
        built["training"] = kwargs["training"]
        return real_build(*args, **kwargs)

    monkeypatch.setattr(Engine, "load", classmethod(lambda cls, *a, **k: FakeEngine()))
    monkeypatch.setattr(bot.server, "build_server", build_server)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: built.update(app=app, **kwargs))
    code = launch.main(["serve", "--data-dir", str(tmp_path), "--port", "8123", "--admin-password", "a-long-secret",
                        "--retrain-min-new-examples", "7", "--train-lora-r", "8", "--eval-canary-max-lost", "2"])
    assert code == 0 and built["port"] == 8123
    trainer = built["training"]
    assert trainer.policy.min_new_examples == 7 and "Retrains when 7 new" in trainer.policy.describe()
    assert trainer.train_config.lora_r == 8 and trainer.eval_config.canary_max_lost == 2


def test_field_and_cross_field_problems_are_reported_together():
    """A setting out of range does not hide a rule between two others, nor a rule that reads a bad setting
    complain about the default that stood in for it."""
    with pytest.raises(ConfigError) as caught:
        ServeConfig(port=0, temperature=9, max_new_tokens=4096, max_context_tokens=2048, host="0.0.0.0",
                    backend="openai-upstream")
    problems = caught.value.problems
    assert problems == [
        "--port 0: must be at least 1, e.g. 7860",
        f"--temperature 9: must be at most {MAX_TEMPERATURE:g}, e.g. 0",
        "--max-new-tokens 4096 must be smaller than --max-context-tokens 2048, which holds the prompt too",
        (
            "--host 0.0.0.0 exposes the server beyond this machine: set --admin-password (or EXEMPLAR_ADMIN_PASSWORD) "
            "so the Admin tab is protected"
        ),
        "--backend openai-upstream needs --upstream-url, e.g. http://127.0.0.1:8000 (the vLLM server)",
    ]
    with pytest.raises(ConfigError) as caught:
        TrainConfig(batch_size=0, processes=3, lora_r=32, max_lora_rank=8, epochs=float("nan"))
    assert len(caught.value.problems) == 3  # batch_size's own problem, not "0 does not split over 3"
    assert "--train-batch-size 0: must be at least 1" in caught.value.problems[1]
    assert caught.value.problems[2].startswith("--train-lora-r 32 is above the upstream's --max-lora-rank 8")
    with pytest.raises(ConfigError) as caught:  # a short password: its own problem, not "set --admin-password"
        ServeConfig(host="0.0.0.0", admin_password="short")
    assert caught.value.problems == ["--admin-password: must be at least 8 characters"]


def test_configs_are_frozen_values_that_survive_a_round_trip_through_json():
    """The training worker gets its configs as JSON in the job row (training/manager.py -> recipe.prepare)."""
    import json

    config = TrainConfig(epochs=4, processes=2, accelerate_config=None, max_lora_rank=16)
    assert TrainConfig(**json.loads(json.dumps(config.model_dump()))) == config
    assert EvalConfig(**json.loads(json.dumps(EvalConfig().model_dump()))) == EvalConfig()
    with pytest.raises(Exception, match="frozen"):
        config.epochs = 1  # type: ignore[misc]


def test_the_upstream_backend_caps_the_lora_rank_at_vllms_default():
    args = launch.build_parser().parse_args(["serve", "--backend", "openai-upstream", "--upstream-url", "http://x:8000"])
    assert launch.serve_configs(args)[1].max_lora_rank == 16
    args = launch.build_parser().parse_args(["serve", "--train-max-lora-rank", "64", "--backend", "openai-upstream",
                                             "--upstream-url", "http://x:8000"])
    assert launch.serve_configs(args)[1].max_lora_rank == 64
