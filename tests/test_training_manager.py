"""Training jobs as child processes, on a tiny Llama: a run records a version and
reports progress, one job at a time, clean cancel, a killed process is detected
and leaves nothing half-written while the server keeps serving, the retrain
policy, and activation / rollback through the store the server watches."""

from __future__ import annotations

import os
import signal
import time

import pytest

from core.errors import ConflictError, NotFoundError, ValidationError
from core.training_contract import Activation
from storage import Store
from tests.training_helpers import FAST_EVAL, add_facts, save_tiny_base, wait_for
from training.config import EvalConfig, RetrainPolicy
from training.manager import TrainingManager

QUICK = {"max_steps": 2, "replay_examples": 2, "batch_size": 4, "topup_rounds": 0}  # one run of 2 steps
TRAIN = [(f"What is fact number {i}?", f"Fact {i} is zorb{i}.") for i in range(6)]
TEST = [("What is fact number 99?", "Fact 99 is zorb99.")]


def adapter_folders(data_dir):
    folder = data_dir / "adapters"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.fixture
def tiny_base(tmp_path, tiny_model, tokenizer):
    return save_tiny_base(tiny_model, tokenizer, tmp_path / "tiny-base")


@pytest.fixture
def setup(tmp_path, tiny_base):
    data_dir = tmp_path / "data"
    store = Store(data_dir / "exemplar.db")
    manager = TrainingManager(
        store, data_dir, str(tiny_base), eval_config=EvalConfig(**FAST_EVAL), heartbeat_timeout=60
    )
    yield store, manager, data_dir
    for job in store.list_jobs():
        if job["status"] in ("queued", "running") and job.get("pid"):
            try:
                os.killpg(job["pid"], signal.SIGKILL)
            except OSError:
                pass
    store.close()


@pytest.mark.slow  # a training run in a child process
def test_a_run_trains_evaluates_and_records_a_version(setup):
    store, manager, data_dir = setup
    train_ids = add_facts(store, TRAIN, "train")
    test_ids = add_facts(store, TEST, "test")
    job_id = manager.start(QUICK)
    with pytest.raises(ConflictError, match="already"):
        manager.start(QUICK)
    view = manager.wait(job_id, timeout=300)
    assert view.status in ("succeeded", "rejected"), view.error or view.log
    assert view.model_version == "v1" and view.promoted is (view.status == "succeeded")
    assert [p.step for p in view.losses] == [1, 2]
    assert view.progress.phase == "done" and view.progress.total_steps == 2
    metrics = view.metrics
    assert metrics is not None
    assert metrics.heldout.n == 1 and metrics.heldout.selection_run is False  # 1 held-out example decides nothing
    assert metrics.heldout.accuracy is None
    assert metrics.canary.n == 40 and metrics.compared_with == "base"
    assert metrics.learned.n == 7 and len(metrics.gate.reasons) == 5  # learned, regression, held-out, canary, downvoted

    version = store.get_model_version("v1")
    assert version["example_ids"] == train_ids + test_ids  # every approved example is trained on
    assert version["job_id"] == job_id and version["train_config"]["max_steps"] == 2
    assert (data_dir / "adapters" / "v1" / "adapter_config.json").is_file()
    assert adapter_folders(data_dir) == ["v1"]
    assert {e["trained_in_version"] for e in store.list_examples()} == {"v1"}
    assert [i.example_id for i in manager.learning_report("v1").items] == train_ids + test_ids
    assert "Promoted" in view.log or "Rejected" in view.log
    assert manager.models_view()[0].version == "v1"


def test_bad_hyper_parameters_and_an_empty_train_set_are_refused(setup):
    store, manager, _ = setup
    with pytest.raises(ValidationError, match="no approved training examples"):
        manager.start()
    add_facts(store, TRAIN, "train")
    with pytest.raises(ValidationError, match="Unknown hyper-parameter"):
        manager.start({"epoch": 3})
    with pytest.raises(ValidationError, match="learning_rate"):
        manager.start({"learning_rate": -1})
    assert store.list_jobs() == []
    with pytest.raises(NotFoundError):
        manager.job_view(42)
    with pytest.raises(NotFoundError):
        manager.cancel(42)


@pytest.mark.slow  # a training run in a child process
def test_cancel_stops_cleanly_and_leaves_nothing(setup):
    store, manager, data_dir = setup
    add_facts(store, TRAIN, "train")
    job_id = manager.start({**QUICK, "max_steps": 2000})
    wait_for(lambda: (manager.job_view(job_id).progress.step or 0) >= 1, 300, what="a training step")
    manager.cancel(job_id)
    view = manager.wait(job_id, timeout=120)
    assert view.status == "cancelled" and view.model_version is None
    assert store.list_model_versions() == []
    assert adapter_folders(data_dir) == []
    with pytest.raises(ConflictError, match="already cancelled"):
        manager.cancel(job_id)


@pytest.mark.slow  # a training run in a child process
def test_a_killed_process_is_marked_failed_leaves_no_version_and_the_server_serves(setup, tiny_model, tokenizer):
    from bot.serving.base import GenerationParams
    from bot.serving.engine import Engine
    from bot.serving.watcher import ModelWatcher

    store, manager, data_dir = setup
    add_facts(store, TRAIN, "train")
    engine = Engine(tiny_model, tokenizer, base_name="tiny", max_context_tokens=256)
    watcher = ModelWatcher(engine, store, data_dir)
    job_id = manager.start({**QUICK, "max_steps": 2000})
    pid = wait_for(lambda: manager.job_view(job_id).progress.step and store.get_job(job_id)["pid"], 300)
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: manager.reap(), 30, what="reap to notice")
    view = manager.job_view(job_id)
    assert view.status == "failed" and "exited" in (view.error or "")
    assert store.list_model_versions() == [] and store.active_job() is None
    assert adapter_folders(data_dir) == []
    assert watcher.sync() == "base"
    assert engine.generate([{"role": "user", "content": "Still there?"}], GenerationParams(max_new_tokens=4)).completion_tokens > 0


