"""The training side of the command line: `train`, `eval` and `models`.

Each function takes plain arguments, prints for a person, and returns an exit
code; launch.py only parses flags and calls them. Domain errors are raised for
launch.py to turn into a message.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from core.config import validate_all
from core.datadir import DataDir
from core.flags import add_group, from_args
from storage import Store
from storage.vocabulary import ACTIVE_JOB_STATUSES, BASE_VERSION, JobStatus
from training.config import EvalConfig, TrainConfig
from training.manager import TrainingManager

EXIT_PROMOTED = 0
EXIT_FAILED = 1
EXIT_REJECTED = 3
EXIT_CANCELLED = 130

TRAIN_EXAMPLES = """examples:
  python launch.py train                                  retrain on every approved example, promote if better
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
  python launch.py eval                                   judge the active version on held-out examples and canaries
  python launch.py eval --version v2
"""


def open_store(data_dir: Path) -> Store:
    return Store(DataDir(data_dir).db)


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


def _bar(fraction: float, width: int = 30) -> str:
    filled = int(round(max(0.0, min(1.0, fraction)) * width))
    return "█" * filled + "░" * (width - filled)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    return f"{seconds // 60:d}:{seconds % 60:02d}"


def progress_line(view: dict[str, Any]) -> str:
    """One line describing a running job: phase, bar, step, loss, time left."""
    progress = view.get("progress") or {}
    phase = progress.get("phase") or view["status"]
    if phase != "training" or not progress.get("total_steps"):
        return f"job {view['id']}: {phase}…"
    step, total = progress.get("step", 0), progress["total_steps"]
    loss = progress.get("loss")
    return (
        f"job {view['id']} training {_bar(step / total)} {step}/{total}"
        f"  loss {loss if loss is not None else '-'}  eta {_duration(progress.get('eta_seconds'))}"
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

    Ctrl-C asks the job to stop and waits for it to end cleanly.
    """
    store = open_store(data_dir)
    manager = TrainingManager(store, data_dir, base_model, train_config, eval_config=eval_config)
    try:
        job_id = manager.start(params, reason="cli")
        print(f"Started training job {job_id} (log: {DataDir(data_dir).job_log(job_id)})", file=out)
        shown = ""
        try:
            while True:
                view = manager.wait(job_id, timeout=poll)
                if view["status"] not in ACTIVE_JOB_STATUSES:
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


def report(view: dict[str, Any], out: TextIO = sys.stdout) -> int:
    """Print how a job ended; return the exit code for it."""
    status = view["status"]
    metrics = view.get("metrics") or {}
    if status in (JobStatus.SUCCEEDED, JobStatus.REJECTED):
        held, canary = metrics.get("heldout", {}), metrics.get("canary", {})
        current = metrics.get("current", {})
        print(
            f"{view['model_version']}: held-out accuracy {held.get('accuracy', '-')}% "
            f"(was {current.get('heldout', {}).get('accuracy', '-')}%), loss {held.get('loss', '-')} "
            f"(was {current.get('heldout', {}).get('loss', '-')}), canary {canary.get('score', '-')}% "
            f"(was {current.get('canary', {}).get('score', '-')}%) against {metrics.get('compared_with')}",
            file=out,
        )
        for reason in (metrics.get("gate") or {}).get("reasons", []):
            print(f"  - {reason}", file=out)
    if status == JobStatus.SUCCEEDED:
        print(f"Promoted {view['model_version']}; a running server serves it within seconds.", file=out)
        return EXIT_PROMOTED
    if status == JobStatus.REJECTED:
        print(
            f"Not promoted: {view['model_version']} is kept as rejected "
            f"(serve it anyway with: python launch.py models activate {view['model_version']}).",
            file=out,
        )
        return EXIT_REJECTED
    if status == JobStatus.CANCELLED:
        print(f"Job {view['id']} was cancelled; nothing was saved.", file=out)
        return EXIT_CANCELLED
    print(f"Job {view['id']} failed: {view.get('error')}", file=out)
    if view.get("log"):
        print("Last lines of its log:\n" + "\n".join(view["log"].splitlines()[-15:]), file=out)
    return EXIT_FAILED


def list_models(data_dir: Path, *, out: TextIO = sys.stdout) -> int:
    """Print every version with its metrics; the serving one is starred."""
    store = open_store(data_dir)
    try:
        manager = TrainingManager(store, data_dir)
        rows = manager.models_view()
        active = next((r["version"] for r in rows if r["active"]), BASE_VERSION)
    finally:
        store.close()
    header = f"{'':2}{'version':8} {'status':10} {'examples':>8} {'held-out acc':>12} {'loss':>7} {'canary':>7}  created"
    print(header, file=out)
    print(f"{'*' if active == BASE_VERSION else ' ':2}{BASE_VERSION:8} {'(base model)':10}", file=out)
    for r in rows:

        def cell(value: Any, suffix: str = "") -> str:
            return "-" if value is None else f"{value:g}{suffix}"

        print(
            f"{'*' if r['active'] else ' ':2}{r['version']:8} {r['status']:10} {r['examples']:>8} "
            f"{cell(r['heldout_accuracy'], '%'):>12} {cell(r['heldout_loss']):>7} {cell(r['canary'], '%'):>7}  "
            f"{(r['created_at'] or '')[:19]}",
            file=out,
        )
    return 0


