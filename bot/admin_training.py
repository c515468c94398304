"""The Admin tab's training section: retrain now, live progress and loss curve,
log tail and Stop, the versions table, candidate-vs-current answers side by
side, and Activate / Rollback.

The section receives the training manager from the server (bot never imports
training). Every handler checks the admin password first: all of them are
reachable through Gradio's API whether or not the tab is shown.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import gradio as gr
import pandas as pd

from bot.contracts import TrainingController
from core.errors import ExemplarError, ValidationError
from storage import Store
from storage.vocabulary import ACTIVE_JOB_STATUSES as ACTIVE
from storage.vocabulary import BASE_VERSION as BASE

VERSION_COLUMNS = ["serving", "version", "status", "examples", "held-out accuracy %", "held-out loss", "canary %", "created", "notes"]
COMPARE_COLUMNS = ["question", "reference", "candidate", "✓", "judged against", "✓ ", "example"]
LOSS_COLUMNS = ["step", "loss"]


def _bar(percent: float | None, width: int = 30) -> str:
    filled = int(round((percent or 0) / 100 * width))
    return "█" * filled + "░" * (width - filled)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


def describe_job(view: dict[str, Any] | None) -> str:
    """A job's state in a few lines of Markdown."""
    if view is None:
        return "No training run yet."
    progress = view.get("progress") or {}
    status = view["status"]
    head = f"**Job {view['id']}** ({view.get('reason') or 'admin'}): **{status}**"
    if status in ACTIVE:
        phase = progress.get("phase") or "starting"
        if phase == "training" and progress.get("total_steps"):
            line = (
                f"`{_bar(progress.get('percent'))}` step {progress.get('step', 0)}/{progress['total_steps']}"
                f" · loss {progress.get('loss', '–')} · {_clock(progress.get('eta_seconds'))} left"
            )
        else:
            line = f"{phase}…"
        stopping = " · stopping after this step" if view.get("cancel_requested") else ""
        return f"{head}\n\n{line}{stopping}"
    if view.get("model_version"):
        verdict = "promoted and serving" if view.get("promoted") else "not promoted"
        head += f" → {view['model_version']} {verdict}"
    lines = [head]
    gate = (view.get("metrics") or {}).get("gate") or {}
    lines += [f"- {reason}" for reason in gate.get("reasons", [])]
    if view.get("error") and not gate:
        lines.append(f"- {view['error']}")
    return "\n".join(lines)


def loss_frame(view: dict[str, Any] | None) -> pd.DataFrame:
    rows = [{"step": p["step"], "loss": p["loss"]} for p in (view or {}).get("losses") or []]
    return pd.DataFrame(rows, columns=LOSS_COLUMNS)


class TrainingHandlers:
    """The section's event handlers, separate from the layout so tests can drive them."""

    def __init__(self, manager: TrainingController, store: Store, check_admin: Callable[[str], None]):
        self.manager = manager
        self.store = store
        self.check_admin = check_admin

    def _job(self, job_id: Any) -> dict[str, Any] | None:
        if job_id:
            return self.manager.job_view(int(job_id))
        return self.manager.latest_job()

    def overview(self, password: str) -> tuple[Any, ...]:
        """Everything the section shows: policy, job, loss curve, log, versions, version choices."""
        self.check_admin(password)
        view = self.manager.latest_job()
        versions, choices = self._versions()
        running = view is not None and view["status"] in ACTIVE
        return (
            self._policy(),
            describe_job(view),
            loss_frame(view),
            (view or {}).get("log") or "",
            view["id"] if view else None,
            gr.Timer(active=running),
            versions,
            gr.Dropdown(choices=choices, value=choices[0] if choices else None),
            gr.Dropdown(choices=[c for c in choices if c != BASE], value=None),
        )

    def retrain(self, password: str, params_text: str) -> tuple[Any, ...]:
        """Start a run with optional JSON hyper-parameters; start polling its progress."""
        self.check_admin(password)
        params = None
        if params_text and params_text.strip():
            try:
                params = json.loads(params_text)
            except json.JSONDecodeError as exc:
                raise gr.Error(f'Hyper-parameters must be JSON such as {{"epochs": 6}}: {exc.msg}') from exc
        try:
            job_id = self.manager.start(params, reason="admin")
        except ExemplarError as exc:
            raise gr.Error(str(exc)) from exc
        view = self.manager.job_view(job_id)
        return describe_job(view), loss_frame(view), "", job_id, gr.Timer(active=True)

    def poll(self, password: str, job_id: Any) -> tuple[Any, ...]:
        """The job's progress now; the timer stops once the job has ended (the versions table then shows its result)."""
        self.check_admin(password)
        view = self._job(job_id)
        running = view is not None and view["status"] in ACTIVE
        versions = gr.skip() if running else self._versions()[0]
        return describe_job(view), loss_frame(view), (view or {}).get("log") or "", gr.Timer(active=running), versions

    def stop(self, password: str, job_id: Any) -> str:
        self.check_admin(password)
        view = self._job(job_id)
        if view is None:
            raise gr.Error("There is no training job to stop")
        try:
            view = self.manager.cancel(view["id"])
        except ExemplarError as exc:
            raise gr.Error(str(exc)) from exc
        return describe_job(view)

    def activate(self, password: str, version: str | None) -> tuple[Any, ...]:
        self.check_admin(password)
        if not version:
            raise gr.Error("Choose a version to activate")
        try:
            result = self.manager.activate(version)
        except ExemplarError as exc:
            raise gr.Error(str(exc)) from exc
        versions, _ = self._versions()
        return f"Now serving **{result['active']}** (was {result['previous']}).", versions

    def rollback(self, password: str) -> tuple[Any, ...]:
        self.check_admin(password)
        try:
            result = self.manager.rollback()
        except ExemplarError as exc:
            raise gr.Error(str(exc)) from exc
        versions, _ = self._versions()
        return f"Rolled back: now serving **{result['active']}** (was {result['previous']}).", versions

    def compare(self, password: str, version: str | None) -> tuple[str, pd.DataFrame]:
        """A version's held-out answers beside those of the version it was judged against."""
        self.check_admin(password)
        if not version:
            raise gr.Error("Choose a trained version to compare")
        try:
            samples = self.manager.comparison(version)
            row = self.store.get_model_version(version)
        except (ExemplarError, ValidationError) as exc:
            raise gr.Error(str(exc)) from exc
        against = (row.get("metrics") or {}).get("compared_with") or BASE
        frame = pd.DataFrame(
            [
                [
                    s["question"],
                    s["reference"],
                    s["candidate"],
                    "✓" if s["candidate_correct"] else "✗",
                    s["current"],
                    "✓" if s["current_correct"] else "✗",
                    s["example_id"],
                ]
                for s in samples
            ],
            columns=COMPARE_COLUMNS,
        )
        title = f"**{version}** against **{against}** on {len(samples)} held-out examples (never trained on)."
        return title, frame

    def _policy(self) -> str:
        status = self.manager.schedule_status()
        return (
            f"{self.manager.policy.describe()} New since the last run: **{status['new_examples']}**."
        )

    def _versions(self) -> tuple[pd.DataFrame, list[str]]:
        rows = self.manager.models_view()
        serving_base = not any(r["active"] for r in rows)
        table = [
            [
                "▶" if r["active"] else "",
                r["version"],
                r["status"],
                r["examples"],
                r["heldout_accuracy"],
                r["heldout_loss"],
                r["canary"],
                (r["created_at"] or "")[:19].replace("T", " "),
                r["notes"] or "",
            ]
            for r in rows
        ]
        table.append(["▶" if serving_base else "", BASE, "base model", None, None, None, None, "", ""])
        return pd.DataFrame(table, columns=VERSION_COLUMNS), [r["version"] for r in rows] + [BASE]


