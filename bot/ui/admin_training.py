"""The Admin tab's training section: retrain now, live progress and loss curve,
log tail and Stop, the versions table, candidate-vs-current answers side by
side, Activate / Rollback, and "Did it learn this?" per correction.

The section receives the training manager from the server (bot never imports
training). Every handler checks the admin password first: all of them are
reachable through Gradio's API whether or not the tab is shown.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from html import escape
from typing import Any

import gradio as gr
import pandas as pd

from bot.chat.service import ChatService
from bot.ui.admin_handlers import admin_handler
from bot.ui.errors import user_error
from core.progress import bar, clock
from core.training_contract import ComparisonSample, JobView, TrainingController
from storage import Store
from storage.vocabulary import ACTIVE_JOB_STATUSES as ACTIVE
from storage.vocabulary import BASE_VERSION as BASE

VERSION_COLUMNS = ["serving", "version", "status", "examples", "examples learned", "held-out accuracy %", "canary %", "created", "notes"]
LOSS_COLUMNS = ["step", "loss"]
LEARNED_COLUMNS = [
    "example", "question", "correction", "serving now", "candidate", "judged against", "margin base",
    "margin judged against", "margin candidate", "margin in words", "why not learned",
]
TRY_COLUMNS = ["version", "answer"]


def describe_job(view: JobView | None) -> str:
    """A job's state in a few lines of Markdown."""
    if view is None:
        return "No training run yet."
    progress = view.progress
    head = f"**Job {view.id}** ({view.reason or 'admin'}): **{view.status}**"
    if view.status in ACTIVE:
        phase = progress.phase or "starting"
        if phase == "training" and progress.total_steps:
            loss = "–" if progress.loss is None else progress.loss
            line = (
                f"`{bar((progress.percent or 0) / 100)}` step {progress.step or 0}/{progress.total_steps}"
                f" · loss {loss} · {clock(progress.eta_seconds, unknown='–')} left"
            )
        else:
            line = f"{phase}…"
        stopping = " · stopping after this step" if view.cancel_requested else ""
        return f"{head}\n\n{line}{stopping}"
    if view.model_version:
        verdict = "promoted and serving" if view.promoted else "not promoted"
        head += f" → {view.model_version} {verdict}"
    lines = [head]
    gate = view.metrics.gate if view.metrics else None
    if gate is not None:
        lines += [f"- {reason}" for reason in gate.reasons]
        lines += [f"- **Next:** {step}" for step in gate.next_steps]
        stage = view.metrics.preference if view.metrics else None
        if stage is not None and stage.skipped:
            lines.append(f"- objective {stage.objective}: no preference stage, {stage.skipped}")
        elif stage is not None:
            lines.append(f"- objective {stage.objective}: {stage.rows} preference rows, {stage.steps} steps in "
                         f"{stage.seconds:g} s, loss {stage.first_loss} → {stage.final_loss}")
    elif view.error:
        lines.append(f"- {plain_error(view.error)}")
    return "\n".join(lines)


SIGNALS = {
    -9: "it was killed (SIGKILL), most often because the machine ran out of memory: try a smaller batch size "
    "or max length",
    -15: "it was stopped from outside (SIGTERM)",
    -11: "it crashed (segmentation fault)",
    1: "it failed with an error: the log below says which",
}
RUN_COLUMNS = ["job", "status", "why", "started", "finished", "version", "result"]
# The hyper-parameters shown as form fields; any other goes in the JSON box.
FORM_FIELDS = ("epochs", "learning_rate", "lora_r", "batch_size", "objective")


def plain_error(error: str | None) -> str:
    """A job's error in plain words: an exit code becomes what it most likely means."""
    if not error:
        return ""
    match = re.search(r"exited with code (-?\d+)", error)
    if match and int(match.group(1)) in SIGNALS:
        return f"The training process stopped before finishing: {SIGNALS[int(match.group(1))]}."
    return error


