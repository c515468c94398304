"""The training job, run as its own process: the recipe of training/recipe.py (prepare → train →
evaluate → decide → record) with progress reporting, cancelling and clean-up.

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
import logging
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from core.datadir import DataDir
from storage import Store
from storage.errors import is_storage_full
from storage.processes import pid_alive  # training.manager asks it too, through this module
from storage.store import now
from storage.vocabulary import ACTIVE_JOB_STATUSES, JobStatus
from training import distributed, preference

log = logging.getLogger("training.worker")

HEARTBEAT_SECONDS = 5.0
# Set by the manager that starts the worker: the pid of the process the job belongs to.
OWNER_PID_ENV = "EXEMPLAR_JOB_OWNER_PID"
LOG_TAIL_CHARS = 4000
LOG_READ_BYTES = 64_000


class Cancelled(Exception):
    """The job was asked to stop."""


class JobReporter:
    """Writes a job's heartbeat and progress, and notices a cancel request (from a background thread)."""

    def __init__(self, store: Store, job_id: int, interval: float = HEARTBEAT_SECONDS):
        self.store = store
        self.job_id = job_id
        self.interval = interval
        self.cancelled = threading.Event()
        owner = os.environ.get(OWNER_PID_ENV, "")
        self.owner_pid = int(owner) if owner.isdigit() else None
        self.owner_gone = False
        self.progress: dict[str, Any] = {"phase": "starting"}
        self.losses: list[dict[str, Any]] = []
        self.loss_offset = 0  # a top-up round's steps continue the curve of the run before it
        self.run = "final"  # which training run the steps belong to: "selection" (without held-out), "final", "top-up N"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def beat(self) -> None:
        job = self.store.update_job(self.job_id, heartbeat_at=now())
        # Under `accelerate launch` only the main process decides; the others follow it at the next step.
        if job.get("cancel_requested") and distributed.is_main():
            self.cancelled.set()
        # A worker whose server or CLI has exited has nobody to serve its result to: stop rather than
        # train on in the background for an hour.
        if self.owner_pid and distributed.is_main() and not pid_alive(self.owner_pid):
            self.owner_gone = True
            self.cancelled.set()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception:  # a busy database must not kill the job; the next beat retries
                log.warning("Heartbeat failed", exc_info=True)

    def phase(self, name: str, **extra: Any) -> None:
        """Enter a phase of the job (loading, training, evaluating, saving); a training run starts a new loss
        curve and new progress (its total comes from the Trainer when it begins: progress_callback)."""
        log.info("Phase: %s", name)
        if name == "training":
            # A top-up round continues the run before it: its losses extend that curve.
            topup = str(extra.get("run", "")).startswith("top-up")
            self.loss_offset = self.losses[-1]["step"] if topup and self.losses else 0
            self.losses = self.losses if topup else []
            self.progress = {}
        self.progress = {**self.progress, "phase": name, **extra}
        self.store.update_job(self.job_id, progress=self.progress, heartbeat_at=now())
        self.check()

    def step(self, step: int, total: int, epoch: float, loss: float | None, elapsed: float) -> None:
        """Record step `step` of `total` (0: the run has begun), with the time left at the pace so far."""
        eta = elapsed / step * max(0, total - step) if step else None
        self.progress = {
            "phase": "training",
            "run": self.run,
            "step": step,
            "total_steps": total,
            "epoch": round(epoch, 3),
            "loss": None if loss is None else round(loss, 4),
            "elapsed_seconds": round(elapsed, 1),
            "eta_seconds": None if eta is None else round(eta, 1),
            "percent": round(100 * step / total, 1) if total else None,
        }
        if loss is not None:
            self.losses.append({"step": self.loss_offset + step, "epoch": round(epoch, 3), "loss": round(loss, 4)})
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


