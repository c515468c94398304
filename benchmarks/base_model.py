"""The model a benchmark measures: the bundled SmolLM2 converted once into a data dir, or --base-model."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks import REPO

if TYPE_CHECKING:
    from core.models import BaseModelRef

# The tests' copy of the converted bundled model, so a machine converts it once for both.
DATA_DIR = Path(os.environ.get("EXEMPLAR_TEST_CACHE", REPO / ".cache" / "test-data"))


def add_data_dir_flag(parser: argparse.ArgumentParser) -> None:
    """--data-dir: where the bundled model is (or will be) converted."""
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR,
                        help="where the bundled model is converted (default: $EXEMPLAR_TEST_CACHE, else "
                             ".cache/test-data: the tests' copy)")


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """--base-model and --data-dir, read back by `base_model(args)`."""
    parser.add_argument("--base-model", default=None,
                        help="model folder or hub id (default: the bundled model, converted into --data-dir)")
    add_data_dir_flag(parser)


def base_model(args: argparse.Namespace) -> BaseModelRef:
    """The model the flags name, the bundled one converted first if needed."""
    from core.models import resolve_base_model

    return resolve_base_model(args.base_model, args.data_dir)