def runs_frame(jobs: list[dict[str, Any]]) -> pd.DataFrame:
    """Past training runs, newest first: why each started and how it ended."""
    rows = []
    for job in jobs:
        if job.get("kind") != "train":
            continue
        params = job.get("params") or {}
        result = "promoted" if job.get("promoted") else plain_error(job.get("error")) or ""
        rows.append([
            job["id"], job["status"], params.get("reason") or "admin", (job.get("started_at") or "")[:19].replace("T", " "),
            (job.get("finished_at") or "")[:19].replace("T", " "), job.get("model_version") or "", _clip(result),
        ])
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def _clip(text: str, limit: int = 240) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def loss_frame(view: JobView | None) -> pd.DataFrame:
    """The job's loss curve with numeric columns, even when empty.

    The plot fixes its axis types from the first frame it gets: an empty frame
    of object columns made the loss axis categorical (each value a label,
    upside down) until the page was resized."""
    points = [(p.step, p.loss) for p in (view.losses if view else []) if math.isfinite(p.loss)]
    return pd.DataFrame(
        {
            "step": pd.Series([p[0] for p in points], dtype="int64"),
            "loss": pd.Series([p[1] for p in points], dtype="float64"),
        }
    )


# The chart's x axis runs from step 0 (the first loss clear of the plot's left edge, where the line is
# clipped) to the run's last step, and spans at least this many steps: the plot puts about one tick
# per 40 px, so a shorter span got ticks at 1.5 and 2.5 on a chart of whole steps.
MIN_STEPS_SHOWN = 24


def loss_plot(view: JobView | None) -> gr.LinePlot:
    """The loss chart's update: the curve, and an x range of whole steps that holds the whole run."""
    frame = loss_frame(view)
    total = (view.progress.total_steps if view else None) or 0
    last = int(frame["step"].max()) if len(frame) else 0
    return gr.LinePlot(value=frame, x_lim=[0, max(MIN_STEPS_SHOWN, total, last)])


def comparison_html(samples: list[ComparisonSample], version: str, against: str) -> str:
    """Each held-out question with its reference, then the two versions' answers side by side,
    each with its verdict: cards that wrap, so nothing needs scrolling sideways."""
    if not samples:
        return "<p>This version has no held-out answers to compare.</p>"

    def answer(title: str, text: Any, correct: Any) -> str:
        verdict = "✓ right" if correct else "✗ wrong"
        css = "ok" if correct else "bad"
        return (
            f'<div class="cmp-answer {css}"><div class="cmp-head">{escape(title)} · '
            f'<span class="cmp-verdict">{verdict}</span></div><div class="cmp-text">{escape(str(text or ""))}</div></div>'
        )

    cards = []
    for s in samples:
        example = f' <span class="cmp-example">example #{s.example_id}</span>' if s.example_id else ""
        cards.append(
            '<div class="cmp-card">'
            f'<div class="cmp-question"><b>Question</b>{example}<div class="cmp-text">{escape(s.question)}</div></div>'
            f'<div class="cmp-reference"><b>Reference</b><div class="cmp-text">{escape(s.reference)}</div></div>'
            '<div class="cmp-pair">'
            + answer(f"{version} (candidate)", s.candidate, s.candidate_correct)
            + answer(f"{against} (current)", s.current, s.current_correct)
            + "</div></div>"
        )
    return '<div class="cmp-list">' + "".join(cards) + "</div>"