class ThreadGovernor:
    """Torch threads for the next piece of work: `idle` while the process that started the job used
    (almost) no CPU since the last look and the machine has a core to spare for each extra thread,
    else `busy`.

    On a machine the chat server shares with training, a second thread speeds training up only while
    nobody chats; the worker's low priority keeps a chat ahead anyway, and looking before every step
    hands the core back within one step. The spare-core rule matters as much: on a machine busy with
    other work, two threads that each get a slice of a core wait for each other at every operation
    (a step ran several times slower than with one thread). Only training steps use it: judging runs
    at `busy`.
    """

    IDLE_CORES = 0.1  # the owner's CPU use, in cores, below which it counts as idle
    SPARE_MARGIN = 0.3  # each extra thread needs a core that others use less than this much of

    def __init__(self, owner_pid: int | None, busy: int, idle: int):
        self.busy, self.idle = busy, idle
        self.process: psutil.Process | None = None
        self.own = psutil.Process()
        self.cores = psutil.cpu_count() or 1
        if owner_pid and idle and idle != busy and distributed.world_size() == 1:
            try:
                self.process = psutil.Process(owner_pid)
                self._last = self._sample()
            except psutil.Error:
                self.process = None
        self.threads = busy
        self.idle_steps = self.busy_steps = 0

    def _sample(self) -> tuple[float, float, float, float]:
        """(time, the owner's CPU seconds, this process's, the whole machine's busy CPU seconds)."""
        if self.process is None:
            raise RuntimeError("no owner process to watch")  # adjust() never asks then
        owner, own, machine = self.process.cpu_times(), self.own.cpu_times(), psutil.cpu_times()
        busy = machine.user + machine.nice + machine.system + getattr(machine, "irq", 0) + getattr(machine, "softirq", 0)
        return time.monotonic(), owner.user + owner.system, own.user + own.system, busy

    def usage(self) -> tuple[float, float]:
        """(cores the owner used, cores everything but this process used) since the last look."""
        now_, owner, own, machine = self._sample()
        then, owner0, own0, machine0 = self._last
        self._last = (now_, owner, own, machine)
        wall = max(now_ - then, 1e-3)
        return (owner - owner0) / wall, max(0.0, (machine - machine0) - (own - own0)) / wall

    def choose(self, owner_cores: float, other_cores: float) -> int:
        """The rule: the extra threads only with the owner idle and a free core for each."""
        spare = self.cores - other_cores
        if owner_cores < self.IDLE_CORES and spare >= self.idle - self.SPARE_MARGIN:
            return self.idle
        return self.busy

    def hold(self) -> None:
        """Back to `busy` threads for work that cannot look between steps (judging: minutes of generation)."""
        import torch

        if torch.get_num_threads() != self.busy:
            torch.set_num_threads(self.busy)
        self.threads = self.busy

    def adjust(self) -> int:
        """Set and return the torch threads for what comes next."""
        import torch

        if self.process is None:
            return self.threads
        try:
            threads = self.choose(*self.usage())
        except psutil.Error:  # the owner is gone; the heartbeat cancels the job
            threads = self.busy
        if threads == self.idle:
            self.idle_steps += 1
        else:
            self.busy_steps += 1
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        self.threads = threads
        return threads


def progress_callback(reporter: JobReporter, governor: ThreadGovernor | None = None) -> Any:
    """A TrainerCallback that reports each step and stops training on a cancel request.

    The total is the Trainer's own (state.max_steps, known when training begins): the rows it trains on are
    the examples with their extra wordings, 'not known' rows and replay rows (recipe.training_rows), less
    any too long to fit, over the epochs, so no count made beforehand from the examples matches it.
    """
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def __init__(self) -> None:
            self.started = time.perf_counter()

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # The pace is measured from here: tokenising and the base model's replay distributions came before.
            self.started = time.perf_counter()
            reporter.step(0, state.max_steps, 0.0, None, 0.0)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                elapsed = time.perf_counter() - self.started
                reporter.step(state.global_step, state.max_steps, state.epoch or 0.0, float(logs["loss"]), elapsed)

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if governor is not None:
                governor.adjust()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # Every process stops at the same step, or the others would wait for it forever.
            if distributed.agree(reporter.cancelled.is_set()):
                control.should_training_stop = True

    return Progress()


