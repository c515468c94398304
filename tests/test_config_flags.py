"""Flags and environment variables generated from the config dataclasses: every
field has a flag with its help text, values reach the configs, and the server
runs with the training, evaluation and retrain-policy settings it was given."""

from __future__ import annotations

import argparse
import dataclasses
import enum
from pathlib import Path

import pytest

import launch
from core.config import ServeConfig, _help
from core.flags import add_flags, config_flags, from_args
from training.config import EvalConfig, RetrainPolicy, TrainConfig


class Colour(str, enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass
class Example:
    """A config as someone might add a field to it."""

    size: int = _help("How big.", default=3)
    ratio: float | None = _help("How much; empty for none.", default=None)
    colour: Colour = _help("Which colour.", default=Colour.RED)
    loud: bool = _help("Shout.", default=False)
    hidden: str = _help("Not a flag.", default="x", flag=False)


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
    for f in dataclasses.fields(config_class):
        flag = "--" + (f"{prefix}-" if prefix else "") + f.name.replace("_", "-")
        assert flag in text, f"{config_class.__name__}.{f.name} has no flag {flag}"
        assert f.metadata.get("help"), f"{config_class.__name__}.{f.name} has no help text"
        assert "".join(f.metadata["help"].split()) in "".join(text.split())  # argparse wraps lines at hyphens too


def test_train_and_eval_commands_take_their_settings(capsys):
    train = help_of("train", capsys=capsys)
    assert all(f"--train-{f.name.replace('_', '-')}" in train for f in dataclasses.fields(TrainConfig))
    assert all(f"--eval-{f.name.replace('_', '-')}" in train for f in dataclasses.fields(EvalConfig))
    evaluate = help_of("eval", capsys=capsys)
    assert all(f"--eval-{f.name.replace('_', '-')}" in evaluate for f in dataclasses.fields(EvalConfig))


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


def test_defaults_match_the_dataclasses(monkeypatch):
    for config_class, prefix in SERVE_CONFIGS:
        for flag in config_flags(config_class, prefix):
            monkeypatch.delenv(flag.env, raising=False)
    configs = launch.serve_configs(launch.build_parser().parse_args(["serve"]))
    assert configs == (ServeConfig(), TrainConfig(), EvalConfig(), RetrainPolicy())


def test_a_new_field_gets_its_flag_without_further_code():
    parser = argparse.ArgumentParser()
    add_flags(parser, Example, "ex", environ={"EXEMPLAR_EX_RATIO": "0.5"})
    parsed = from_args(parser.parse_args(["--ex-size", "5", "--ex-colour", "blue", "--ex-loud"]), Example, "ex")
    assert parsed == Example(size=5, ratio=0.5, colour=Colour.BLUE, loud=True)
    assert from_args(parser.parse_args(["--ex-ratio", ""]), Example, "ex").ratio is None
    assert "--ex-hidden" not in parser.format_help() and "How big. (env EXEMPLAR_EX_SIZE; default 3)" in words(
        parser.format_help()
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["--ex-colour", "green"])


def test_a_bad_environment_value_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        add_flags(argparse.ArgumentParser(), ServeConfig, environ={"EXEMPLAR_PORT": "eighty"})
    assert exited.value.code == 2 and "EXEMPLAR_PORT='eighty'" in capsys.readouterr().err


def test_problems_of_every_config_are_reported_together(tmp_path, capsys):
    code = launch.main(["serve", "--port", "0", "--train-epochs", "0", "--retrain-min-new-examples", "0",
                        "--eval-batch-size", "0", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    for fragment in ("--port 0", "epochs=0", "min_new_examples", "batch_size"):
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