def activate(data_dir: Path, version: str, *, out: TextIO = sys.stdout) -> int:
    """Make `version` ('base' for the base model) the one served."""
    store = open_store(data_dir)
    try:
        result = TrainingManager(store, data_dir).activate(version)
    finally:
        store.close()
    print(f"Now serving {result['active']} (was {result['previous']}); a running server swaps within seconds.", file=out)
    return 0


def evaluate(
    data_dir: Path,
    base_model: str | None,
    version: str | None = None,
    *,
    threads: int | None = None,
    eval_config: EvalConfig | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Judge a version (default: the active one; 'base' for the base model) on the held-out set and canaries."""
    import torch

    from core.models import load_base_model, resolve_base_model
    from training import registry
    from training.dataset import heldout_examples
    from training.evaluate import evaluate_model, load_canary

    if threads:
        torch.set_num_threads(threads)
    store = open_store(data_dir)
    try:
        row = store.active_version() if version is None else None if version == BASE_VERSION else store.get_model_version(version)
        eval_config = (eval_config or EvalConfig()).validate()
        heldout = heldout_examples(store, limit=eval_config.max_heldout)
        model, tokenizer = load_base_model(resolve_base_model(base_model, data_dir))
        if row is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(registry.adapter_path(row)))
        name = row["version"] if row else BASE_VERSION
        print(f"Evaluating {name} on {len(heldout)} held-out examples and the canary set…", file=out, flush=True)
        metrics = evaluate_model(model, tokenizer, heldout, load_canary(), eval_config, max_length=TrainConfig().max_length)
    finally:
        store.close()
    held, canary = metrics["heldout"], metrics["canary"]
    if held.get("n"):
        print(
            f"held-out ({held['n']}): loss {held['loss']}  perplexity {held['perplexity']}  accuracy {held['accuracy']}%  "
            f"exact match {held['exact_match']}%  token-F1 {held['token_f1']}%",
            file=out,
        )
    else:
        print("held-out: no approved test-split examples yet", file=out)
    print(f"canary ({canary['n']}): {canary.get('score')}%", file=out)
    return 0


def add_parsers(commands: Any, add_common: Any) -> None:
    """Add `train`, `eval` and `models` to launch.py's subcommands (`add_common` adds --data-dir etc.)."""
    import argparse

    raw = argparse.RawDescriptionHelpFormatter
    trainer = commands.add_parser(
        "train",
        help="retrain from the base model on every approved example; promote if it beats the serving version",
        description="Train a new version in a child process (low priority, one thread by default), judge it "
        "against the serving version on held-out examples and the canary set, and promote it if it is at "
        "least as good. Ctrl-C stops the job cleanly.",
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
        + ", ".join(f.name for f in dataclasses.fields(TrainConfig)),
    )
    trainer.add_argument("--no-progress", action="store_true", help="print phases only, no progress bar")
    add_group(trainer, TrainConfig, "train", title="training")
    add_group(trainer, EvalConfig, "eval", title="evaluation")
    trainer.set_defaults(
        handler=lambda a: train(
            a.data_dir,
            a.base_model,
            parse_overrides(a.overrides),
            progress=not a.no_progress,
            **_configs(a, train_config=(TrainConfig, "train"), eval_config=(EvalConfig, "eval")),
        )
    )

    evaluator = commands.add_parser(
        "eval",
        help="judge a version on the held-out examples and the canary set",
        description="Measure held-out loss, perplexity and accuracy and the canary score of one version.",
        epilog=EVAL_EXAMPLES,
        formatter_class=raw,
    )
    add_common(evaluator)
    evaluator.add_argument("--version", default=None, help="a version such as v2, or 'base' (default: the active one)")
    evaluator.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_group(evaluator, EvalConfig, "eval", title="evaluation")
    evaluator.set_defaults(
        handler=lambda a: evaluate(
            a.data_dir, a.base_model, a.version, threads=a.threads, **_configs(a, eval_config=(EvalConfig, "eval"))
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


def _configs(args: Any, **wanted: tuple[type, str]) -> dict[str, Any]:
    """The configs the flags describe, validated together so every problem is reported at once."""
    configs = {key: from_args(args, cls, prefix) for key, (cls, prefix) in wanted.items()}
    validate_all(*configs.values())
    return configs


def _version_or_error(version: str | None) -> str:
    from core.errors import ValidationError

    if not version:
        raise ValidationError("models activate needs a VERSION, e.g.: python launch.py models activate v2")
    return version
