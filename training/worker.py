"""The training job, run as its own process: prepare → train → evaluate → record → clean up.

    python -m training.worker --job-id 7 --data-dir data

The manager (training/manager.py) creates the job row and starts this process
at low CPU priority with a fixed number of threads. Everything the process
does is reported through the job row: a heartbeat every few seconds, progress
and losses at each step, then the outcome. A cancel request (the row's
cancel_requested flag) stops it between two steps; nothing half-written stays
behind, because a version folder is renamed into place only when complete.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from core.datadir import DataDir
from storage import Store
from storage.store import now
from storage.vocabulary import ACTIVE_JOB_STATUSES, JobStatus

log = logging.getLogger("training.worker")

HEARTBEAT_SECONDS = 5.0
LOG_TAIL_CHARS = 4000


class Cancelled(Exception):
    """The job was asked to stop."""


class JobReporter:
    """Writes a job's heartbeat and progress, and notices a cancel request (from a background thread)."""

    def __init__(self, store: Store, job_id: int, interval: float = HEARTBEAT_SECONDS):
        self.store = store
        self.job_id = job_id
        self.interval = interval
        self.cancelled = threading.Event()
        self.progress: dict[str, Any] = {"phase": "starting"}
        self.losses: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def beat(self) -> None:
        job = self.store.update_job(self.job_id, heartbeat_at=now())
        if job.get("cancel_requested"):
            self.cancelled.set()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception:  # a busy database must not kill the job; the next beat retries
                log.warning("Heartbeat failed", exc_info=True)

    def phase(self, name: str, **extra: Any) -> None:
        """Enter a phase of the job (loading, training, evaluating, saving)."""
        log.info("Phase: %s", name)
        self.progress = {**self.progress, "phase": name, **extra}
        self.store.update_job(self.job_id, progress=self.progress, heartbeat_at=now())
        self.check()

    def step(self, step: int, total: int, epoch: float, loss: float | None, elapsed: float) -> None:
        eta = elapsed / step * (total - step) if step else None
        self.progress = {
            "phase": "training",
            "step": step,
            "total_steps": total,
            "epoch": round(epoch, 3),
            "loss": None if loss is None else round(loss, 4),
            "elapsed_seconds": round(elapsed, 1),
            "eta_seconds": None if eta is None else round(eta, 1),
            "percent": round(100 * step / total, 1) if total else None,
        }
        if loss is not None:
            self.losses.append({"step": step, "epoch": round(epoch, 3), "loss": round(loss, 4)})
        self.store.update_job(self.job_id, progress=self.progress, losses=self.losses, heartbeat_at=now())
        log.info(
            "step %d/%d  epoch %.2f  loss %s  eta %s",
            step,
            total,
            epoch,
            "-" if loss is None else f"{loss:.4f}",
            "-" if eta is None else f"{eta:.0f}s",
        )

    def check(self) -> None:
        """Raise Cancelled if a stop was requested."""
        if self.cancelled.is_set():
            raise Cancelled()


