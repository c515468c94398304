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
  python launch.py serve --base-model ./my-checkpoint
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
    """Options every subcommand takes."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("EXEMPLAR_DATA_DIR", "data")),
        help="folder for the database, the converted base model and adapters (env EXEMPLAR_DATA_DIR; default ./data)",
    )
    parser.add_argument(
        "--base-model",
        default=os.environ.get("EXEMPLAR_BASE_MODEL") or None,
        help="Hugging Face model id or local folder (env EXEMPLAR_BASE_MODEL); default: the bundled SmolLM2-135M-Instruct",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")


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
        description="Serve the chat UI (Chat and Admin tabs) and the HTTP API on one port.",
        epilog=SERVE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=7860, help="TCP port (default 7860)")
    serve.add_argument(
        "--admin-password",
        default=os.environ.get("EXEMPLAR_ADMIN_PASSWORD") or None,
        help="admin password (env EXEMPLAR_ADMIN_PASSWORD); on a loopback bind one is generated and printed if unset",
    )
    serve.add_argument(
        "--review-policy",
        choices=("auto", "manual"),
        default=None,
        help="auto approves new examples at once; manual waits for an admin (default: auto on loopback, else manual)",
    )
    serve.add_argument("--max-new-tokens", type=int, default=256, help="default cap on an answer's tokens")
    serve.add_argument("--no-few-shot", action="store_true", help="do not put approved examples into prompts by default")
    serve.add_argument("--threads", type=int, default=None, help="torch CPU threads for generation")
    serve.add_argument(
        "--seed-examples",
        type=Path,
        default=None,
        metavar="FILE",
        help="start a data dir from a file of examples (any import format); applied once, skipped once seeded",
    )
    serve.set_defaults(handler=cmd_serve)

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
        choices=("approved", "pending"),
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
        choices=("approved", "pending", "rejected", "all"),
        default="all",
        help="which examples (default all: every one not superseded by a newer output)",
    )
    exporter.set_defaults(handler=cmd_export)

    from training.commands import add_parsers as add_training_parsers

    add_training_parsers(commands, add_common)  # train, eval, models
    return parser


def cmd_import(args: argparse.Namespace) -> int:
    """Import a file of examples into the data dir's database."""
    from core.config import ServeConfig
    from storage import Store
    from storage.exchange import import_file

    store = Store(ServeConfig(data_dir=args.data_dir).db_path)
    try:
        ids = import_file(store, args.file, args.format, status=args.status, actor="cli")
    finally:
        store.close()
    print(f"Imported {len(ids)} examples from {args.file} (ids {ids[0]}–{ids[-1]}).")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export the data dir's examples to a file."""
    from core.config import ServeConfig
    from storage import Store
    from storage.exchange import export_file

    store = Store(ServeConfig(data_dir=args.data_dir).db_path)
    try:
        count = export_file(store, args.file, args.format, selection=args.status)
    finally:
        store.close()
    print(f"Exported {count} {args.format} records to {args.file}.")
    return 0


def serve_config(args: argparse.Namespace) -> Any:
    from core.config import ServeConfig

    return ServeConfig(
        data_dir=args.data_dir,
        base_model=args.base_model,
        host=args.host,
        port=args.port,
        admin_password=args.admin_password,
        review_policy=args.review_policy,
        max_new_tokens=args.max_new_tokens,
        few_shot=not args.no_few_shot,
        threads=args.threads,
    ).validate()


def cmd_serve(args: argparse.Namespace) -> int:
    """Validate the config, load the model, and serve until interrupted."""
    config = serve_config(args)
    import uvicorn

    from bot.admin import generate_password
    from bot.engine import Engine
    from bot.server import build_server
    from storage import Store

    store = Store(config.db_path)
    if args.seed_examples:
        from storage.exchange import seed_examples

        seeded = seed_examples(store, args.seed_examples)
        print(f"Seeded {seeded} examples from {args.seed_examples}." if seeded else "Seed examples already applied.")
    password = config.admin_password
    generated = password is None
    if generated:
        password = generate_password()
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    print(f"Loading the base model {config.base_model or '(bundled SmolLM2-135M-Instruct)'}…", flush=True)
    engine = Engine.load(config.base_model, config.data_dir, max_context_tokens=config.max_context_tokens)
    trainer = make_trainer(store, config)
    app, watcher = build_server(engine, store, config, password, trainer=trainer)
    url = f"http://{config.host}:{config.port}/"
    print(f"Exemplar is serving {engine.version} of {engine.base_name} at {url}", flush=True)
    if generated:
        # Printed once, to the console only, as Jupyter does with its token.
        print(f"Admin password (generated for this run): {password}", flush=True)
    # Reaps dead training jobs and starts retrains when the policy says so.
    scheduler = trainer.start_background()
    try:
        uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
    finally:
        scheduler.set()
        watcher.stop()
        store.close()
    return 0


def make_trainer(store: Any, config: Any) -> Any:
    """The training manager the server uses to start, watch and schedule jobs."""
    from training.manager import TrainingManager

    return TrainingManager(store, config.data_dir, config.base_model)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    commands = {"serve", "train", "eval", "import", "export", "models", "-h", "--help"}
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


if __name__ == "__main__":
    sys.exit(main())
