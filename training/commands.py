"""The training side of the command line: `train`, `eval` and `models`.

Each function takes plain arguments, prints for a person, and returns an exit
code; launch.py only parses flags and calls them. Domain errors are raised for
launch.py to turn into a message.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from core.config import build_all
from core.datadir import DataDir
from core.flags import add_group, from_args
from core.progress import bar, clock
from core.training_contract import JobView, ModelVersionView, explain_margin
from storage import Store
from storage.vocabulary import ACTIVE_JOB_STATUSES, BASE_VERSION, JobStatus
from training import distributed
from training.config import EvalConfig, TrainConfig
from training.manager import TrainingManager

EXIT_PROMOTED = 0
EXIT_FAILED = 1
EXIT_REJECTED = 3
EXIT_CANCELLED = 130

TRAIN_EXAMPLES = """examples:
  python launch.py train                                  retrain on every approved example, promote if the gate passes
  python launch.py train --set epochs=6 --set learning_rate=5e-4
  python launch.py train --no-progress                    for cron: one line per phase, no bar

exit codes: 0 promoted, 3 trained but not promoted (the gate said no), 1 failed, 130 cancelled
"""

MODELS_EXAMPLES = """examples:
  python launch.py models                                 list versions with their metrics
  python launch.py models activate v3                     serve v3 (a running server swaps within seconds)
  python launch.py models activate base                   serve the base model
"""

EVAL_EXAMPLES = """examples:
  python launch.py eval                                   judge the active version on every correction and the canaries
  python launch.py eval --version v2                      judge v2 beside the serving version
  python launch.py eval --per-example --not-learned       which corrections it did not learn, with the margins
  python launch.py eval --no-progress > report.txt        no progress bar (it goes to stderr; the report to stdout)
"""


def open_store(data_dir: Path) -> Store:
    """The data dir's existing database (a mistyped --data-dir is an error, not a new empty database)."""
    return Store(DataDir(data_dir).existing_db())


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """`["epochs=6", "bf16=true"]` → {"epochs": 6, "bf16": True}; values are read as JSON where they parse."""
    from core.errors import ValidationError

    params: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValidationError(f"--set {pair!r}: write NAME=VALUE, e.g. --set epochs=6")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return params


def progress_line(view: JobView) -> str:
    """One line describing a running job: phase, bar, step, loss, time left."""
    progress = view.progress
    phase = progress.phase or view.status
    if phase != "training" or not progress.total_steps:
        return f"job {view.id}: {phase}…"
    step, total = progress.step or 0, progress.total_steps
    loss = progress.loss
    run = f" ({progress.run})" if progress.run and progress.run != "final" else ""  # "selection", "top-up 1"
    return (
        f"job {view.id} training{run} {bar(step / total)} {step}/{total}"
        f"  loss {loss if loss is not None else '-'}  eta {clock(progress.eta_seconds)}"
    )


def train(
    data_dir: Path,
    base_model: str | None,
    params: dict[str, Any] | None = None,
    progress: bool = True,
    *,
    train_config: TrainConfig | None = None,
    eval_config: EvalConfig | None = None,
    out: TextIO = sys.stdout,
    poll: float = 1.0,
) -> int:
    """Train a new version as a child process, show its progress, and report the outcome.

    Ctrl-C asks the job to stop and waits for it to end cleanly. Under `accelerate launch`
    this process is one of several that run the job together (train_in_launch).
    """
    if distributed.is_distributed():
        return train_in_launch(data_dir, base_model, params, train_config=train_config, eval_config=eval_config, out=out)
    store = open_store(data_dir)
    manager = TrainingManager(store, data_dir, base_model, train_config, eval_config=eval_config)
    try:
        job_id = manager.start(params, reason="cli")
        print(f"Started training job {job_id} (log: {DataDir(data_dir).job_log(job_id)})", file=out)
        shown = ""
        try:
            while True:
                view = manager.wait(job_id, timeout=poll)
                if view.status not in ACTIVE_JOB_STATUSES:
                    break
                line = progress_line(view)
                if progress and out.isatty():
                    print("\r" + line.ljust(len(shown)), end="", file=out, flush=True)
                elif line.split("…")[0] != shown.split("…")[0] and (progress or "training" not in line):
                    print(line, file=out, flush=True)
                shown = line
        except KeyboardInterrupt:
            print("\nStopping the job (it ends after the current step)…", file=out, flush=True)
            manager.cancel(job_id)
            view = manager.wait(job_id)
        if progress and out.isatty():
            print(file=out)
        return report(view, out)
    finally:
        store.close()