def build_training_section(manager: TrainingController, store: Store, check_admin: Callable[[str], None], password: gr.Textbox) -> None:
    """Lay out the training section inside the current (Admin tab) context."""
    handlers = TrainingHandlers(manager, store, check_admin)
    private = {"api_visibility": "private"}
    gr.Markdown("## Training")
    policy = gr.Markdown(manager.policy.describe(), elem_id="training-policy")
    job_id = gr.State(None)
    with gr.Row():
        refresh = gr.Button("Refresh", elem_id="training-refresh")
        retrain = gr.Button("Retrain now", variant="primary", elem_id="training-retrain")
        stop = gr.Button("Stop", variant="stop", elem_id="training-stop")
    params = gr.Textbox(
        label="Hyper-parameters for this run (optional JSON)",
        placeholder='{"epochs": 6, "learning_rate": 0.0005}',
        elem_id="training-params",
    )
    status = gr.Markdown("Enter the admin password and press Refresh.", elem_id="training-status")
    with gr.Row():
        curve = gr.LinePlot(pd.DataFrame(columns=LOSS_COLUMNS), x="step", y="loss", title="Training loss", height=260)
        log = gr.Textbox(label="Log", lines=12, max_lines=12, interactive=False, autoscroll=True, elem_id="training-log")
    timer = gr.Timer(1.0, active=False)

    gr.Markdown("### Versions")
    versions = gr.Dataframe(
        pd.DataFrame(columns=VERSION_COLUMNS), interactive=False, wrap=True, elem_id="training-versions"
    )
    with gr.Row():
        chosen = gr.Dropdown(label="Version", choices=[BASE], value=None, elem_id="training-version")
        activate = gr.Button("Activate", elem_id="training-activate")
        rollback = gr.Button("Rollback to the previous version", elem_id="training-rollback")
    result = gr.Markdown(elem_id="training-result")

    gr.Markdown("### Candidate against current, on held-out examples")
    with gr.Row():
        compare_version = gr.Dropdown(label="Trained version", choices=[], value=None, elem_id="training-compare-version")
        compare = gr.Button("Compare", elem_id="training-compare")
    compare_title = gr.Markdown()
    comparison = gr.Dataframe(pd.DataFrame(columns=COMPARE_COLUMNS), interactive=False, wrap=True)

    overview_outputs = [policy, status, curve, log, job_id, timer, versions, chosen, compare_version]
    refresh.click(handlers.overview, [password], overview_outputs, **private)
    retrain.click(handlers.retrain, [password, params], [status, curve, log, job_id, timer], **private)
    timer.tick(handlers.poll, [password, job_id], [status, curve, log, timer, versions], **private)
    stop.click(handlers.stop, [password, job_id], [status], **private)
    activate.click(handlers.activate, [password, chosen], [result, versions], **private)
    rollback.click(handlers.rollback, [password], [result, versions], **private)
    compare.click(handlers.compare, [password, compare_version], [compare_title, comparison], **private)
