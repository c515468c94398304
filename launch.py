"""Exemplar's command line: serve the chat UI and API, train, evaluate, import, export, manage versions.

A thin layer: it parses flags into typed configs and calls the project's
modules; domain errors become a message and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

EXIT_USAGE = 2
EXIT_ERROR = 1

SERVE_EXAMPLES = """examples:
  python launch.py                                  serve the bundled model on http://127.0.0.1:7860
  python launch.py serve --port 8000 --data-dir ~/exemplar
  python launch.py serve --host 0.0.0.0 --admin-password 'a-long-secret'
  python launch.py serve --forwarded-allow-ips 127.0.0.1   behind a reverse proxy on this host
  python launch.py serve --base-model ./my-checkpoint
  python launch.py serve --retrain-min-new-examples 50 --train-epochs 8
  EXEMPLAR_PORT=8000 python launch.py serve           every flag has an environment variable
"""


IMPORT_EXAMPLES = """examples:
  python launch.py import examples/help_desk.jsonl
  python launch.py import faq.csv --status pending        every row waits for review
  python launch.py import ./my_dataset --format hf        a folder written by save_to_disk

formats: jsonl (OpenAI chat 'messages'), sharegpt ('conversations' of from/value),
alpaca (instruction/input/output), csv (input,output columns), dpo (prompt/chosen/rejected),
kto (prompt/completion/label), hf (a Hugging Face dataset folder)
"""

EXPORT_EXAMPLES = """examples:
  python launch.py export examples.jsonl --format jsonl   OpenAI chat messages, with source/status/split
  python launch.py export pairs.jsonl --format dpo        TRL preference pairs from corrections
  python launch.py export thumbs.jsonl --format kto       TRL unpaired: examples true, rejected originals false
  python launch.py export ./dataset --format hf --status approved