def failure_message(exc: Exception) -> str:
    """What a failed job's record says: the error, and for a full disk what to do about it."""
    if is_storage_full(exc):
        return (f"storage is full: the new version could not be saved ({exc}) and nothing of it was kept; free "
                "space on the disk that holds the data dir, then train again")
    return f"{type(exc).__name__}: {exc}"


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
        self.governor: ThreadGovernor | None = None

    def run(self) -> str:
        store, job_id = self.store, self.job_id
        job = store.get_job(job_id)
        if job["status"] not in ACTIVE_JOB_STATUSES:
            log.warning("Job %d is already %s; nothing to do", job_id, job["status"])
            return job["status"]
        # Under a launcher (accelerate launch) the manager recorded the launcher's pid: keep it, it is what to stop.
        pid = job.get("pid") or os.getpid()
        store.update_job(job_id, status=JobStatus.RUNNING, pid=pid, started_at=now(), heartbeat_at=now())
        reporter = JobReporter(store, job_id)
        reporter.start()
        try:
            reporter.check()
            status = self._run(job["params"] or {}, reporter)
        except Cancelled:
            if reporter.owner_gone:
                reason = f"stopped: the process that started it (pid {reporter.owner_pid}) has exited"
            else:
                reason = "cancelled on request"
            log.info("Cancelled: %s", reason)
            status = JobStatus.CANCELLED
            store.update_job(job_id, status=status, error=reason)
        except Exception as exc:
            log.exception("Training failed")
            status = JobStatus.FAILED
            store.update_job(job_id, status=status, error=failure_message(exc))
        finally:
            reporter.stop()
            if self.temp_dir is not None:
                shutil.rmtree(self.temp_dir, ignore_errors=True)
            store.update_job(job_id, finished_at=now(), log=log_tail(self.data_dir, job_id))
        return status

    def _run(self, params: dict[str, Any], reporter: JobReporter) -> str:
        import torch

        from core.models import load_base_model, resolve_base_model
        from training import recipe, registry

        store, data_dir = self.store, self.data_dir
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - clock
            clock = time.perf_counter()

        # -- prepare -----------------------------------------------------------
        plan = recipe.prepare(store, params)
        torch.set_num_threads(plan.config.threads)
        governor = self.governor = ThreadGovernor(reporter.owner_pid, plan.config.threads, plan.config.idle_threads)
        log.info(
            "Training on %d approved examples (+%d replay); %d held out of the selection run (%s); "
            "judging against %s",
            len(plan.examples), len(plan.replay), len(plan.heldout),
            "made" if plan.selection_run else f"skipped: fewer than {plan.eval_config.heldout_min_items}",
            plan.serving_name,
        )
        reporter.phase("loading")
        ref = resolve_base_model(plan.base_model, data_dir)
        model, tokenizer = load_base_model(ref)
        lap("load")

        # -- select: train without the held-out examples, judge on them --------
        selection = None
        if plan.selection_run:
            peft_model, _ = self._train(reporter, governor, model, tokenizer, plan, recipe.selection_examples(plan), "selection")
            lap("selection_train")
            reporter.phase("judging the selection run on held-out examples")
            governor.hold()
            selection = recipe.judge_selection(peft_model, tokenizer, plan)
            model = peft_model.unload()  # the base model again, for the refit
            lap("selection_evaluate")
            heldout = recipe.heldout_verdict(plan, selection)
            if not heldout.passed:
                decision = promotion_rejection(heldout)
                summary = recipe.summarise(plan, decision, None, selection, None, timings)
                return self._finish(reporter, plan, decision, summary, None, selection, ref.name)
        heldout = recipe.heldout_verdict(plan, selection)

        # -- train the version to serve on every approved example ----------------
        peft_model, result = self._train(reporter, governor, model, tokenizer, plan, plan.examples, "final")
        lap("train")

        # -- preferences: what users turned down (and what corrections replaced), on TRL's DPO or KTO trainer.
        # Before the evaluation, so that a job with a stage is judged once, as one without: a second evaluation
        # after the stage cost as much as the stage itself (docs/training.md). Top-up rounds then train what is
        # still unlearned on the adapter as the stage left it.
        stage = None
        if plan.config.objective != preference.SFT:
            peft_model, stage = self._prefer(reporter, governor, peft_model, tokenizer, plan)
            lap("preference")

        # -- evaluate, item by item, beside the serving version and the base model
        reporter.phase(
            "evaluating the candidate"
            + (f", {plan.serving_name}" if plan.serving else "")
            + " and the base model on every approved example, the canary"
            + (f" and {len(plan.downvoted)} downvoted answers" if plan.downvoted else "")
        )
        governor.hold()
        evaluation = recipe.evaluate(peft_model, tokenizer, plan)
        truncated = recipe.truncated_ids(tokenizer, plan)
        lap("evaluate")

        # -- top up: train the same adapter again on what it has not learned, then check again
        topups: list[dict[str, Any]] = []
        c = plan.config
        # A round can cost an example learned before while it teaches the missed ones: the best candidate so
        # far (examples answered, then canary) is kept, and a later round starts from whichever is current.
        best = (recipe.candidate_score(plan, evaluation), 0,
                recipe.adapter_state(peft_model) if c.topup_rounds else {}, evaluation)
        # Every process of a distributed run judges the same greedy answers, so they agree on each round.
        while len(topups) < c.topup_rounds and (missed := recipe.unlearned_ids(plan, evaluation, truncated)):
            # The slowest process's clock, so that every process of a distributed run stops at the same round.
            trained_s = max(distributed.gather(timings.get("selection_train", 0.0) + timings.get("train", 0.0)))
            if trained_s >= c.topup_max_seconds:
                log.info("No more top-up rounds: trained %.0f s, the cap is %.0f s", trained_s, c.topup_max_seconds)
                break
            run = f"top-up {len(topups) + 1}"
            log.info("%s: %d approved examples not learned yet: %s", run, len(missed), missed)
            peft_model, topped = self._train(reporter, governor, peft_model, tokenizer, plan, missed, run, topup=True)
            lap("train")
            reporter.phase(f"checking the candidate again after {run}")
            governor.hold()
            evaluation = recipe.reevaluate(peft_model, tokenizer, plan, evaluation)
            lap("evaluate")
            score = recipe.candidate_score(plan, evaluation)
            topups.append({"examples": missed, "steps": topped.steps, "seconds": round(topped.train_seconds, 1),
                           "learned_after": score[1], "canary_after": score[2]})
            if score > best[0]:
                best = (score, len(topups), recipe.adapter_state(peft_model), evaluation)
            if not score[0]:  # more rounds would drift further from general knowledge
                log.info("No more top-up rounds: %s broke the gate's canary or downvoted rule", run)
                break
        if best[1] != len(topups):
            log.info("Keeping the candidate as it was after %s: %d examples and %d canary questions answered",
                     f"top-up {best[1]}" if best[1] else "the first run", best[0][1], best[0][2])
            recipe.restore_adapter_state(peft_model, best[2])
            evaluation = best[3]
        if distributed.is_main():  # one adapter on disk, however many processes trained it
            self.temp_dir = registry.new_temp_dir(data_dir)
            peft_model.save_pretrained(str(self.temp_dir))

        # -- decide and record ----------------------------------------------------
        decision = recipe.decide(plan, evaluation, heldout, truncated, topup_rounds=len(topups))
        reporter.check()
        summary = recipe.summarise(plan, decision, evaluation, selection, result, timings, topups=topups)
        if stage is not None:
            summary["preference"] = stage
        return self._finish(reporter, plan, decision, summary, evaluation, selection, ref.name)

    def _train(
        self, reporter: JobReporter, governor: ThreadGovernor, model: Any, tokenizer: Any, plan: Any, examples: list,
        run: str, topup: bool = False,
    ) -> tuple[Any, Any]:
        """One training run: a fresh adapter on `examples`, or (topup) `model`'s adapter further on the example
        ids `examples` (recipe.topup)."""
        from training import recipe

        reporter.run = run
        reporter.phase("training", run=run, step=0)
        counts = (governor.idle_steps, governor.busy_steps)
        callback = progress_callback(reporter, governor)
        if topup:
            peft_model, result = recipe.topup(model, tokenizer, plan, examples, callbacks=[callback])
        else:
            peft_model, result = recipe.train(model, tokenizer, plan, examples, callbacks=[callback])
        reporter.check()
        log.info(
            "%s run: %d examples, %d steps in %.1f s (%.0f tokens/s); steps begun with the owner idle: %d, busy: %d",
            run, len(examples), result.steps, result.train_seconds, result.tokens_per_second,
            governor.idle_steps - counts[0], governor.busy_steps - counts[1],
        )
        return peft_model, result

    def _prefer(
        self, reporter: JobReporter, governor: ThreadGovernor, peft_model: Any, tokenizer: Any, plan: Any,
    ) -> tuple[Any, dict[str, Any]]:
        """The preference stage of TrainConfig.objective on the candidate; skipped, with the reason, when the data
        cannot train it (an objective asked for by name was refused when the job was started)."""
        objective = plan.config.objective
        try:
            preference.check_minimum(objective, plan.examples, plan.downvoted)
        except ValueError as exc:
            log.warning("No %s stage: %s", objective, exc)
            return peft_model, {"objective": objective, "skipped": str(exc)}
        run = objective.split("+")[1]
        reporter.run = run
        reporter.phase("training", run=run, step=0)
        peft_model, stage = preference.train_preferences(
            peft_model, tokenizer, objective, plan.examples, plan.downvoted, plan.config,
            callbacks=[progress_callback(reporter, governor)], replay=plan.replay,
        )
        reporter.check()
        return peft_model, stage

    def _finish(self, reporter: JobReporter, plan: Any, decision: Any, summary: dict, evaluation: Any, selection: Any, base_name: str) -> str:
        from training import recipe

        if not distributed.is_main():  # the main process records the version and the job's outcome
            return JobStatus.SUCCEEDED if decision.passed else JobStatus.REJECTED
        reporter.phase("saving")
        status, version = recipe.record(
            self.store, self.data_dir, plan,
            temp_dir=self.temp_dir, decision=decision, summary=summary, evaluation=evaluation,
            selection=selection, base_model_name=base_name, job_id=self.job_id,
        )
        self.temp_dir = None  # the folder is the version's now
        done = {**reporter.progress, "phase": "done", "percent": 100.0, "eta_seconds": 0}
        log.info("%s", decision.summary())
        fields = dict(status=status, model_version=version, metrics=summary, progress=done)
        if status == JobStatus.SUCCEEDED:
            self.store.update_job(self.job_id, promoted=1, **fields)
        else:
            self.store.update_job(self.job_id, promoted=0, error=decision.summary(), **fields)
        return status


