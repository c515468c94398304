"""Concurrent corrections against real servers: this checkout and, optionally, another one.

Starts `launch.py serve` (loopback, bundled model) from each repo on a fresh data dir
holding one stored answer per writer, runs W writers posting corrections to
/api/feedback for S seconds, and prints writes/s, p50/p95 latency, 5xx answers and
acknowledged writes missing or mixed up afterwards. With --baseline (a checkout of
an older commit, e.g. `git worktree add /tmp/before <commit>`), the two runs are
printed side by side with their ratio.

    python -m benchmarks.bench_feedback_load --writers 50 --seconds 20 --baseline /tmp/before
"""

from __future__ import annotations

import argparse
import inspect
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import REPO
from benchmarks.base_model import add_model_flags, base_model
from benchmarks.load_client import missing_writes, run_writers, seed_answers
from benchmarks.server import QUIET_ENV, ServerProcess

# The answers are stored by the measured checkout's own storage code (an older checkout may have an
# older schema), so seed_answers runs as a script from inside that checkout.
SEED = "\n".join([
    "import sys", "from pathlib import Path", "", inspect.getsource(seed_answers),
    "print(*seed_answers(Path(sys.argv[1]), int(sys.argv[2])))",
])


def measure(repo: Path, model: str, writers: int, seconds: float) -> str:
    """One run against `repo`'s server: the writers' figures, and the acknowledged writes not stored as acknowledged."""
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder)
        seeded = subprocess.run([sys.executable, "-c", SEED, str(data / "exemplar.db"), str(writers)],
                                cwd=repo, env={**os.environ, **QUIET_ENV}, capture_output=True, text=True, check=True)
        messages = [int(word) for word in seeded.stdout.split()]
        server = ServerProcess(data, model, repo=repo).wait_ready()
        try:
            result = run_writers(server.url, messages, seconds)
            lost = missing_writes(data / "exemplar.db", result.acknowledged)
        finally:
            server.stop()
    return result.summary(str(repo)) + f", acknowledged but missing or mixed up: {len(lost)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--baseline", type=Path, help="another checkout to measure first, for comparison")
    add_model_flags(parser)
    args = parser.parse_args()
    model = base_model(args).path
    if args.baseline:
        print("baseline:", measure(args.baseline, model, args.writers, args.seconds), flush=True)
    print("this:    ", measure(REPO, model, args.writers, args.seconds), flush=True)


if __name__ == "__main__":
    main()
