"""Measurements, each printing ratios against a baseline measured in the same run.

Run one from the repository root, e.g. `.venv/bin/python -m benchmarks.bench_serving --help`.
The `bench_*` and `measure_*` modules are the benchmarks; the others hold what several of them
share (the model they measure, timing, prompts, the fact sets, a server, an HTTP load client).
"""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
