"""What the server needs from the training side: the TrainingController behind the Admin
tab and the admin API, and the typed views its methods return.

bot never imports training (training.manager.TrainingManager implements the Protocol, and
launch.py hands it to the server), so the contract lives in core, which both sides import.
The views are pydantic models: the admin API uses them as its response models (so
/openapi.json documents every field), the Admin tab and the CLI read their attributes, and
tests/test_contracts.py checks the implementation member for member. Change the contract
and its implementation together.

Views built from stored JSON (a job's progress, a version's metrics) are read leniently: a
field an older release did not write is None, and a key this release does not know is
ignored, so versions trained long ago still list.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from storage.vocabulary import JobStatus, VersionStatus


class View(BaseModel):
    """A JSON-ready view: unknown keys from stored JSON are ignored, not kept."""

    model_config = ConfigDict(extra="ignore")


# -- jobs ------------------------------------------------------------------------


class JobProgress(View):
    """Where a job is now (written by the training process as it goes)."""

    phase: str = Field("starting", description="loading, training, judging…, evaluating…, saving, done.")
    run: str | None = Field(None, description="Which training run: 'selection' (without held-out examples) or 'final'.")
    step: int | None = Field(None, description="Optimiser steps done in this run.")
    total_steps: int | None = Field(None, description="Optimiser steps this run will take.")
    epoch: float | None = None
    loss: float | None = Field(None, description="The latest training loss.")
    elapsed_seconds: float | None = None
    eta_seconds: float | None = Field(None, description="Estimated seconds left in this run.")
    percent: float | None = Field(None, description="Share of this run's steps done, 0-100.")


class LossPoint(View):
    step: int
    epoch: float | None = None
    loss: float


class GateRule(View):
    """One rule of the promotion gate: passed or not, a sentence for a person, and the items behind it."""

    name: str = Field(description="learned, no_regression, heldout, canary, unchanged, …")
    passed: bool
    message: str
    items: list[Any] = Field(default_factory=list, description="The examples (or ids) the rule is about.")


class NotLearned(View):
    example_id: int
    reason: str = Field(description="Why the version does not answer this correction, in plain words.")


class GateVerdict(View):
    """The promotion gate's verdict on a trained version."""

    passed: bool
    reasons: list[str] = Field(default_factory=list, description="Every rule's sentence.")
    rules: list[GateRule] = Field(default_factory=list)
    not_learned: list[NotLearned] = Field(default_factory=list)
    next_steps: list[str] = Field(default_factory=list, description="What to do when the version was not promoted.")
    summary: str = ""


class HeldoutSummary(View):
    """The selection run (trained without the held-out examples) judged on them."""

    n: int | None = Field(None, description="Held-out examples.")
    selection_run: bool | None = Field(None, description="Whether a selection run was made and judged.")
    accuracy: float | None = Field(None, description="Percent of held-out examples answered right.")
    token_f1: float | None = None
    loss: float | None = None
    reference: str | None = Field(None, description="What the selection run was compared with.")


class CanarySummary(View):
    """General questions any version should keep answering."""

    n: int | None = None
    score: float | None = Field(None, description="Percent answered right.")
    misses: list[dict[str, Any]] = Field(default_factory=list, description="{question, answer} of each one missed.")


class LearnedCount(View):
    """How many approved examples each version answers with few-shot off."""

    n: int
    candidate: int
    serving: int
    by_source: str | None = Field(
        None, description="The candidate's count for each kind apart: 'corrections 1 of 1, thumbs-up 3 of 3, imports 15 of 15'."
    )


class TopupRound(View):
    """One top-up round: the adapter trained again on the approved examples it did not answer yet."""

    examples: list[int] = Field(description="The examples it was not answering before this round.")
    steps: int
    seconds: float
    learned_after: int = Field(description="How many approved examples the candidate answered after this round.")
    canary_after: int | None = Field(None, description="How many canary questions it answered after this round.")


class DownvotedSummary(View):
    """The answers users turned down (and nobody corrected): does the candidate give them again?"""

    n: int = Field(description="Downvoted answers checked (the newest EvalConfig.max_downvoted).")
    candidate: int = Field(description="Those the candidate still gives (same first sentence, greedy, few-shot off).")
    serving: int = Field(description="Those the version it was judged against gave.")
    logp_fall: float | None = Field(
        None, description="Median fall of their log-probability per token, base model → candidate (nats)."
    )