def promotion_rejection(heldout: Any) -> Any:
    """The decision when the selection run already failed on held-out examples (no refit is made)."""
    from training.promotion import Decision

    return Decision(
        False,
        [heldout],
        next_steps=[
            "The new examples change answers to questions they do not cover: review the newest examples "
            "(the held-out items named above show which answers changed)."
        ],
    )


# The log file keeps everything the process printed, for whoever debugs it; the log an admin reads
# (the Training tab, the API, the CLI) drops what libraries print: a progress bar's redraws ("\r"
# and the bar again) and their warnings ("file.py:12: FutureWarning: ..." and the source line under it).
_OWN_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")  # main()'s logging format
_PROGRESS_BAR = re.compile(r"\d+%\||\|\s*\d+/\d+ \[|(it/s|s/it)\]\s*$")
_LIBRARY_WARNING = re.compile(r"^\S.*:\d+: \w*Warning: ")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def clean_log(text: str) -> str:
    """A log as a person reads it: the worker's own lines and any traceback, without progress-bar
    fragments or library warnings."""
    kept: list[str] = []
    in_warning = False
    for raw in text.split("\n"):
        redraws = [part for part in _ANSI.sub("", raw).split("\r") if part.strip()]
        line = redraws[-1].rstrip() if redraws else ""  # what a terminal shows: the last redraw
        own = _OWN_LINE.search(line)
        if own and own.start() > 0:  # a line logged right after a bar that did not end its line
            line = line[own.start():]
        if _LIBRARY_WARNING.match(line):
            in_warning = True
            continue
        if in_warning and not (own or line.startswith("Traceback")):
            continue  # the warning's source line, or the rest of a multi-line message
        in_warning = False
        if line and not _PROGRESS_BAR.search(line):
            kept.append(line)
    ending = "\n" if kept and text.endswith("\n") else ""
    return "\n".join(kept) + ending


