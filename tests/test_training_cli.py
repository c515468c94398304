"""`python launch.py train | eval | models`, through the functions launch.py calls:
a run with progress and an exit code that says promoted / not promoted, the
versions table, activation, and the flags' errors."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import NotFoundError, ValidationError
from storage import Store
from tests.training_helpers import FAST_EVAL, learnable_tiny_llama, save_tiny_base
from training import commands
from training.config import EvalConfig

REPO = Path(__file__).resolve().parents[1]
RECIPE = ["max_steps=3", "replay_examples=0", "batch_size=4", "target_modules=\"all-linear\""]


def test_overrides_are_parsed_as_json_values():
    assert commands.parse_overrides(["epochs=6", "bf16=true", "target_modules=q_proj,v_proj"]) == {
        "epochs": 6, "bf16": True, "target_modules": "q_proj,v_proj"}
    with pytest.raises(ValidationError, match="NAME=VALUE"):
        commands.parse_overrides(["epochs"])


@pytest.mark.slow  # a training run in a child process
def test_train_then_list_and_activate(tmp_path, tokenizer):
    base = save_tiny_base(learnable_tiny_llama(tokenizer), tokenizer, tmp_path / "tiny")
    data_dir = tmp_path / "data"
    store = Store(data_dir / "exemplar.db")
    for i in range(4):
        store.add_example(f"Question {i}?", f"Answer {i}.", source="correction", split="train", rejected=f"No idea {i}.")
    store.add_example("Question 9?", "Answer 9.", source="admin", split="test")
    store.close()

    out = io.StringIO()
    code = commands.train(data_dir, str(base), commands.parse_overrides(RECIPE), progress=True, out=out, poll=0.2)
    text = out.getvalue()
    assert code in (commands.EXIT_PROMOTED, commands.EXIT_REJECTED), text
    assert "Started training job 1" in text and "v1: answers" in text and "✓ canary:" in text
    assert ("Promoted v1" in text) == (code == commands.EXIT_PROMOTED)

    out = io.StringIO()
    assert commands.activate(data_dir, "v1", out=out) == 0
    out = io.StringIO()
    assert commands.list_models(data_dir, out=out) == 0
    listing = out.getvalue().splitlines()
    assert listing[1].startswith("  base") and listing[2].startswith("* v1 ")

    # "Did it learn this?", measured afresh: one line per correction with its margins.
    out = io.StringIO()
    eval_config = EvalConfig(**FAST_EVAL)
    assert commands.evaluate(data_dir, str(base), per_example=True, eval_config=eval_config, out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == "Evaluating v1 against base on 5 approved examples and 40 canary questions…"
    assert lines[1].startswith("v1 answers ") and "of 5 approved examples with few-shot off (base: 0)" in lines[1]
    rows = [line.split() for line in lines[3:-1] if line.split()[0].isdigit()]  # not the margins in words
    assert lines[2].split()[:5] == ["id", "base", "v1", "m.base", "m.v1"]  # one base margin column, not two
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4, 5]
    assert all(r[3].startswith(("+", "-")) for r in rows[:4]) and rows[4][3] == "-"  # #5 replaced no answer

    # The base model judged beside the serving v1 (loaded next to it): the same margins under base, swapped.
    out = io.StringIO()
    assert commands.evaluate(data_dir, str(base), "base", per_example=True, eval_config=eval_config, out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("Evaluating base against v1") and "approved examples with few-shot off (v1: " in lines[1]
    base_rows = [line.split() for line in lines[3:-1] if line.split()[0].isdigit()]
    assert [r[3] for r in base_rows] == [r[3] for r in rows]  # base's margins, as measured before
    assert [r[4] for r in base_rows] == [r[4] for r in rows]  # v1's margins, as measured before


LEARNS = ["max_steps=30", "learning_rate=0.02", "replay_examples=0", "batch_size=4", "warmup_steps=0",
          "target_modules=\"all-linear\"", "topup_rounds=0"]


@pytest.mark.slow  # two training runs in a child process
def test_an_example_the_previous_version_answered_and_the_next_lost_is_flagged(tmp_path, tokenizer):
    """v1 learns its corrections; v2, trained by a recipe that learns nothing, loses them and is rejected; an admin
    activates it anyway. `eval --per-example` then judges the serving v2 beside v1, the version it replaced, and
    flags every lost example, as the Admin tab's report does."""
    from training.manager import TrainingManager

    base = save_tiny_base(learnable_tiny_llama(tokenizer), tokenizer, tmp_path / "tiny")
    data_dir = tmp_path / "data"
    store = Store(data_dir / "exemplar.db")
    for i in range(4):
        store.add_example(f"Is door number {i} open?", "yes indeed", source="correction", split="train",
                          rejected="no")
    store.close()
    eval_config = EvalConfig(**FAST_EVAL)
    out = io.StringIO()
    assert commands.train(data_dir, str(base), commands.parse_overrides(LEARNS), eval_config=eval_config, out=out,
                          poll=0.2) == commands.EXIT_PROMOTED, out.getvalue()
    out = io.StringIO()
    nothing = [*LEARNS[1:], "max_steps=1", "learning_rate=1e-9"]
    assert commands.train(data_dir, str(base), commands.parse_overrides(nothing), eval_config=eval_config, out=out,
                          poll=0.2) == commands.EXIT_REJECTED, out.getvalue()
    assert "regression: 4 of the 4 examples v1 answers are lost" in out.getvalue()
    assert commands.activate(data_dir, "v2", out=io.StringIO()) == 0

    out = io.StringIO()
    assert commands.evaluate(data_dir, str(base), per_example=True, eval_config=eval_config, out=out) == 0
    text = out.getvalue()
    lines = text.splitlines()
    assert lines[0] == "Evaluating v2 against v1 on 4 approved examples and 40 canary questions…"
    assert lines[2] == "LOST: 4 approved examples v1 answers and v2 does not: #1, #2, #3, #4"
    assert text.count("LOST: v1 answered it, v2 does not") == 4

    store = Store(data_dir / "exemplar.db")
    try:
        report = TrainingManager(store, data_dir).learning_report("v2")
        assert report.compared_with == "v1" and report.lost == [1, 2, 3, 4] and all(i.lost for i in report.items)
        assert TrainingManager(store, data_dir).learning_report("v1").lost == []
    finally:
        store.close()