class TrainingHandlers:
    """The section's event handlers, separate from the layout so tests can drive them."""

    def __init__(
        self, manager: TrainingController, store: Store, check_admin: Callable[[str], None],
        service: ChatService | None = None,
    ):
        self.manager = manager
        self.store = store
        self.check_admin = check_admin
        self.service = service  # answers "try it on both" (its engine); None: the box says it is not available

    def _job(self, job_id: Any) -> JobView | None:
        if job_id:
            return self.manager.job_view(int(job_id))
        return self.manager.latest_job()

    @admin_handler
    def overview(self, password: str) -> tuple[Any, ...]:
        """Everything the section shows: policy, job, loss curve, log, versions, version choices."""
        view = self.manager.latest_job()
        versions, choices = self._versions()
        running = view is not None and view.status in ACTIVE
        return (
            self._policy(),
            describe_job(view),
            loss_plot(view),
            (view.log if view else None) or "",
            view.id if view else None,
            gr.Timer(active=running),
            versions,
            gr.Dropdown(choices=choices, value=choices[0] if choices else None),
            gr.Dropdown(choices=[c for c in choices if c != BASE], value=None),
            gr.Dropdown(choices=[c for c in choices if c != BASE], value=choices[0] if len(choices) > 1 else None),
            self.runs(),
            gr.Dropdown(choices=choices, value=None),  # try it on both: none chosen means the newest other one
        )

    def runs(self) -> pd.DataFrame:
        return runs_frame(self.store.list_jobs(limit=20))

    def form_defaults(self) -> list[tuple[str, Any, str]]:
        """(name, default, help) of the hyper-parameters shown as form fields."""
        return [(h.name, h.default, h.help) for h in self.manager.hyperparameters(FORM_FIELDS)]

    def form_choices(self) -> dict[str, list[str]]:
        """The form fields that take one of a few words (a dropdown), with those words."""
        return {h.name: h.choices for h in self.manager.hyperparameters(FORM_FIELDS) if h.choices}

    @admin_handler
    def retrain(self, password: str, params_text: str, *form_values: Any) -> tuple[Any, ...]:
        """Start a run with the form's hyper-parameters (those changed from their defaults) and any
        others as JSON; start polling its progress."""
        params: dict[str, Any] = {}
        if params_text and params_text.strip():
            try:
                params = json.loads(params_text)
            except json.JSONDecodeError as exc:
                raise user_error(f'Hyper-parameters must be JSON such as {{"epochs": 6}}: {exc.msg}') from exc
            if not isinstance(params, dict):
                raise user_error('Hyper-parameters must be a JSON object such as {"epochs": 6}')
        for (name, default, _), value in zip(self.form_defaults(), form_values):
            if value is not None and value != default and name not in params:
                params[name] = int(value) if isinstance(default, int) and float(value).is_integer() else value
        job_id = self.manager.start(params or None, reason="admin")
        view = self.manager.job_view(job_id)
        # The new run takes in every example there is: the count since the last run starts again.
        return describe_job(view), loss_plot(view), "", job_id, gr.Timer(active=True), self._policy()

    @admin_handler
    def poll(self, password: str, job_id: Any) -> tuple[Any, ...]:
        """The job's progress now; the timer stops once the job has ended (the versions table then shows its result)."""
        view = self._job(job_id)
        running = view is not None and view.status in ACTIVE
        if running:
            listing: tuple[Any, ...] = (gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip())
        else:  # the job's version (if any) joins the tables and the choices; the new-since count is recounted
            versions, choices = self._versions()
            trained = [c for c in choices if c != BASE]
            listing = (
                versions,
                gr.Dropdown(choices=choices),
                gr.Dropdown(choices=trained, value=view.model_version if view and trained else None),
                self.runs(),
                self._policy(),
            )
        return describe_job(view), loss_plot(view), (view.log if view else None) or "", gr.Timer(active=running), *listing

    @admin_handler
    def stop(self, password: str, job_id: Any) -> str:
        view = self._job(job_id)
        if view is None:
            raise user_error("There is no training job to stop")
        view = self.manager.cancel(view.id)
        return describe_job(view)

    @admin_handler
    def activate(self, password: str, version: str | None, confirmed: str | None = None) -> tuple[Any, ...]:
        """Serve the chosen version. One the gate rejected needs a second press, after a warning."""
        if not version:
            raise user_error("Choose a version to activate")
        if version != BASE and confirmed != version and self.store.get_model_version(version)["status"] == "rejected":
            return (
                f"⚠️ **{version} was rejected by the promotion gate** (see its notes in the table). "
                "Press Activate again to serve it anyway.",
                gr.skip(),
                version,
            )
        result = self.manager.activate(version)
        versions, _ = self._versions()
        return f"Now serving **{result.active}** (was {result.previous}).", versions, None

    @admin_handler
    def rollback(self, password: str) -> tuple[Any, ...]:
        result = self.manager.rollback()
        versions, _ = self._versions()
        return f"Rolled back: now serving **{result.active}** (was {result.previous}).", versions

    @admin_handler
    def compare(self, password: str, version: str | None) -> tuple[str, str]:
        """A version's held-out answers beside those of the version it was judged against."""
        if not version:
            raise user_error("Choose a trained version to compare")
        samples = self.manager.comparison(version)
        row = self.store.get_model_version(version)
        against = (row.get("metrics") or {}).get("compared_with") or BASE
        right = sum(1 for x in samples if x.candidate_correct), sum(1 for x in samples if x.current_correct)
        if any(x.trained_on for x in samples):
            title = (
                f"**{version}** against **{against}** on {len(samples)} held-out examples: {right[0]} right against "
                f"{right[1]}. Too few were held out for a selection run, so {version} trained on them too: these are "
                "its own answers after training, not answers to questions it never saw."
            )
        else:
            title = (
                f"**{version}** against **{against}** on {len(samples)} held-out examples (never trained on): "
                f"{right[0]} right against {right[1]}."
            )
        return title, comparison_html(samples, version, against)

    @admin_handler
    def try_on_both(self, password: str, version: str | None, prompt: str | None) -> tuple[str, pd.DataFrame]:
        """"Try it on both": the prompt answered by the chosen version and by the one serving now, each labelled."""
        if self.service is None:
            raise user_error("Trying a prompt needs the chat engine, which this Admin tab was built without")
        answers = self.service.try_versions(prompt or "", version or None)
        frame = pd.DataFrame([[a.label, a.text] for a in answers], columns=TRY_COLUMNS)
        chosen, serving = answers[0].version, answers[1].version
        return f"**{chosen}** (chosen) and **{serving}** (serving now), few-shot off, greedy.", frame

    @admin_handler
    def learning(self, password: str, version: str | None, not_learned_only: bool) -> tuple[str, pd.DataFrame]:
        """"Did it learn this?": every approved correction under a version and the one it was judged against."""
        if not version:
            raise user_error("Choose a trained version")
        report = self.manager.learning_report(version, not_learned_only=bool(not_learned_only))
        mark = lambda ok: "–" if ok is None else "✓" if ok else "✗"  # noqa: E731
        lost_note = f"LOST: {report.compared_with} answered it"
        frame = pd.DataFrame(
            [
                [i.example_id, i.question, i.reference, mark(i.serving_now_learned),
                 "✗ lost" if i.lost else mark(i.candidate_learned), mark(i.serving_learned), i.margin_base,
                 i.margin_serving, i.margin_candidate, i.margin_note or "",
                 "; ".join(filter(None, [lost_note if i.lost else None, i.reason]))]
                for i in report.items
            ],
            columns=LEARNED_COLUMNS,
        )
        title = (
            f"**{report.version}** answers **{report.learned} of {report.n}** approved examples with few-shot off; "
            f"**{report.compared_with}**, which it was judged against, answered {report.serving_learned}. "
            f"Serving now: **{report.serving_now or BASE}** (– where it was never judged on a correction). "
            "Margin = log p(correction) − log p(the answer it replaced), summed over the answer's tokens: above 0 "
            "the model prefers the correction to that one answer. Learned means its own answer says the "
            "correction, so a large margin can stand beside ✗."
            if report.n is not None
            else f"{report.version} was trained before per-correction reports existed."
        )
        if report.lost:
            title += (
                f"\n\n**Lost: {len(report.lost)}** approved example{'s' if len(report.lost) != 1 else ''} that "
                f"{report.compared_with} answered and {report.version} does not: "
                + ", ".join(f"#{i}" for i in report.lost) + " (marked ✗ lost below)."
            )
        if report.downvoted:
            again = [d for d in report.downvoted if d.candidate_gives]
            title += (
                f"\n\n**Downvoted answers:** {report.version} gives {len(again)} of {len(report.downvoted)} again "
                f"({report.compared_with}: {sum(d.serving_gives for d in report.downvoted)})"
                + "".join(f"\n- message {d.message_id}: “{d.question}” → “{d.answer[:120]}”" for d in again)
            )
        return title, frame

    def _policy(self) -> str:
        status = self.manager.schedule_status()
        return (
            f"{self.manager.policy.describe()} New since the last run: **{status.new_examples}**."
        )

    def _versions(self) -> tuple[pd.DataFrame, list[str]]:
        rows = self.manager.models_view()
        serving_base = not any(r.active for r in rows)
        table: list[list[Any]] = [
            [
                "▶" if r.active else "",
                r.version,
                r.status,
                r.examples,
                None if r.learned is None else f"{r.learned}/{r.learned_of}",
                r.heldout_accuracy,
                r.canary,
                (r.created_at or "")[:19].replace("T", " "),
                r.notes or "",
            ]
            for r in rows
        ]
        table.append(["▶" if serving_base else "", BASE, "base model", None, None, None, None, "", ""])
        return pd.DataFrame(table, columns=VERSION_COLUMNS), [r.version for r in rows] + [BASE]