class PreferenceStage(View):
    """The preference stage after SFT (TrainConfig.objective sft+dpo or sft+kto), or why it was skipped."""

    objective: str
    skipped: str | None = Field(None, description="Why no stage was run: the data it needs is missing.")
    rows: int | None = None
    desirable: int | None = Field(None, description="KTO: rows labelled desirable.")
    undesirable: int | None = Field(None, description="KTO: rows labelled undesirable.")
    steps: int | None = None
    seconds: float | None = None
    first_loss: float | None = None
    final_loss: float | None = None
    first_margin: float | None = Field(None, description="TRL's rewards/margins at the first step.")
    final_margin: float | None = Field(None, description="And at the last.")


class CurrentSummary(View):
    """The version that served while the job ran, on the same checks."""

    heldout: dict[str, float] | None = Field(None, description="accuracy and token_f1 of its reference run.")
    canary: dict[str, float] | None = Field(None, description="n and score.")
    learned: int | None = None


class TrainSummary(View):
    steps: int | None = None
    total_steps: int | None = None
    examples: int | None = None
    replay_examples: int | None = None
    first_loss: float | None = None
    final_loss: float | None = None
    train_seconds: float | None = None
    tokens: int | None = None
    tokens_per_second: float | None = None
    stopped_early: bool | None = None


class JobMetrics(View):
    """What a finished training job measured and decided."""

    compared_with: str | None = Field(None, description="The version the candidate was judged against.")
    gate: GateVerdict | None = None
    not_learned: list[NotLearned] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds spent in each phase.")
    heldout: HeldoutSummary | None = None
    current: CurrentSummary | None = None
    learned: LearnedCount | None = None
    canary: CanarySummary | None = None
    train: TrainSummary | None = Field(None, description="The first training run (top-up rounds are in `topups`).")
    topups: list[TopupRound] = Field(
        default_factory=list, description="Top-up rounds after the first run (TrainConfig.topup_rounds), in order."
    )
    downvoted: DownvotedSummary | None = None
    preference: PreferenceStage | None = None


class JobView(View):
    """A training job as GET /api/jobs/{id} shows it."""

    id: int
    kind: str = Field(description="'train'.")
    status: JobStatus
    progress: JobProgress = Field(default_factory=lambda: JobProgress())
    losses: list[LossPoint] = Field(
        default_factory=list, description="The training loss curve of the current run (top-up rounds extend it)."
    )
    metrics: JobMetrics | None = Field(None, description="Set once the job has judged its candidate.")
    model_version: str | None = Field(None, description="The version the job produced, if it got that far.")
    promoted: bool = Field(False, description="Whether that version was promoted and now serves.")
    error: str | None = Field(None, description="Why the job failed or its version was not promoted.")
    reason: str | None = Field(None, description="Why the job started: admin, api, cli, or the schedule's counts.")
    cancel_requested: bool = False
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    log: str | None = Field(None, description="The tail of the job's log.")


class ScheduleStatus(View):
    """The retrain policy's view of the examples since the last run."""

    new_examples: int = Field(description="Approved examples added or changed since the last run started.")
    last_run: str | None = Field(None, description="When the last run started.")
    due: bool = Field(description="Whether the policy starts a run now.")
    policy: str = Field(description="The policy in words.")


# -- versions ----------------------------------------------------------------------