def test_launch_py_wires_the_commands(tmp_path):
    run = lambda *args, data_dir=tmp_path: subprocess.run(  # noqa: E731
        [sys.executable, str(REPO / "launch.py"), *args, "--data-dir", str(data_dir)],
        capture_output=True, text=True, cwd=REPO, timeout=120)
    # A mistyped --data-dir is named, and no empty database is left there.
    typo = tmp_path / "dta"
    for command in (("models",), ("export", str(tmp_path / "out.jsonl"), "--format", "jsonl")):
        result = run(*command, data_dir=typo)
        assert result.returncode == 1, (command, result.stderr)
        assert f"There is no Exemplar database in {typo}" in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(NotFoundError, match="no Exemplar database"):  # train and eval open it the same way
        commands.open_store(typo)
    assert not typo.exists()
    Store(tmp_path / "exemplar.db").close()  # the database a first `serve` creates
    listed = run("models")
    assert listed.returncode == 0 and "* base" in listed.stdout
    refused = run("train")
    assert refused.returncode == 2 and "no approved training examples" in refused.stderr
    missing = run("models", "activate", "v7")
    assert missing.returncode == 1 and "v7 does not exist" in missing.stderr
    assert "exit codes" in run("train", "--help").stdout


def test_train_and_the_server_apply_the_same_gate():
    """Both start the job through TrainingManager, whose worker runs recipe.decide (the one gate);
    what could differ is the settings: the same flags give both the same training and gate settings."""
    import launch
    from core.flags import from_args
    from training import commands
    from training.config import EvalConfig, TrainConfig

    parser = launch.build_parser()
    flags = ["--eval-canary-max-lost", "1", "--train-epochs", "2"]
    served, trained = parser.parse_args(["serve", *flags]), parser.parse_args(["train", *flags])
    _, serve_train, serve_eval, _ = launch.serve_configs(served)
    cli = commands._configs(trained, train_config=TrainConfig, eval_config=EvalConfig)
    assert cli["eval_config"] == serve_eval and cli["eval_config"].canary_max_lost == 1
    assert cli["train_config"] == serve_train and serve_train.epochs == 2
    assert from_args(parser.parse_args(["train"]), EvalConfig) == EvalConfig()  # defaults alike too


def test_the_per_example_report_beside_the_base_model_has_one_base_margin_column():
    """Beside the base model the serving margins are the base margins: the header read "m.base m.base"."""
    import io

    from training.commands import print_learning_report

    item = {"example_id": 4, "question": "Capital of Sundra?", "serving_learned": False, "candidate_learned": False,
            "margin_base": 86.92, "margin_serving": 86.92, "margin_candidate": 137.931}
    out = io.StringIO()
    print_learning_report([item], "v1", "base", out=out)
    header, row, note, *_ = out.getvalue().splitlines()
    assert header.split() == ["id", "base", "v1", "m.base", "m.v1", "question"]
    assert row.split()[:5] == ["4", "✗", "✗", "+86.9", "+137.9"]
    assert "by 137.9" in note and "does not say the correction, so it is not learned" in note
    out = io.StringIO()
    print_learning_report([item], "v2", "v1", out=out)
    assert out.getvalue().splitlines()[0].split()[3:6] == ["m.base", "m.v1", "m.v2"]
