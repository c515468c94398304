"""Starting, watching, stopping and scheduling training jobs, and choosing the version to serve.

The server, the CLI and the admin tab all go through a TrainingManager. A job
runs as a child process (training/worker.py) at low CPU priority (it lowers
its own, first thing) with a fixed number of threads, so the chat stays usable while it trains; the manager only
writes job rows and reads them back. Promotion and rollback are writes to the
store: the server notices a new active version and hot-swaps its adapter.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from collections.abc import Callable
from typing import Any

from core.config import SECRET_ENVS
from core.datadir import DataDir
from core.errors import ConflictError, ValidationError
from core.training_contract import (
    Activation,
    AdapterCheck,
    ComparisonSample,
    HyperParameter,
    JobView,
    LearningReport,
    ModelVersionView,
    ScheduleStatus,
    explain_margin,
)
from storage import Store
from storage.store import now
from storage.vocabulary import ACTIVE_JOB_STATUSES as ACTIVE
from storage.vocabulary import BASE_VERSION as BASE
from storage.vocabulary import JobStatus, Split
from training import distributed, preference, promotion, registry
from training.config import EvalConfig, RetrainPolicy, TrainConfig
from training.worker import OWNER_PID_ENV, log_tail, pid_alive

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _parse_time(stamp: str | None) -> datetime | None:
    return datetime.fromisoformat(stamp) if stamp else None


class TrainingManager:
    """Runs training jobs in child processes and manages which version serves."""

    def __init__(
        self,
        store: Store,
        data_dir: str | Path,
        base_model: str | None = None,
        train_config: TrainConfig | None = None,
        policy: RetrainPolicy | None = None,
        eval_config: EvalConfig | None = None,
        *,
        heartbeat_timeout: float = 120.0,
        python: str = sys.executable,
        spawn: bool = True,
    ):
        self.store = store
        self.data_dir = Path(data_dir)
        self.base_model = base_model
        self.train_config = train_config or TrainConfig()
        self.policy = policy or RetrainPolicy()
        self.eval_config = eval_config or EvalConfig()
        self.heartbeat_timeout = heartbeat_timeout
        self.python = python
        # False: start() only creates the job row, for processes that run the job themselves
        # (`accelerate launch launch.py train`, training/commands.py).
        self.spawn = spawn
        self._children: dict[int, subprocess.Popen] = {}
        # Set by a server: load `version`'s adapter from `path` into the serving engine, raising
        # ModelLoadError if it cannot serve (shapes that do not fit the base, non-finite weights).
        self.adapter_check: AdapterCheck | None = None
        self._lock = threading.Lock()

    # -- jobs --------------------------------------------------------------

    def start(self, params: dict[str, Any] | None = None, reason: str = "admin") -> int:
        """Start a training job with optional hyper-parameter overrides; return its id.

        Raises ValidationError for unknown or bad hyper-parameters or when there is
        nothing to train on, ConflictError when a job is already queued or running.
        """
        config = self.train_config.with_overrides(params)
        if self.store.count_training_changes() == 0:
            raise ValidationError("There are no approved training examples yet: correct or approve some answers first")
        if params and params.get("objective") not in (None, preference.SFT):
            # Asked for by name: refused now if the data cannot train it. The server's own default objective is
            # checked by the job, which then trains SFT alone and says why (a scheduled retrain must still run).
            from training.dataset import training_examples
            from training.recipe import downvoted_answers

            examples = training_examples(self.store)
            try:
                preference.check_minimum(
                    config.objective, examples, downvoted_answers(self.store, examples, self.eval_config.max_downvoted)
                )
            except ValueError as exc:
                raise ValidationError(str(exc)) from None
        with self._lock:
            self.reap()
            job_id = self.store.create_job(
                "train",
                {
                    "overrides": params or {},
                    "config": config.model_dump(),
                    "eval": self.eval_config.model_dump(),
                    "base_model": self.base_model,
                    "reason": reason,
                },
            )
            try:
                if self.spawn:
                    self._spawn(job_id, config)
            except OSError as exc:
                self.store.update_job(
                    job_id, status=JobStatus.FAILED, error=f"could not start the training process: {exc}", finished_at=now()
                )
                raise
        log.info("Started training job %d (%s)", job_id, reason)
        return job_id

    def _spawn(self, job_id: int, config: TrainConfig) -> None:
        path = DataDir(self.data_dir).job_log(job_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        # The worker needs no admin rights: the password stays out of its environment (and /proc).
        env = {k: v for k, v in os.environ.items() if k not in SECRET_ENVS}
        # Thread pools are sized when torch loads, so the limits go in before the child starts.
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[name] = str(config.threads)
        env["TOKENIZERS_PARALLELISM"] = "false"
        # The job belongs to this process: if it exits (a stopped server, a killed CLI), the worker stops too.
        env[OWNER_PID_ENV] = str(os.getpid())
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
        worker = ["-m", "training.worker", "--job-id", str(job_id), "--data-dir", str(self.data_dir.resolve())]
        # Several processes: the worker runs unchanged under `accelerate launch` (training/distributed.py).
        command = [*distributed.launch_command(self.python, config.processes, config.accelerate_config), *worker]
        with path.open("ab") as log_file:
            child = subprocess.Popen(
                command,
                cwd=PROJECT_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in a terminal reaches the CLI, which cancels cleanly
            )
        self._children[job_id] = child
        self.store.update_job(job_id, pid=child.pid)

    def cancel(self, job_id: int) -> JobView:
        """Ask a queued or running job to stop; it ends `cancelled` with nothing half-written.

        Returns the job as it is now (the worker stops within a training step).
        """
        job = self.store.get_job(job_id)
        if job["status"] not in ACTIVE:
            raise ConflictError(f"Job {job_id} is already {job['status']}")
        self.store.update_job(job_id, cancel_requested=1)
        if not pid_alive(job.get("pid")):  # no process to tell: queued, or already dead
            self._finish(job_id, JobStatus.CANCELLED, "cancelled on request")
        return self.job_view(job_id)

    def wait(self, job_id: int, timeout: float | None = None, poll: float = 0.5) -> JobView:
        """Block until the job has ended (or `timeout` seconds passed); return its view."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.reap()
            view = self.job_view(job_id)
            if view.status not in ACTIVE:
                child = self._children.pop(job_id, None)
                if child is not None:
                    child.wait(timeout=30)
                return view
            if deadline is not None and time.monotonic() > deadline:
                return view
            time.sleep(poll)

    def _child_exit(self, job_id: int) -> int | None:
        child = self._children.get(job_id)
        return None if child is None else child.poll()

    def _finish(self, job_id: int, status: str, error: str) -> None:
        self.store.update_job(job_id, status=status, error=error, finished_at=now(), log=log_tail(self.data_dir, job_id))

    def reap(self) -> list[int]:
        """Mark jobs whose process died (exited without finishing, or no heartbeat) as failed; return their ids."""
        failed = []
        for job in self.store.list_jobs(limit=50):
            if job["status"] not in ACTIVE:
                continue
            reason = self._death(job)
            if reason is None:
                continue
            if pid_alive(job.get("pid")):  # hung rather than dead: stop it before declaring it failed
                try:
                    os.killpg(job["pid"], signal.SIGKILL)
                except OSError:
                    pass
            self._finish(job["id"], JobStatus.FAILED, reason)
            log.warning("Training job %d failed: %s", job["id"], reason)
            failed.append(job["id"])
        for job_id, child in list(self._children.items()):
            if child.poll() is not None:  # collect exited children so they leave no zombies
                del self._children[job_id]
        if failed and self.store.active_job() is None:
            registry.clean_leftovers(self.store, self.data_dir)
        return failed

    def _death(self, job: dict[str, Any]) -> str | None:
        """Why an active job is dead, or None while it lives."""
        code = self._child_exit(job["id"])
        if code is not None:
            return f"the training process exited with code {code} before finishing (see the log)"
        if job["id"] not in self._children and job.get("pid") and not pid_alive(job["pid"]):
            return "the training process is gone (killed, or the machine restarted)"
        last = _parse_time(job.get("heartbeat_at") or job.get("created_at"))
        if last and datetime.now(timezone.utc) - last > timedelta(seconds=self.heartbeat_timeout):
            return f"no heartbeat for over {self.heartbeat_timeout:.0f} s"
        return None

    def job_view(self, job_id: int) -> JobView:
        """A job as GET /api/jobs/{id} shows it."""
        job = self.store.get_job(job_id)
        active = job["status"] in ACTIVE
        return JobView.model_validate({
            "id": job["id"],
            "kind": job["kind"],
            "status": job["status"],
            "progress": job.get("progress") or {},
            "losses": job.get("losses") or [],
            "metrics": job.get("metrics"),
            "model_version": job.get("model_version"),
            "promoted": bool(job.get("promoted")),
            "error": job.get("error"),
            "reason": (job.get("params") or {}).get("reason"),
            "cancel_requested": bool(job.get("cancel_requested")),
            "created_at": job.get("created_at"),
            "started_at": job.get("started_at"),
            "finished_at": job.get("finished_at"),
            "log": log_tail(self.data_dir, job_id) if active else job.get("log") or log_tail(self.data_dir, job_id),
        })

    def latest_job(self) -> JobView | None:
        """The newest training job's view, or None before the first."""
        jobs = [j for j in self.store.list_jobs(limit=20) if j["kind"] == "train"]
        return self.job_view(jobs[0]["id"]) if jobs else None

    # -- the retrain policy ---------------------------------------------------

    def schedule_status(self) -> ScheduleStatus:
        """How many new examples have arrived since the last run, and whether a run is due."""
        jobs = [j for j in self.store.list_jobs(limit=20) if j["kind"] == "train"]
        last = jobs[0] if jobs else None
        since = last["created_at"] if last else None
        new = self.store.count_training_changes(since)
        due = self.policy.enabled and new >= self.policy.min_new_examples
        if self.policy.enabled and self.policy.every_hours and new >= 1:
            started = _parse_time(since)
            age = datetime.now(timezone.utc) - started if started else None
            due = due or age is None or age >= timedelta(hours=self.policy.every_hours)
        return ScheduleStatus(new_examples=new, last_run=since, due=due, policy=self.policy.describe())

    def schedule_reason(self, status: ScheduleStatus) -> str:
        """Why the policy starts a run, with the counts that triggered it, as the Training tab shows
        it: the examples counted since the last run began, against the policy's threshold or timer."""
        new, policy = status.new_examples, self.policy
        counted = f"{new} approved example{'s' if new != 1 else ''}"
        counted += " added or changed since the last run" if status.last_run else ", and no run yet"
        if new >= policy.min_new_examples:
            return f"schedule: {counted}; the policy retrains at {policy.min_new_examples}"
        return f"schedule: {counted}; the timer retrains every {policy.every_hours:g} h when at least one has"

    def check_schedule(self) -> int | None:
        """Start a job if the retrain policy says one is due; return its id, else None."""
        if not self.policy.enabled or self.store.active_job() is not None:
            return None
        status = self.schedule_status()
        if not status.due:
            return None
        try:
            return self.start(reason=self.schedule_reason(status))
        except (ConflictError, ValidationError) as exc:
            log.info("Scheduled retrain not started: %s", exc)
            return None

    def run_background(self, stop: threading.Event, interval: float = 5.0) -> None:
        """Reap dead jobs and apply the retrain policy every `interval` seconds until `stop` is set."""
        while not stop.wait(interval):
            try:
                self.reap()
                self.check_schedule()
            except Exception:  # the loop must outlive a busy database or a bad job row
                log.exception("Training background check failed; retrying")

    def start_background(self, interval: float = 5.0) -> threading.Event:
        """run_background in a daemon thread; set the returned event to stop it."""
        stop = threading.Event()
        threading.Thread(target=self.run_background, args=(stop, interval), name="training-scheduler", daemon=True).start()
        return stop

    # -- versions -------------------------------------------------------------

    def activate(self, version: str | None) -> Activation:
        """Serve `version` ('base' or None: the base model). Any version may be activated, rejected ones too.

        The adapter is checked first (files, checksums, weights readable; and, in a server, loaded
        into the serving engine by `adapter_check`), so a damaged one raises ModelLoadError and the
        store keeps the version that serves now.
        """
        if version not in (None, BASE):
            row = self.store.get_model_version(version)
            path = DataDir(self.data_dir).resolve(row["path"])
            registry.verify_files(path, version)
            if self.adapter_check is not None:
                self.adapter_check(version, path)
        return Activation.model_validate(promotion.activate(self.store, version))

    def rollback(self) -> Activation:
        """Serve the version the active one was trained to replace (its parent; the base model if none)."""
        return Activation.model_validate(promotion.rollback(self.store))

    def models_view(self) -> list[ModelVersionView]:
        """Every version, newest first, with its headline metrics; `active` marks the one serving."""
        return [ModelVersionView.from_row(v) for v in reversed(self.store.list_model_versions())]

    def comparison(self, version: str) -> list[ComparisonSample]:
        """Held-out answers of `version` beside those of the version it was judged against."""
        row = self.store.get_model_version(version)
        metrics = row.get("metrics") or {}
        if metrics.get("samples"):  # the selection run's answers, on examples it never trained on
            return [ComparisonSample.model_validate(s) for s in metrics["samples"]]
        # No selection run (fewer held-out examples than heldout_min_items): the version's own evaluation
        # answered the same held-out examples beside the version it was judged against, after training on them.
        return [
            ComparisonSample(
                example_id=i["example_id"], question=i["question"], reference=i["reference"],
                candidate=i.get("candidate_answer"), candidate_correct=i.get("candidate_learned"),
                current=i.get("serving_answer"), current_correct=i.get("serving_learned"), trained_on=True,
            )
            for i in metrics.get("items") or []
            if i.get("split") == Split.TEST
        ]

    def learning_report(self, version: str | None = None, *, not_learned_only: bool = False) -> LearningReport:
        """"Did it learn this?": per approved correction, learned or not under the version it was judged
        against and under `version` (default: the one serving), and the margins
        log p(correction) − log p(replaced answer) under the base model, that version and `version`.

        Read from the version's record, written when it was trained.
        """
        if version in (None, ""):
            row = self.store.active_version()
            if row is None:
                raise ValidationError("The base model is serving: train a version first, then ask what it learned")
        else:
            row = self.store.get_model_version(version)
        metrics = row.get("metrics") or {}
        compared_with = metrics.get("compared_with") or BASE
        active = self.store.active_version()
        serving_now = active["version"] if active else BASE
        now_learned = self._learned_by(serving_now, row["version"], compared_with)
        items = list(metrics.get("items") or [])
        reasons = {r["example_id"]: r["reason"] for r in metrics.get("not_learned") or []}
        items = [
            {
                **i,
                "reason": reasons.get(i["example_id"]),
                "serving_now_learned": now_learned(i),
                "margin_note": explain_margin(i, row["version"]),
            }
            for i in items
        ]
        lost = promotion.lost_ids(items)
        items = [{**i, "lost": i["example_id"] in lost} for i in items]
        if not_learned_only:
            items = [i for i in items if not i["candidate_learned"]]
        learned = metrics.get("learned") or {}
        return LearningReport.model_validate({
            "version": row["version"],
            "compared_with": compared_with,
            "serving_now": serving_now,
            "learned": learned.get("candidate"),
            "serving_learned": learned.get("serving"),
            "n": learned.get("n"),
            "gate": (metrics.get("gate") or {}).get("summary"),
            "items": items,
            "lost": lost,
            "downvoted": metrics.get("downvoted_items") or [],
        })

    def _learned_by(self, serving_now: str, version: str, compared_with: str) -> Callable[[dict[str, Any]], bool | None]:
        """learned(item): whether `serving_now` answers an item of `version`'s report: that version's own
        verdict, the judged-against one's, or the one in serving_now's record for the same correction; None
        where serving_now was never judged on it."""
        if serving_now == version:
            return lambda i: bool(i["candidate_learned"])
        if serving_now == compared_with:
            return lambda i: bool(i["serving_learned"])
        if serving_now == BASE:
            return lambda i: None
        own = {
            i["example_id"]: i
            for i in (self.store.get_model_version(serving_now).get("metrics") or {}).get("items") or []
        }

        def learned(item: dict[str, Any]) -> bool | None:
            mine = own.get(item["example_id"])
            return bool(mine["candidate_learned"]) if mine and mine.get("reference") == item.get("reference") else None

        return learned

    def hyperparameters(self, names: tuple[str, ...]) -> list[HyperParameter]:
        """The named training settings with their defaults (this server's) and help text, for the Admin tab's form."""
        import typing

        fields = type(self.train_config).model_fields

        def choices(name: str) -> list[str] | None:
            kind = fields[name].annotation
            return [str(c) for c in typing.get_args(kind)] if typing.get_origin(kind) is typing.Literal else None

        return [
            HyperParameter(name=n, default=getattr(self.train_config, n), help=fields[n].description or "",
                           choices=choices(n))
            for n in names
            if n in fields
        ]