class ModelVersionView(View):
    """A trained version with its headline metrics."""

    version: str
    status: VersionStatus
    active: bool = Field(description="Whether the store names this version as the one to serve.")
    parent_version: str | None = Field(None, description="The version it was trained to replace.")
    base_model: str | None = None
    created_at: str | None = None
    activated_at: str | None = None
    job_id: int | None = None
    examples: int = Field(0, description="Approved examples it was trained on.")
    heldout_n: int | None = None
    heldout_loss: float | None = None
    heldout_perplexity: float | None = Field(None, description="Written by older releases only.")
    heldout_accuracy: float | None = Field(None, description="Percent of held-out examples its selection run answered.")
    exact_match: float | None = Field(None, description="Written by older releases only.")
    token_f1: float | None = None
    canary: float | None = Field(None, description="Percent of canary questions answered.")
    learned: int | None = Field(None, description="Approved corrections it answers with few-shot off.")
    learned_of: int | None = Field(None, description="Approved corrections judged.")
    compared_with: str | None = None
    gate: GateVerdict | None = None
    notes: str | None = Field(None, description="The gate's verdict in one paragraph.")

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ModelVersionView:
        """The view of a `model_versions` row (storage's Store.list_model_versions)."""
        metrics = row.get("metrics") or {}
        heldout, canary, learned = metrics.get("heldout") or {}, metrics.get("canary") or {}, metrics.get("learned") or {}
        return cls.model_validate({
            **{k: row.get(k) for k in ("version", "status", "parent_version", "base_model", "created_at",
                                       "activated_at", "job_id", "notes")},
            "active": row["status"] == VersionStatus.ACTIVE,
            "examples": len(row.get("example_ids") or []),
            "heldout_n": heldout.get("n"),
            "heldout_loss": heldout.get("loss"),
            "heldout_perplexity": heldout.get("perplexity"),
            "heldout_accuracy": heldout.get("accuracy"),
            "exact_match": heldout.get("exact_match"),
            "token_f1": heldout.get("token_f1"),
            "canary": canary.get("score"),
            "learned": learned.get("candidate"),
            "learned_of": learned.get("n"),
            "compared_with": metrics.get("compared_with"),
            "gate": metrics.get("gate"),
        })


class Activation(View):
    """The outcome of an activation or a rollback."""

    active: str = Field(description="The version serving from now on ('base' for the base model).")
    previous: str = Field(description="The version that served before.")


class ComparisonSample(View):
    """One held-out question: the candidate's answer beside the one it was judged against."""

    example_id: int | None = None
    question: str = ""
    reference: str = ""
    candidate: str | None = None
    candidate_correct: bool | None = None
    current: str | None = None
    current_correct: bool | None = None
    trained_on: bool = Field(
        False,
        description="Whether the version trained on this example: with too few held-out examples for a selection "
        "run, the answers are those of the version itself, which trained on every approved example.",
    )


class LearningItem(View):
    """One approved correction in "Did it learn this?"."""

    example_id: int
    source: str | None = None
    split: str | None = None
    question: str
    reference: str = Field(description="The approved answer.")
    rejected: str | None = Field(None, description="The answer it replaced, for a correction.")
    serving_answer: str | None = None
    serving_learned: bool = False
    candidate_answer: str | None = None
    candidate_learned: bool = False
    contradicts: list[int] = Field(default_factory=list, description="Approved examples asking the same with another answer.")
    margin_base: float | None = Field(None, description="log p(correction) − log p(replaced answer) under the base model.")
    margin_serving: float | None = Field(None, description="The same under the version it was judged against.")
    margin_candidate: float | None = Field(None, description="The same under the version reported on.")
    reason: str | None = Field(None, description="Why it is not learned, when it is not.")
    serving_now_learned: bool | None = Field(
        None, description="Whether the version serving now answers it (None: that version was never judged on it)."
    )
    margin_note: str | None = Field(None, description="What the margins say, in words.")
    lost: bool = Field(
        False,
        description="The version it was judged against answered it and this one does not: learned once, lost since.",
    )


class DownvotedItem(View):
    """One answer users turned down (and nobody corrected) in "Did it learn this?": does it come back?"""

    message_id: int = Field(description="The chat answer that was downvoted.")
    question: str
    answer: str = Field(description="The downvoted answer.")
    reasons: list[str] = Field(default_factory=list, description="The reasons its raters gave.")
    serving_answer: str | None = None
    serving_gives: bool = Field(False, description="Whether the version judged against still gave it (greedy, few-shot off).")
    candidate_answer: str | None = None
    candidate_gives: bool = Field(False, description="Whether the version reported on still gives it.")
    logp_base: float | None = Field(None, description="Its log-probability per token under the base model.")
    logp_serving: float | None = Field(None, description="The same under the version judged against.")
    logp_candidate: float | None = Field(None, description="The same under the version reported on.")