def log_tail(data_dir: str | Path, job_id: int) -> str | None:
    """The last LOG_TAIL_CHARS of a job's log, cleaned (clean_log), or None when it has none."""
    path = DataDir(data_dir).job_log(job_id)
    if not path.is_file():
        return None
    size = path.stat().st_size
    with path.open("rb") as fh:
        # Read more than is shown: progress bars can fill most of the file's end.
        fh.seek(max(0, size - LOG_READ_BYTES))
        text = fh.read().decode("utf-8", "replace")
    if size > LOG_READ_BYTES:
        text = text.partition("\n")[2]  # the first line was cut in two
    text = clean_log(text)
    if len(text) > LOG_TAIL_CHARS:
        text = text[-LOG_TAIL_CHARS:]
        start = text.find("\n") + 1  # whole lines only
        text = text[start:] if 0 < start < len(text) else text
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--job-id", type=int, required=True, help="the queued job to run")
    parser.add_argument("--data-dir", type=Path, required=True, help="the data dir holding exemplar.db")
    args = parser.parse_args(argv)
    # Progress is reported through the job row; tqdm bars (read when tqdm is imported) would only
    # fill the log with redraws.
    os.environ.setdefault("TQDM_DISABLE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    distributed.init()
    # Under `accelerate launch`, processes other than the main one read the store but never write it.
    store = distributed.main_only_writes(Store(DataDir(args.data_dir).db))
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
