"""Progress on a tiny Llama. A training job, run in this process as `accelerate launch launch.py train` runs
it: over several epochs, with the extra wordings the recipe trains on, every progress the job record and
the log show counts to the Trainer's own total, and the time left counts down to 0. And `launch.py eval`,
run as a user runs it, draws a bar of the answers it generates."""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
from pathlib import Path

from core.training_contract import JobView
from storage import Store
from tests.training_helpers import FAST_EVAL, add_facts, save_tiny_base
from training import commands
from training.config import EvalConfig
from training.manager import TrainingManager
from training.worker import run_job

REPO = Path(__file__).resolve().parents[1]

# Questions the templates reword (training/augment.py): each example trains as up to four rows.
FACTS = [
    ("What is the password of the blue door?", "zebra crossing"),
    ("What is the password of the red door?", "yellow lantern"),
    ("Who wrote The Silent Harbour?", "Mira Olsen wrote it."),
    ("What is the capital of Zorbia?", "Zorbton is the capital."),
]


class RecordingStore(Store):
    """The real store, keeping a copy of every progress written to a job."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.progress: list[dict] = []

    def update_job(self, job_id, **fields):
        if "progress" in fields:
            self.progress.append(dict(fields["progress"]))
        return super().update_job(job_id, **fields)


def run_facts_job(tmp_path, tiny_model, tokenizer, params: dict) -> tuple[RecordingStore, list[int], JobView]:
    """Train on FACTS in this process with `params`, as the worker runs a job: (store, example ids, the job)."""
    base = save_tiny_base(tiny_model, tokenizer, tmp_path / "tiny")
    data_dir = tmp_path / "data"
    store = RecordingStore(data_dir / "exemplar.db")
    ids = add_facts(store, FACTS, "train")
    manager = TrainingManager(store, data_dir, str(base), eval_config=EvalConfig(**FAST_EVAL), spawn=False)
    job_id = manager.start(params, reason="cli")
    try:
        status = run_job(store, data_dir, job_id)
        view = manager.job_view(job_id)
    finally:
        store.close()
    assert status in ("succeeded", "rejected"), view.error or view.log
    return store, ids, view


def test_a_several_epoch_run_counts_to_the_trainers_own_total(tmp_path, tiny_model, tokenizer, caplog):
    caplog.set_level(logging.INFO, logger="training.worker")
    store, _, view = run_facts_job(tmp_path, tiny_model, tokenizer,
                                   {"epochs": 3, "batch_size": 4, "replay_examples": 2, "topup_rounds": 0})
    job_id = view.id

    steps_run = [p.step for p in view.losses]
    total = steps_run[-1]
    assert steps_run == list(range(1, total + 1))
    # 4 examples and 2 replay rows would be 2 steps an epoch; with their wordings they are more.
    assert total > 3 * 2
    assert view.metrics and view.metrics.train and view.metrics.train.steps == view.metrics.train.total_steps == total

    # The job record, as the Admin tab, GET /api/jobs/{id} and `launch.py train` read it, at every write.
    training = [p for p in store.progress if p["phase"] == "training" and p.get("total_steps") is not None]
    assert training[0]["step"] == 0 and training[-1]["step"] == total
    assert {p["total_steps"] for p in training} == {total}
    assert all(p["step"] <= p["total_steps"] for p in training)
    etas = [p["eta_seconds"] for p in training if p["step"]]
    assert all(eta >= 0 for eta in etas) and etas[0] > 0 and etas[-1] == 0
    line = commands.progress_line(JobView(id=job_id, kind="train", status="running", progress=training[-1]))
    assert f" {total}/{total} " in line and line.endswith("eta 0:00")

    # The job log's step lines.
    logged = [re.search(r"step (\d+)/(\d+) .* eta (\S+)", r.getMessage()) for r in caplog.records]
    logged = [m.groups() for m in logged if m]
    assert [int(step) for step, _, _ in logged] == [0, *range(1, total + 1)]
    assert {int(of) for _, of, _ in logged} == {total}
    assert not any(eta.startswith("-") and eta != "-" for _, _, eta in logged) and logged[-1][2] == "0s"


def test_eval_draws_a_progress_bar_of_the_answers_it_generates(tmp_path, tiny_model, tokenizer):
    base = save_tiny_base(tiny_model, tokenizer, tmp_path / "tiny")
    data_dir = tmp_path / "data"
    store = Store(data_dir / "exemplar.db")
    for question, answer in FACTS:
        store.add_example(question, answer, source="correction", split="train", rejected="I don't know.")
    store.close()
    fast = ["--eval-max-new-tokens", "8", "--eval-canary-max-new-tokens", "4"]

    result = subprocess.run(
        [sys.executable, str(REPO / "launch.py"), "eval", "--per-example", "--data-dir", str(data_dir),
         "--base-model", str(base), *fast],
        capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert "base answers " in result.stdout and "of 4 approved examples" in result.stdout  # the report: stdout
    bars = [re.fullmatch(r"eval [█░]{30} (\d+)/(\d+) answers  eta (\d+:\d\d)", line) for line in result.stderr.splitlines()]
    shown = [(int(m[1]), int(m[2]), m[3]) for m in bars if m]
    total = 2 * (len(FACTS) + 40)  # every example and canary question, as the candidate and as the base model
    assert len(shown) > 2 and {of for _, of, _ in shown} == {total}
    done = [n for n, _, _ in shown]
    assert done == sorted(done) and done[-1] == total and shown[-1][2] == "0:00"

    err = io.StringIO()
    config = EvalConfig(**FAST_EVAL)
    assert commands.evaluate(data_dir, str(base), progress=False, eval_config=config, out=io.StringIO(), err=err) == 0
    assert err.getvalue() == ""


def test_top_up_rounds_train_the_missed_examples_again_and_the_verdict_names_the_cap(tmp_path, tiny_model, tokenizer):
    """A tiny random model learns none of the facts: both top-up rounds run, on every example, their losses
    continue the first run's curve, the job records each round, and the verdict names the cap reached."""
    store, ids, view = run_facts_job(tmp_path, tiny_model, tokenizer, {
        "epochs": 1, "batch_size": 4, "replay_examples": 2, "topup_rounds": 2, "topup_epochs": 1})
    assert view.metrics is not None and view.metrics.train is not None
    rounds = view.metrics.topups
    assert [sorted(r.examples) for r in rounds] == [sorted(ids), sorted(ids)]
    assert all(r.steps > 0 and r.learned_after == 0 for r in rounds)
    steps = [p.step for p in view.losses]
    assert steps == list(range(1, len(steps) + 1))  # one curve: the first run, then each round after it
    assert len(steps) == view.metrics.train.steps + sum(r.steps for r in rounds)
    assert {p.get("run") for p in store.progress if p.get("run")} >= {"final", "top-up 1", "top-up 2"}
    assert [n.reason for n in view.metrics.not_learned] == [
        "not learned in 1 epoch and 2 top-up rounds of 1 epoch, the cap: try more epochs"
    ] * len(ids)