def explain_margin(item: dict[str, Any], version: str) -> str | None:
    """What an item's margins mean, in words: the margin compares the correction with the one answer it
    replaced, not with what the model writes, so it can grow while the correction stays unlearned."""
    after, before = item.get("margin_candidate"), item.get("margin_base")
    if after is None:
        return None
    change = "" if before is None else f" (base model: {before:+.1f})"
    if after > 0:
        prefers = (
            f"{version} finds the correction more likely than the answer it replaced, by {after:.1f} "
            f"log-probability (nats, summed over the answer's tokens){change}"
        )
    else:
        prefers = (
            f"{version} still finds the answer it replaced more likely than the correction, by {-after:.1f} "
            f"log-probability (nats, summed over the answer's tokens){change}"
        )
    if item.get("candidate_learned"):
        return f"{prefers}; and its own answer says the correction: learned."
    if after > 0:
        return (
            f"{prefers}; yet its own answer (greedy, few-shot off) does not say the correction, so it is not "
            "learned: the margin compares only those two texts, and the model writes a third."
        )
    return f"{prefers}: not learned."


class LearningReport(View):
    """"Did it learn this?" for one version."""

    version: str = Field(description="The version reported on.")
    compared_with: str = Field(description="The version it was judged against when it was trained.")
    serving_now: str | None = Field(None, description="The version serving now ('base' for the base model).")
    learned: int | None = Field(None, description="Approved corrections it answers with few-shot off.")
    serving_learned: int | None = Field(None, description="Those that `compared_with` answered.")
    n: int | None = Field(None, description="Approved corrections judged (None: trained before these reports).")
    gate: str | None = Field(None, description="The gate's verdict in one paragraph.")
    items: list[LearningItem] = Field(default_factory=list)
    lost: list[int] = Field(
        default_factory=list,
        description="Approved examples `compared_with` answered that this version does not (flagged `lost` in items).",
    )
    downvoted: list[DownvotedItem] = Field(
        default_factory=list, description="Answers users turned down, and whether this version gives them again."
    )


class HyperParameter(View):
    """A training setting the Admin tab offers as a form field."""

    name: str
    default: float | int | str
    help: str
    choices: list[str] | None = Field(None, description="The values it takes, when it is one of a few words.")


# -- the controller ------------------------------------------------------------------


class RetrainPolicyView(Protocol):
    def describe(self) -> str:
        """The policy in words, for the Admin tab."""
        ...


# check(version, adapter folder): raises core.errors.ModelLoadError if the serving engine cannot serve it.
AdapterCheck = Callable[[str, Path], None]


@runtime_checkable
class TrainingController(Protocol):
    """Training jobs and model versions, as the Admin tab and the admin API use them.

    Errors are core.errors exceptions (ValidationError for bad hyper-parameters,
    ConflictError while a job runs, NotFoundError, ModelLoadError for an adapter that
    cannot serve).
    """

    policy: RetrainPolicyView
    # Set by the server: activation loads the adapter into its engine before the store says it is active.
    adapter_check: AdapterCheck | None

    def start(self, params: dict[str, Any] | None = None, reason: str = "admin") -> int:
        """Start a training job with optional hyper-parameter overrides; return its id."""
        ...

    def cancel(self, job_id: int) -> JobView:
        """Ask a queued or running job to stop; return its view."""
        ...

    def job_view(self, job_id: int) -> JobView:
        """A job's status, progress, losses, metrics, log tail and the version it produced."""
        ...

    def latest_job(self) -> JobView | None: ...

    def schedule_status(self) -> ScheduleStatus:
        """How many new examples arrived since the last run, and whether a run is due."""
        ...

    def activate(self, version: str | None) -> Activation:
        """Serve `version` ('base' or None: the base model)."""
        ...

    def rollback(self) -> Activation: ...

    def models_view(self) -> list[ModelVersionView]:
        """Every version, newest first, with its headline metrics."""
        ...

    def comparison(self, version: str) -> list[ComparisonSample]:
        """Held-out answers of `version` beside those of the version it was judged against."""
        ...

    def learning_report(self, version: str | None = None, *, not_learned_only: bool = False) -> LearningReport:
        """"Did it learn this?": per approved correction, learned or not and the margins (training/manager.py)."""
        ...

    def hyperparameters(self, names: tuple[str, ...]) -> list[HyperParameter]:
        """The named training settings with their defaults and help text, for the Admin tab's form."""
        ...