def progress_callback(reporter: JobReporter, total: int) -> Any:
    """A TrainerCallback that reports each step and stops training on a cancel request."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def __init__(self) -> None:
            self.started = time.perf_counter()

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                elapsed = time.perf_counter() - self.started
                reporter.step(state.global_step, total, state.epoch or 0.0, float(logs["loss"]), elapsed)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if reporter.cancelled.is_set():
                control.should_training_stop = True

    return Progress()


def run_job(store: Store, data_dir: Path, job_id: int) -> str:
    """Run training job `job_id` to its end; return its final status."""
    return TrainingJob(store, Path(data_dir), job_id).run()


class TrainingJob:
    """One training run. `run()` never raises: every ending is written to the job row."""

    def __init__(self, store: Store, data_dir: Path, job_id: int):
        self.store = store
        self.data_dir = data_dir
        self.job_id = job_id
        self.temp_dir: Path | None = None  # the adapter being written; removed unless it became a version

    def run(self) -> str:
        store, job_id = self.store, self.job_id
        job = store.get_job(job_id)
        if job["status"] not in ACTIVE_JOB_STATUSES:
            log.warning("Job %d is already %s; nothing to do", job_id, job["status"])
            return job["status"]
        store.update_job(job_id, status=JobStatus.RUNNING, pid=os.getpid(), started_at=now(), heartbeat_at=now())
        reporter = JobReporter(store, job_id)
        reporter.start()
        try:
            reporter.check()
            status = self._run(job["params"] or {}, reporter)
        except Cancelled:
            log.info("Cancelled on request")
            status = JobStatus.CANCELLED
            store.update_job(job_id, status=status, error="cancelled on request")
        except Exception as exc:
            log.exception("Training failed")
            status = JobStatus.FAILED
            store.update_job(job_id, status=status, error=f"{type(exc).__name__}: {exc}")
        finally:
            reporter.stop()
            if self.temp_dir is not None:
                shutil.rmtree(self.temp_dir, ignore_errors=True)
            store.update_job(job_id, finished_at=now(), log=log_tail(self.data_dir, job_id))
        return status

    def _run(self, params: dict[str, Any], reporter: JobReporter) -> str:
        import torch

        from core.models import load_base_model, resolve_base_model
        from training import registry
        from training.config import EvalConfig, TrainConfig
        from training.dataset import heldout_examples, load_replay, training_examples
        from training.evaluate import evaluate_model, gate, load_canary
        from training.trainer import total_steps, train_adapter

        store, data_dir, job_id = self.store, self.data_dir, self.job_id

        # -- prepare -----------------------------------------------------------
        config = TrainConfig(**params.get("config", {})).validate()
        eval_config = EvalConfig(**params.get("eval", {})).validate()
        torch.set_num_threads(config.threads)
        examples = training_examples(store)
        if not examples:
            raise ValueError("No approved train-split examples to train on: approve some examples first")
        heldout = heldout_examples(store, limit=eval_config.max_heldout)
        replay = load_replay(config.replay_examples)
        canary = load_canary()
        active = store.active_version()
        active_name = active["version"] if active else "base"
        current = active
        if current is not None and not registry.adapter_exists(current):
            log.warning("The active version %s has no adapter on disk; comparing with the base model", active_name)
            current = None
        current_name = current["version"] if current else "base"
        log.info(
            "Training on %d examples (+%d replay); judging on %d held-out examples and %d canaries against %s",
            len(examples), len(replay), len(heldout), len(canary), current_name,
        )

        reporter.phase("loading")
        ref = resolve_base_model(params.get("base_model"), data_dir)
        model, tokenizer = load_base_model(ref)

        # -- train -------------------------------------------------------------
        rows = [{"input": e["input"], "output": e["output"]} for e in examples] + replay
        total = total_steps(len(rows), config)
        reporter.phase("training", step=0, total_steps=total)
        peft_model, result = train_adapter(model, tokenizer, rows, config, callbacks=[progress_callback(reporter, total)])
        reporter.check()
        log.info("Trained %d steps in %.1f s (%.0f tokens/s)", result.steps, result.train_seconds, result.tokens_per_second)
        self.temp_dir = registry.new_temp_dir(data_dir)
        peft_model.save_pretrained(str(self.temp_dir))

        # -- evaluate the candidate and the version serving now, on the same examples
        reporter.phase("evaluating candidate")
        candidate = evaluate_model(peft_model, tokenizer, heldout, canary, eval_config, max_length=config.max_length)
        reporter.phase(f"evaluating {current_name}")
        if current is not None:
            peft_model.load_adapter(str(registry.adapter_path(current)), adapter_name="current")
            peft_model.set_adapter("current")
            serving_now = contextlib.nullcontext()
        else:
            serving_now = peft_model.disable_adapter()
        with serving_now:
            incumbent = evaluate_model(peft_model, tokenizer, heldout, canary, eval_config, max_length=config.max_length)
        passed, reasons = gate(candidate, incumbent, canary_tolerance=eval_config.canary_tolerance)
        reporter.check()

        # -- record ------------------------------------------------------------
        reporter.phase("saving")
        now_active = store.active_version()
        if (now_active["version"] if now_active else "base") != active_name:
            passed = False
            reasons.append("the active version changed while this job ran; activate this one by hand if wanted")
        summary = {
            "heldout": candidate["heldout"],
            "canary": candidate["canary"],
            "compared_with": current_name,
            "current": {"heldout": incumbent["heldout"], "canary": incumbent["canary"]},
            "gate": {"passed": passed, "reasons": reasons, "canary_tolerance": eval_config.canary_tolerance},
            "train": {**result.as_dict(), "replay_examples": len(replay)},
        }
        samples = [
            {
                "example_id": e["id"],
                "question": e["input"][-1]["content"],
                "reference": e["output"],
                "candidate": candidate["answers"][i],
                "candidate_correct": candidate["correct"][i],
                "current": incumbent["answers"][i],
                "current_correct": incumbent["correct"][i],
            }
            for i, e in enumerate(heldout)
        ]
        example_ids = [e["id"] for e in examples]
        record = registry.commit_version(
            store,
            data_dir,
            self.temp_dir,
            parent_version=current_name if current else None,
            base_model=ref.name,
            metrics={**summary, "samples": samples},
            example_ids=example_ids,
            job_id=job_id,
            train_config=config.as_dict(),
            notes="; ".join(reasons),
        )
        self.temp_dir = None  # the folder is the version's now
        version = record["version"]
        store.mark_trained(example_ids, version)
        done = {**reporter.progress, "phase": "done", "percent": 100.0, "eta_seconds": 0}
        if passed:
            store.activate_version(version)
            log.info("Promoted %s: %s", version, "; ".join(reasons))
            store.update_job(job_id, status="succeeded", model_version=version, promoted=1, metrics=summary, progress=done)
            return "succeeded"
        store.update_model_version(version, status="rejected")
        log.info("Rejected %s: %s", version, "; ".join(reasons))
        store.update_job(
            job_id,
            status="rejected",
            model_version=version,
            promoted=0,
            metrics=summary,
            error="Not promoted: " + "; ".join(reasons),
            progress=done,
        )
        return "rejected"


def log_tail(data_dir: str | Path, job_id: int) -> str | None:
    """The last LOG_TAIL_CHARS of a job's log, or None when it has none."""
    path = DataDir(data_dir).job_log(job_id)
    if not path.is_file():
        return None
    with path.open("rb") as fh:
        fh.seek(max(0, path.stat().st_size - LOG_TAIL_CHARS))
        return fh.read().decode("utf-8", "replace")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--job-id", type=int, required=True, help="the queued job to run")
    parser.add_argument("--data-dir", type=Path, required=True, help="the data dir holding exemplar.db")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    store = Store(DataDir(args.data_dir).db)
    try:
        # Lower the priority before any heavy work, so the chat server wins every contest for a core.
        nice = ((store.get_job(args.job_id).get("params") or {}).get("config") or {}).get("nice", 0)
        if nice:
            os.nice(int(nice))
        status = run_job(store, Path(args.data_dir), args.job_id)
    finally:
        store.close()
    return 0 if status in (JobStatus.SUCCEEDED, JobStatus.REJECTED) else 1


if __name__ == "__main__":
    sys.exit(main())