# Keeps the log pane on its newest line while a run writes it, unless the admin has scrolled up to
# read (scrolling back to the end follows again).
FOLLOW_LOG_JS = """() => {
  const pane = document.querySelector('#training-log textarea');
  if (!pane) return;
  if (!pane.dataset.follow) {
    pane.dataset.follow = 'yes';
    const look = () => setTimeout(() => {
      pane.dataset.follow = pane.scrollTop + pane.clientHeight >= pane.scrollHeight - 8 ? 'yes' : 'no';
    }, 50);
    for (const name of ['wheel', 'keyup', 'pointerup', 'touchend']) pane.addEventListener(name, look, {passive: true});
  }
  if (pane.dataset.follow === 'yes') setTimeout(() => { pane.scrollTop = pane.scrollHeight; }, 30);
}"""


def confirm_js(question: str) -> str:
    """A click's browser-side step: ask `question`; a cancel throws, so the handler is never called."""
    return (
        f"(...inputs) => {{ if (!window.confirm({json.dumps(question)})) throw new Error('Cancelled'); "
        "return inputs; }"
    )


def build_training_section(
    manager: TrainingController, store: Store, check_admin: Callable[[str], None], password: gr.Textbox,
    service: ChatService | None = None,
) -> tuple[Callable[..., Any], list[Any], list[Any]]:
    """Lay out the training section inside the current (Admin tab) context.
    Returns (function, inputs, outputs) that fill it in, which the Admin tab runs at login."""
    handlers = TrainingHandlers(manager, store, check_admin, service)
    private: dict[str, Any] = {"api_visibility": "private"}
    gr.Markdown("## Training")
    policy = gr.Markdown(manager.policy.describe(), elem_id="training-policy")
    job_id = gr.State(None)
    with gr.Row():
        refresh = gr.Button("Refresh", elem_id="training-refresh")
        retrain = gr.Button("Retrain now", variant="primary", elem_id="training-retrain")
        stop = gr.Button("Stop", variant="stop", elem_id="training-stop")
    form: list[Any] = []
    choices = handlers.form_choices()
    with gr.Row():
        for name, default, help_text in handlers.form_defaults():
            if name in choices:
                form.append(gr.Dropdown(
                    choices=choices[name], value=default, label=f"{name.replace('_', ' ')} (default {default})",
                    info=help_text, elem_id=f"training-{name.replace('_', '-')}",
                ))
                continue
            form.append(
                gr.Number(
                    value=default, label=f"{name.replace('_', ' ')} (default {default})", info=help_text,
                    precision=0 if isinstance(default, int) and not isinstance(default, bool) else None,
                    elem_id=f"training-{name.replace('_', '-')}",
                )
            )
    with gr.Accordion("Other hyper-parameters (JSON)", open=False):
        params = gr.Textbox(
            label="Any other setting of the training config, as JSON",
            placeholder='{"lora_alpha": 16, "replay_kl_weight": 5}',
            elem_id="training-params",
        )
    status = gr.Markdown("Enter the admin password and press Refresh.", elem_id="training-status")
    with gr.Row():
        curve = gr.LinePlot(
            loss_frame(None), x="step", y="loss", title="Training loss", height=260, y_lim=[0, None],
            x_lim=[0, MIN_STEPS_SHOWN], x_title="step", y_title="loss", elem_id="training-loss",
        )
        # Followed by FOLLOW_LOG_JS: the Textbox's own autoscroll lost the end once each poll replaced the text.
        log = gr.Textbox(label="Log", lines=12, max_lines=12, interactive=False, autoscroll=False, elem_id="training-log")
    timer = gr.Timer(1.0, active=False)

    gr.Markdown("### Versions")
    # Fixed shares of the width: long text wraps in its column instead of pushing the rest off-screen.
    versions = gr.Dataframe(
        pd.DataFrame(columns=VERSION_COLUMNS), interactive=False, wrap=True, elem_id="training-versions",
        column_widths=["6%", "7%", "9%", "7%", "9%", "9%", "7%", "12%", "34%"],
    )
    with gr.Row():
        chosen = gr.Dropdown(label="Version", choices=[BASE], value=None, elem_id="training-version")
        activate = gr.Button("Activate", elem_id="training-activate")
        rollback = gr.Button("Rollback to the previous version", elem_id="training-rollback")
    result = gr.Markdown(elem_id="training-result")
    confirm_version = gr.State(None)
    with gr.Accordion("Past runs", open=False):
        runs = gr.Dataframe(
            pd.DataFrame(columns=RUN_COLUMNS), interactive=False, wrap=True, elem_id="training-runs",
            column_widths=["5%", "9%", "28%", "12%", "12%", "7%", "27%"],
        )

    gr.Markdown("### Candidate against current, on held-out examples")
    with gr.Row():
        compare_version = gr.Dropdown(label="Trained version", choices=[], value=None, elem_id="training-compare-version")
        compare = gr.Button("Compare", elem_id="training-compare")
    compare_title = gr.Markdown()
    comparison = gr.HTML("", elem_id="training-comparison")

    gr.Markdown("### Try it on both")
    with gr.Row():
        try_version = gr.Dropdown(label="Version to try", choices=[], value=None, elem_id="training-try-version")
        try_prompt = gr.Textbox(
            label="Prompt", placeholder="A question to ask the chosen version and the one serving now",
            scale=3, elem_id="training-try-prompt",
        )
        try_button = gr.Button("Try it on both", elem_id="training-try")
    try_title = gr.Markdown()
    try_table = gr.Dataframe(
        pd.DataFrame(columns=TRY_COLUMNS), interactive=False, wrap=True, elem_id="training-try-answers",
        column_widths=["20%", "80%"],
    )

    gr.Markdown("### Did it learn this?")
    with gr.Row():
        learned_version = gr.Dropdown(label="Trained version", choices=[], value=None, elem_id="training-learned-version")
        only_missing = gr.Checkbox(label="Only not learned", value=False, elem_id="training-not-learned")
        learned_button = gr.Button("Show", elem_id="training-learned")
    learned_title = gr.Markdown()
    learned_table = gr.Dataframe(
        pd.DataFrame(columns=LEARNED_COLUMNS), interactive=False, wrap=True, elem_id="training-learned-table",
        column_widths=["5%", "12%", "12%", "6%", "6%", "6%", "5%", "5%", "5%", "24%", "14%"],
    )

    overview_outputs = [
        policy, status, curve, log, job_id, timer, versions, chosen, compare_version, learned_version, runs,
        try_version,
    ]
    refresh.click(handlers.overview, [password], overview_outputs, **private)
    on_login = (handlers.overview, [password], overview_outputs)
    retrain.click(handlers.retrain, [password, params, *form], [status, curve, log, job_id, timer, policy], **private)
    # The refresh each second draws no "processing | 0.4s" over the status it refreshes.
    timer.tick(
        handlers.poll, [password, job_id], [status, curve, log, timer, versions, chosen, compare_version, runs, policy],
        show_progress="hidden", **private,
    )
    log.change(None, None, None, js=FOLLOW_LOG_JS)
    # Asked in the browser first; the handlers still check the password themselves.
    stop.click(handlers.stop, [password, job_id], [status], js=confirm_js("Stop the training run?"), **private)
    activate.click(handlers.activate, [password, chosen, confirm_version], [result, versions, confirm_version], **private)
    rollback.click(
        handlers.rollback, [password], [result, versions],
        js=confirm_js("Roll back to the previous version? The one serving now stops answering."), **private,
    )
    compare.click(handlers.compare, [password, compare_version], [compare_title, comparison], **private)
    learned_button.click(
        handlers.learning, [password, learned_version, only_missing], [learned_title, learned_table], **private
    )
    try_button.click(handlers.try_on_both, [password, try_version, try_prompt], [try_title, try_table], **private)
    try_prompt.submit(handlers.try_on_both, [password, try_version, try_prompt], [try_title, try_table], **private)
    return on_login