def train_in_launch(
    data_dir: Path,
    base_model: str | None,
    params: dict[str, Any] | None = None,
    *,
    train_config: TrainConfig | None = None,
    eval_config: EvalConfig | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """`accelerate launch launch.py train`: the main process creates the job, every process runs it
    (training/distributed.py says who writes what), the main process reports; all exit alike."""
    from core.errors import ExemplarError
    from training.worker import run_job

    distributed.init()
    store = open_store(data_dir)
    try:
        job_id, error = None, None
        if distributed.is_main():
            manager = TrainingManager(store, data_dir, base_model, train_config, eval_config=eval_config, spawn=False)
            try:
                job_id = manager.start(params, reason="cli")
                print(f"Started training job {job_id} on {distributed.world_size()} processes", file=out, flush=True)
            except ExemplarError as exc:
                error = exc
        job_id = distributed.broadcast(job_id)
        if job_id is None:
            if error is not None:
                raise error
            return EXIT_FAILED  # the main process says why
        run_job(distributed.main_only_writes(store), Path(data_dir), job_id)
        code = report(manager.job_view(job_id), out) if distributed.is_main() else None
        return int(distributed.broadcast(code))
    finally:
        store.close()


def report(view: JobView, out: TextIO = sys.stdout) -> int:
    """Print how a job ended (the gate's reasons in plain words, and the next step); return the exit code."""
    status = view.status
    metrics = view.metrics
    gate = metrics.gate if metrics else None
    if status in (JobStatus.SUCCEEDED, JobStatus.REJECTED) and metrics and gate:
        learned, canary = metrics.learned, metrics.canary
        if learned:
            current_canary = (metrics.current.canary or {}) if metrics.current else {}
            print(
                f"{view.model_version or 'candidate'}: answers {learned.candidate} of {learned.n} approved examples "
                f"with few-shot off ({learned.by_source + '; ' if learned.by_source else ''}"
                f"{metrics.compared_with}: {learned.serving}); "
                f"canary {canary.score if canary and canary.score is not None else '-'}% ({metrics.compared_with}: "
                f"{current_canary.get('score', '-')}%)",
                file=out,
            )
        stage = metrics.preference
        if stage is not None:
            print(f"  objective {stage.objective}: " + (f"no preference stage, {stage.skipped}" if stage.skipped else
                  f"{stage.rows} preference rows, {stage.steps} steps, loss {stage.first_loss} → {stage.final_loss}"),
                  file=out)
        for rule in gate.rules:
            print(f"  {'✓' if rule.passed else '✗'} {rule.message}", file=out)
        for item in metrics.not_learned:
            print(f"  not learned #{item.example_id}: {item.reason}", file=out)
        for step in gate.next_steps:
            print(f"  next: {step}", file=out)
    if status == JobStatus.SUCCEEDED:
        print(f"Promoted {view.model_version}; a running server serves it within seconds.", file=out)
        return EXIT_PROMOTED
    if status == JobStatus.REJECTED:
        if view.model_version:
            print(
                f"Not promoted: {view.model_version} is kept as rejected "
                f"(serve it anyway with: python launch.py models activate {view.model_version}).",
                file=out,
            )
        else:
            print("Not promoted: the selection run failed on held-out examples, so no version was trained on all.", file=out)
        return EXIT_REJECTED
    if status == JobStatus.CANCELLED:
        print(f"Job {view.id} was cancelled; nothing was saved.", file=out)
        return EXIT_CANCELLED
    print(f"Job {view.id} failed: {view.error}", file=out)
    if view.log:
        print("Last lines of its log:\n" + "\n".join(view.log.splitlines()[-15:]), file=out)
    return EXIT_FAILED


def list_models(data_dir: Path, *, out: TextIO = sys.stdout) -> int:
    """Print every version with its metrics; the serving one is starred."""
    store = open_store(data_dir)
    try:
        manager = TrainingManager(store, data_dir)
        rows = manager.models_view()
        active = next((r.version for r in rows if r.active), BASE_VERSION)
    finally:
        store.close()
    header = f"{'':2}{'version':8} {'status':10} {'examples':>8} {'learned':>9} {'held-out':>9} {'canary':>7}  created"
    print(header, file=out)
    print(f"{'*' if active == BASE_VERSION else ' ':2}{BASE_VERSION:8} {'(base model)':10}", file=out)
    for r in rows:

        def cell(value: Any, suffix: str = "") -> str:
            return "-" if value is None else f"{value:g}{suffix}"

        print(
            f"{'*' if r.active else ' ':2}{r.version:8} {r.status:10} {r.examples:>8} "
            f"{learned_cell(r):>9} {cell(r.heldout_accuracy, '%'):>9} {cell(r.canary, '%'):>7}  "
            f"{(r.created_at or '')[:19]}",
            file=out,
        )
    return 0


def learned_cell(row: ModelVersionView) -> str:
    return "-" if row.learned is None else f"{row.learned}/{row.learned_of}"


def activate(data_dir: Path, version: str, *, out: TextIO = sys.stdout) -> int:
    """Make `version` ('base' for the base model) the one served."""
    store = open_store(data_dir)
    try:
        result = TrainingManager(store, data_dir).activate(version)
    finally:
        store.close()
    print(f"Now serving {result.active} (was {result.previous}); a running server swaps within seconds.", file=out)
    return 0


def evaluate(
    data_dir: Path,
    base_model: str | None,
    version: str | None = None,
    *,
    threads: int | None = None,
    eval_config: EvalConfig | None = None,
    per_example: bool = False,
    not_learned: bool = False,
    progress: bool = True,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Judge a version (default: the active one; 'base' for the base model) on every approved correction
    (few-shot off), the canary set and the downvoted answers, beside the serving version (or, when it is the
    one serving, beside the version it replaced: its parent, else the base model); with `per_example`, one
    line per correction: learned or not, the margins, and a flag on each one the other version answered and
    this one lost. With `progress`, a bar of the answers generated goes to `err`."""
    import torch

    from core.models import load_base_model, resolve_base_model
    from training import promotion, recipe, registry
    from training.evaluate import on_answers

    if threads:
        torch.set_num_threads(threads)
    store = open_store(data_dir)
    try:
        plan = recipe.prepare(store, {"eval": (eval_config or EvalConfig()).model_dump()})
        row = store.active_version() if version is None else None if version == BASE_VERSION else store.get_model_version(version)
        if row is not None and not registry.adapter_exists(row):
            from core.errors import ValidationError

            raise ValidationError(f"The adapter files of {row['version']} are missing from {row['path']}")
        name = row["version"] if row else BASE_VERSION
        if plan.serving is not None and plan.serving["version"] == name:
            # Judging the serving version itself: compare it with the version it replaced, so that what
            # it lost on the way is flagged; the base model when that one's files are gone or it had none.
            parent = plan.serving.get("parent_version")
            parent_row = store.get_model_version(parent) if parent else None
            plan.serving = parent_row if parent_row is not None and registry.adapter_exists(parent_row) else None
        model, tokenizer = load_base_model(resolve_base_model(base_model, data_dir))
        from peft import LoraConfig, PeftModel, get_peft_model

        if row is not None:
            model = PeftModel.from_pretrained(model, str(registry.adapter_path(row)))
        else:  # the base model as the candidate: a zero-initialised adapter answers exactly as the base does
            model = get_peft_model(model, LoraConfig(r=1, target_modules="all-linear", init_lora_weights=True))
        print(
            f"Evaluating {name} against {plan.serving_name} on {len(plan.examples)} approved examples and "
            f"{len(plan.canary)} canary questions…",
            file=out,
            flush=True,
        )
        # recipe.evaluate answers every example and canary question twice: as the candidate, and as the
        # version it is compared with. Generating them is nearly all of its time.
        meter = AnswerProgress(2 * (len(plan.examples) + len(plan.canary) + len(plan.downvoted)), err)
        with on_answers(meter.advance) if progress else contextlib.nullcontext():
            evaluation = recipe.evaluate(model, tokenizer, plan)
        meter.close()
    finally:
        store.close()
    items, canary, downvoted = evaluation["items"], evaluation["canary"], evaluation["downvoted"]
    cand = sum(i["candidate_learned"] for i in items)
    serv = sum(i["serving_learned"] for i in items)
    print(
        f"{name} answers {cand} of {len(items)} approved examples with few-shot off ({plan.serving_name}: {serv}); "
        f"canary {canary['candidate']['score']}% ({plan.serving_name}: {canary['serving']['score']}%)",
        file=out,
    )
    if lost := promotion.lost_ids(items):
        print(
            f"LOST: {len(lost)} approved example{'s' if len(lost) != 1 else ''} {plan.serving_name} answers and "
            f"{name} does not: {', '.join(f'#{i}' for i in lost)}",
            file=out,
        )
    if downvoted:
        print(
            f"downvoted answers: {name} gives {sum(d['candidate_gives'] for d in downvoted)} of {len(downvoted)} again "
            f"({plan.serving_name}: {sum(d['serving_gives'] for d in downvoted)})",
            file=out,
        )
    if per_example:
        print_learning_report(items, name, plan.serving_name, not_learned_only=not_learned, out=out)
        print_downvoted_report(downvoted, name, plan.serving_name, out=out)
    return 0


class AnswerProgress:
    """`eval`'s progress: a bar of the answers generated of those planned, with the time left; redrawn in
    place on a terminal, one line per batch elsewhere."""

    def __init__(self, total: int, out: TextIO):
        self.total, self.done, self.out = total, 0, out
        self.started = time.perf_counter()
        self.shown = ""

    def advance(self, answered: int) -> None:
        self.done += answered
        total = max(self.total, self.done)  # the bar never reads 51/24, whatever the judging does
        eta = (time.perf_counter() - self.started) / self.done * (total - self.done) if self.done else None
        line = f"eval {bar(self.done / total)} {self.done}/{total} answers  eta {clock(eta)}"
        if self.out.isatty():
            print("\r" + line.ljust(len(self.shown)), end="", file=self.out, flush=True)
        else:
            print(line, file=self.out, flush=True)
        self.shown = line

    def close(self) -> None:
        if self.shown and self.out.isatty():
            print(file=self.out, flush=True)


def print_learning_report(
    items: list[dict[str, Any]], name: str, serving: str, *, not_learned_only: bool = False, out: TextIO = sys.stdout
) -> None:
    """One line per correction: learned under `serving` and `name`, and the margins under base, serving and `name`."""

    def margin(value: float | None) -> str:
        return "-" if value is None else f"{value:+.1f}"

    # Beside the base model the serving margin is the base margin: one column, not "m.base m.base".
    columns = [("m.base", "margin_base")] + ([] if serving == BASE_VERSION else [("m." + serving[:5], "margin_serving")])
    if name != BASE_VERSION:  # the base model judged as the candidate: its margins are the m.base column
        columns.append(("m." + name[:5], "margin_candidate"))
    heads = " ".join(f"{head:>7}" for head, _ in columns)
    print(f"{'id':>6} {serving[:7]:>7} {name[:7]:>7} {heads}  question", file=out)
    for i in items:
        if not_learned_only and i["candidate_learned"]:
            continue
        margins = " ".join(f"{margin(i[key]):>7}" for _, key in columns)
        print(
            f"{i['example_id']:>6} {'✓' if i['serving_learned'] else '✗':>7} {'✓' if i['candidate_learned'] else '✗':>7} "
            f"{margins}  {i['question'][:70]}",
            file=out,
        )
        if i["serving_learned"] and not i["candidate_learned"]:
            print(f"{'':>6} LOST: {serving} answered it, {name} does not", file=out)
        note = None if i["candidate_learned"] else explain_margin(i, name)
        if note:
            print(f"{'':>6} {note}", file=out)
    print(
        "margin: log p(correction) − log p(the answer it replaced), summed over the answer's tokens; positive means "
        "the model prefers the correction to that one answer. Learned means its own answer (greedy, few-shot off) "
        "says the correction, so a large margin can stand beside ✗.",
        file=out,
    )


def print_downvoted_report(items: list[dict[str, Any]], name: str, serving: str, *, out: TextIO = sys.stdout) -> None:
    """One line per downvoted answer: given again under `serving` and `name`, and its log-probability per token
    under the base model, `serving` and `name`."""
    if not items:
        return

    def logp(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    print(f"\n{'message':>7} {serving[:7]:>7} {name[:7]:>7} {'lp.base':>7} {'lp.' + serving[:4]:>7} "
          f"{'lp.' + name[:4]:>7}  question → downvoted answer", file=out)
    for d in items:
        print(
            f"{d['message_id']:>7} {'again' if d['serving_gives'] else 'gone':>7} "
            f"{'again' if d['candidate_gives'] else 'gone':>7} {logp(d['logp_base']):>7} "
            f"{logp(d['logp_serving']):>7} {logp(d['logp_candidate']):>7}  {d['question'][:50]} → {d['answer'][:60]}",
            file=out,
        )
    print(
        "again: the greedy answer (few-shot off) still opens with the downvoted answer's first sentence. lp: the "
        "downvoted answer's log-probability per token; lower under a version means it learned to avoid it.",
        file=out,
    )


def add_parsers(commands: Any, add_common: Any) -> None:
    """Add `train`, `eval` and `models` to launch.py's subcommands (`add_common` adds --data-dir etc.)."""
    import argparse

    raw = argparse.RawDescriptionHelpFormatter
    trainer = commands.add_parser(
        "train",
        help="retrain from the base model on every approved example; promote if it beats the serving version",
        description="Train a new version in a child process (low priority, one thread by default) on every "
        "approved example, judge it item by item against the serving version (corrections learned, none lost, "
        "held-out examples not worse, canary kept; the same gate as the API and the Admin tab), and promote it "
        "when every rule passes. Ctrl-C stops the job cleanly.",
        epilog=TRAIN_EXAMPLES,
        formatter_class=raw,
    )
    add_common(trainer)
    trainer.add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        dest="overrides",
        help="override a hyper-parameter for this run (repeatable); names: "
        + ", ".join(TrainConfig.model_fields),
    )
    trainer.add_argument("--no-progress", action="store_true", help="print phases only, no progress bar")
    add_group(trainer, TrainConfig, title="training")
    add_group(trainer, EvalConfig, title="evaluation")
    trainer.set_defaults(
        handler=lambda a: train(
            a.data_dir,
            a.base_model,
            parse_overrides(a.overrides),
            progress=not a.no_progress,
            **_configs(a, train_config=TrainConfig, eval_config=EvalConfig),
        )
    )

    evaluator = commands.add_parser(
        "eval",
        help="judge a version on every approved correction and the canary set (\"did it learn this?\")",
        description="Measure which approved corrections a version answers with few-shot off, the margins "
        "log p(correction) − log p(replaced answer) under the base model, the serving version and this one, "
        "and the canary score.",
        epilog=EVAL_EXAMPLES,
        formatter_class=raw,
    )
    add_common(evaluator)
    evaluator.add_argument("--version", default=None, help="a version such as v2, or 'base' (default: the active one)")
    evaluator.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    evaluator.add_argument(
        "--per-example", action="store_true", help="one line per approved correction: learned or not, and the margins"
    )
    evaluator.add_argument("--not-learned", action="store_true", help="with --per-example: only the corrections not learned")
    evaluator.add_argument(
        "--no-progress", action="store_true", help="no progress bar (it is written to stderr, the report to stdout)"
    )
    add_group(evaluator, EvalConfig, title="evaluation")
    evaluator.set_defaults(
        handler=lambda a: evaluate(
            a.data_dir,
            a.base_model,
            a.version,
            threads=a.threads,
            per_example=a.per_example,
            not_learned=a.not_learned,
            progress=not a.no_progress,
            **_configs(a, eval_config=EvalConfig),
        )
    )

    models = commands.add_parser(
        "models",
        help="list trained versions, or activate one (promote or roll back)",
        description="Without arguments, list the versions with their metrics; the serving one is starred.",
        epilog=MODELS_EXAMPLES,
        formatter_class=raw,
    )
    add_common(models)
    models.add_argument("action", nargs="?", choices=("list", "activate"), default="list", help="list (the default) or activate")
    models.add_argument("version", nargs="?", help="with activate: the version to serve, e.g. v3, or 'base'")
    models.set_defaults(
        handler=lambda a: activate(a.data_dir, _version_or_error(a.version)) if a.action == "activate" else list_models(a.data_dir)
    )


def _configs(args: Any, **wanted: type[Any]) -> dict[str, Any]:
    """The configs the flags describe, made together so every problem of all of them is reported at once."""
    return dict(zip(wanted, build_all(*(functools.partial(from_args, args, cls) for cls in wanted.values()))))


def _version_or_error(version: str | None) -> str:
    from core.errors import ValidationError

    if not version:
        raise ValidationError("models activate needs a VERSION, e.g.: python launch.py models activate v2")
    return version