"""


def add_common(parser: argparse.ArgumentParser) -> None:
    """Options every subcommand takes: --data-dir and --base-model (from ServeConfig) and -v."""
    from core.config import ServeConfig
    from core.flags import add_flags

    add_flags(parser, ServeConfig, only=("data_dir", "base_model"))
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")


def add_settings(parser: argparse.ArgumentParser, *, serve: bool = True, train: bool = True, evaluate: bool = True,
                 retrain: bool = True) -> None:
    """One group of flags per config, generated from its fields (see core/flags.py)."""
    from core.config import ServeConfig
    from core.flags import add_group
    from training.config import EvalConfig, RetrainPolicy, TrainConfig

    if serve:
        add_group(parser, ServeConfig, title="serving")
    if train:
        add_group(parser, TrainConfig, title="training (flags --train-NAME; `train --set NAME=VALUE` too)")
    if evaluate:
        add_group(parser, EvalConfig, title="evaluation (flags --eval-NAME)")
    if retrain:
        add_group(parser, RetrainPolicy, title="retrain policy (flags --retrain-NAME)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python launch.py",
        description="Exemplar: a chat bot that learns from the answers its users correct.",
        epilog=SERVE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="serve the chat UI and the HTTP API (the default command)",
        description="Serve the chat UI (Chat and Admin tabs) and the HTTP API on one port. Every setting below "
        "can also be given as the environment variable named beside it.",
        epilog=SERVE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    add_settings(serve)
    serve.set_defaults(handler=cmd_serve)

    from storage.exchange import EXPORT_SELECTIONS, IMPORT_STATUSES
    from storage.formats import EXPORT_FORMATS, IMPORT_FORMATS

    importer = commands.add_parser(
        "import",
        help="import examples from a file (all records or, on any bad one, none)",
        description="Import examples: every record is checked first; a bad one is named by its line and nothing is stored.",
        epilog=IMPORT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(importer)
    importer.add_argument("file", type=Path, help="the file (or Hugging Face dataset folder) to import")
    importer.add_argument(
        "--format", choices=IMPORT_FORMATS, default=None, help="the file's format (default: guessed from the file)"
    )
    importer.add_argument(
        "--status",
        choices=IMPORT_STATUSES,
        default=None,
        help="give every example this status; 'pending' sends the file through the review queue "
        "(default: as the records say, else approved)",
    )
    importer.set_defaults(handler=cmd_import)

    exporter = commands.add_parser(
        "export",
        help="export examples to a file",
        description="Export examples, oldest first. Importing the file into a fresh data dir restores them.",
        epilog=EXPORT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(exporter)
    exporter.add_argument("file", type=Path, help="the file to write (for --format hf, a new folder)")
    exporter.add_argument("--format", choices=EXPORT_FORMATS, required=True, help="the format to write")
    exporter.add_argument(
        "--status",
        choices=EXPORT_SELECTIONS,
        default="all",
        help="which examples (default all: every one not superseded by a newer output)",
    )
    exporter.set_defaults(handler=cmd_export)

    backup = commands.add_parser(
        "backup",
        help="copy the database and adapters to a new folder (safe while the server runs)",
        description="Back up a data dir: a consistent copy of the database (SQLite's backup API, checked) and "
        "every finished adapter version, into a new folder. Safe while the server is running.",
        epilog="examples:\n  python launch.py backup backups/2026-11-29 --data-dir ~/exemplar\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(backup)
    backup.add_argument("dest", type=Path, help="the new folder to write the backup to")
    backup.set_defaults(handler=cmd_backup)

    restore = commands.add_parser(
        "restore",
        help="bring a backup back into a data dir (stop the server first)",
        description="Restore a backup made by `backup` into a data dir. Refuses while a server or training job "
        "has the data dir's database open, and refuses to replace an existing database without --force.",
        epilog="examples:\n  python launch.py restore backups/2026-11-29 --data-dir ~/exemplar-restored\n"
        "  python launch.py restore backups/2026-11-29 --data-dir ~/exemplar --force\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(restore)
    restore.add_argument("src", type=Path, help="the backup folder")
    restore.add_argument("--force", action="store_true", help="replace the data dir's existing database and adapters")
    restore.set_defaults(handler=cmd_restore)

    from training.commands import add_parsers as add_training_parsers

    add_training_parsers(commands, add_common)  # train, eval, models
    return parser


def cmd_import(args: argparse.Namespace) -> int:
    """Import a file of examples into the data dir's database."""
    from core.datadir import DataDir
    from storage import Store
    from storage.exchange import import_file, import_summary

    store = Store(DataDir(args.data_dir).writable_db())
    try:
        report = import_file(store, args.file, args.format, status=args.status)
    finally:
        store.close()
    print(import_summary(report, str(args.file)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export the data dir's examples to a file."""
    from core.datadir import DataDir
    from storage import Store
    from storage.exchange import export_file

    store = Store(DataDir(args.data_dir).existing_db())
    try:
        count = export_file(store, args.file, args.format, selection=args.status)
    finally:
        store.close()
    print(f"Exported {count} {args.format} records to {args.file}.")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    """Back up the data dir's database and adapters."""
    from core.backup import backup_data_dir

    manifest = backup_data_dir(args.data_dir, args.dest)
    print(f"Backed up {manifest['examples']} examples, {manifest['feedback']} feedback rows and "
          f"{len(manifest['adapters'])} adapter versions to {args.dest}.")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """Restore a backup into the data dir."""
    from core.backup import restore_data_dir

    manifest = restore_data_dir(args.src, args.data_dir, force=args.force)
    print(f"Restored {manifest['examples']} examples and {manifest['feedback']} feedback rows "
          f"from {args.src} into {args.data_dir}.")
    return 0


def serve_configs(args: argparse.Namespace) -> tuple[Any, Any, Any, Any]:
    """ServeConfig, TrainConfig, EvalConfig and RetrainPolicy from the flags, every problem reported at once."""
    from core.config import VLLM_DEFAULT_MAX_LORA_RANK, ServeConfig, build_all
    from core.flags import from_args
    from training.config import EvalConfig, RetrainPolicy, TrainConfig

    rank = {}
    if args.backend == "openai-upstream" and args.train_max_lora_rank is None:
        # An adapter above the upstream's --max-lora-rank could never be served: refuse it before training.
        rank["max_lora_rank"] = VLLM_DEFAULT_MAX_LORA_RANK
    return build_all(
        lambda: from_args(args, ServeConfig),
        lambda: from_args(args, TrainConfig, **rank),
        lambda: from_args(args, EvalConfig),
        lambda: from_args(args, RetrainPolicy),
    )


def cmd_serve(args: argparse.Namespace) -> int:
    """Validate the config, load the model, and serve until interrupted."""
    config, train_config, eval_config, policy = serve_configs(args)
    import uvicorn

    from bot.auth import generate_password
    from bot.server import build_server, uvicorn_options
    from bot.serving.engine import Engine
    from storage import Store
    from training.manager import TrainingManager

    store = Store(config.paths.db)
    if config.seed_examples:
        from storage.exchange import seed_examples

        seeded = seed_examples(store, config.seed_examples)
        print(f"Seeded {seeded} examples from {config.seed_examples}." if seeded else "Seed examples already applied.")
    password = config.admin_password
    generated = password is None
    if generated:
        password = generate_password()
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    print(f"Loading the base model {config.base_model or '(bundled SmolLM2-135M-Instruct)'}…", flush=True)
    if config.backend == "openai-upstream":
        from bot.serving.upstream import UpstreamEngine

        engine = UpstreamEngine.load(config)
        print(f"Generation goes to the upstream model server at {engine.client.url}", flush=True)
    else:
        engine = Engine.load(
            config.base_model,
            config.data_dir,
            max_context_tokens=config.max_context_tokens,
            max_batch=config.max_batch,
            bf16_from_batch=config.bf16_from_batch,
            bf16_prefill_from_tokens=config.bf16_prefill_from_tokens,
            prefill_chunk_tokens=config.prefill_chunk_tokens,
        )
    training = TrainingManager(store, config.data_dir, config.base_model, train_config, policy, eval_config)
    app, watcher = build_server(engine, store, config, password, training=training)
    url = f"http://{config.host}:{config.port}/"
    print(f"Exemplar is serving {engine.version} of {engine.base_name} at {url}", flush=True)
    if generated:
        # Printed once, to the console only, as Jupyter does with its token.
        print(f"Admin password (generated for this run): {password}", flush=True)
    # Reaps dead training jobs and starts retrains when the policy says so.
    scheduler = training.start_background()
    try:
        uvicorn.run(app, **uvicorn_options(config))
    finally:
        scheduler.set()
        watcher.stop()
        store.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    commands = {"serve", "train", "eval", "import", "export", "backup", "restore", "models", "-h", "--help"}
    if not argv or argv[0] not in commands:
        argv = ["serve", *argv]  # `python launch.py [options]` serves
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from core.errors import ExemplarError

    try:
        return args.handler(args)
    except ExemplarError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE if exc.status_code in (400, 401) else EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a write that met a full disk outside the code that says so itself
        from storage.errors import is_storage_full

        if not is_storage_full(exc):
            raise
        print(f"error: storage is full: {exc}; free space on that disk, then try again", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