def test_a_stale_heartbeat_from_another_process_is_failed(setup):
    store, manager, _ = setup
    job_id = store.create_job("train", {})
    store.update_job(job_id, status="running", pid=2**22 + 12345, heartbeat_at="2000-01-01T00:00:00.000+00:00")
    assert manager.reap() == [job_id]
    assert store.get_job(job_id)["status"] == "failed"


@pytest.mark.slow  # a training run in a child process
def test_retrain_policy_counts_new_approved_training_examples(setup):
    store, manager, _ = setup
    manager.policy = RetrainPolicy(min_new_examples=4)
    add_facts(store, TRAIN[:2], "train")
    add_facts(store, TEST, "test")  # held-out examples count too: every approved example is trained on
    store.add_example("Pending?", "Not yet.", source="correction", status="pending", split="train")
    assert manager.check_schedule() is None
    assert manager.schedule_status().new_examples == 3
    add_facts(store, TRAIN[2:3], "train")
    job_id = manager.check_schedule()
    assert job_id is not None and store.get_job(job_id)["params"]["reason"].startswith("schedule")
    assert manager.check_schedule() is None  # one at a time
    manager.cancel(job_id)
    manager.wait(job_id, timeout=120)
    assert manager.schedule_status().new_examples == 0  # counted from the last run's start
    manager.policy = RetrainPolicy(enabled=False)
    add_facts(store, TRAIN[3:], "train")
    assert manager.check_schedule() is None


def test_activate_and_rollback_along_the_parents_write_the_store(setup, tmp_path):
    import torch
    from safetensors.torch import save_file

    store, manager, data_dir = setup
    for name, parent in (("v1", None), ("v2", "v1")):
        folder = data_dir / "adapters" / name
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text("{}")
        save_file({"lora": torch.zeros(2)}, str(folder / "adapter_model.safetensors"))  # activation reads it
        status = "rejected" if name == "v2" else "candidate"
        store.add_model_version(name, path=str(folder), status=status, parent_version=parent)
    assert manager.activate("v1") == Activation(active="v1", previous="base")
    assert manager.activate("v2") == Activation(active="v2", previous="v1")  # rejected versions too
    assert [r.version for r in manager.models_view() if r.active] == ["v2"]
    assert manager.rollback() == Activation(active="v1", previous="v2")
    assert manager.rollback().active == "base"
    assert store.active_version() is None
    with pytest.raises(ConflictError):
        manager.rollback()
    with pytest.raises(NotFoundError):
        manager.activate("v9")


@pytest.mark.slow  # a training run in a child process
def test_a_worker_whose_server_exits_stops_instead_of_training_on(tmp_path, tiny_base):
    """A stopped server (or killed CLI) must not leave its training worker burning the CPU."""
    import json
    import subprocess
    import sys

    data_dir = tmp_path / "data"
    store = Store(data_dir / "exemplar.db")
    add_facts(store, TRAIN, "train")
    owner = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from storage import Store\n"
        "from training.config import EvalConfig\n"
        "from training.manager import TrainingManager\n"
        "store = Store(Path(sys.argv[1]) / 'exemplar.db')\n"
        "manager = TrainingManager(store, Path(sys.argv[1]), sys.argv[2], eval_config=EvalConfig(**json.loads(sys.argv[3])))\n"
        "print(manager.start(json.loads(sys.argv[4])), flush=True)\n"
    )
    params = {**QUICK, "max_steps": 2000}
    done = subprocess.run(
        [sys.executable, "-c", owner, str(data_dir), str(tiny_base), json.dumps(FAST_EVAL), json.dumps(params)],
        capture_output=True, text=True, timeout=120, check=True,
    )
    job_id = int(done.stdout.strip().splitlines()[-1])  # the owner has exited; its worker runs on
    try:
        job = wait_for(lambda: (j := store.get_job(job_id))["status"] not in ("queued", "running") and j, 180,
                       what="the orphaned worker to stop")
        assert job["status"] == "cancelled" and "has exited" in job["error"]
        assert store.list_model_versions() == [] and adapter_folders(data_dir) == []
    finally:
        pid = store.get_job(job_id).get("pid")
        if store.get_job(job_id)["status"] in ("queued", "running") and pid:
            os.killpg(pid, signal.SIGKILL)
        store.close()


def test_an_automatic_run_says_which_counts_started_it(tmp_path):
    store = Store(tmp_path / "exemplar.db")
    manager = TrainingManager(store, tmp_path, spawn=False)
    manager.policy = RetrainPolicy(min_new_examples=3)
    for i in range(5):  # e.g. an import: the count passes the threshold at once
        store.add_example(f"Question {i}?", f"Answer {i}.", source="import")
    job_id = manager.check_schedule()
    reason = store.get_job(job_id)["params"]["reason"]
    assert reason == "schedule: 5 approved examples, and no run yet; the policy retrains at 3"
    assert manager.job_view(job_id).reason == reason  # what the Training tab's job line and past runs show
    store.update_job(job_id, status="succeeded")
    store.add_example("Question 9?", "Answer 9.", source="import")
    manager.policy = RetrainPolicy(min_new_examples=3, every_hours=0.000001)
    time.sleep(0.01)  # the timer (3.6 ms) must have run out: on a quiet machine the lines above take less
    later = manager.check_schedule()
    assert store.get_job(later)["params"]["reason"] == (
        "schedule: 1 approved example added or changed since the last run; the timer retrains every 1e-06 h "
        "when at least one has")
    store.close()
