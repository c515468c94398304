"""Concurrent corrections against real servers: this checkout and, optionally, another one.

Starts `launch.py serve` (loopback, bundled model) from each repo on a fresh data dir
holding one stored answer per writer, runs W writers posting corrections to
/api/feedback for S seconds, and prints writes/s, p50/p95 latency, 5xx answers and
acknowledged writes missing or mixed up afterwards. With --baseline (a checkout of
an older commit, e.g. `git worktree add /tmp/before <commit>`), the two runs are
printed side by side with their ratio.

    python benchmarks/bench_feedback_load.py --writers 50 --seconds 20 --baseline /tmp/before
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from load_client import missing_writes, run_writers  # noqa: E402

SEED = """
import sys
from storage import Store
store = Store(sys.argv[1])
for i in range(int(sys.argv[2])):
    question = [{"role": "user", "content": f"Earlier question number {i}?"}]
    conversation = store.create_conversation(source="api")
    store.add_message(conversation, "user", question[0]["content"])
    print(store.add_message(conversation, "assistant", f"Earlier answer {i}.", context=question))
store.close()
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(repo: Path, base_model: Path, writers: int, seconds: float) -> str:
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder)
        seeded = subprocess.run([sys.executable, "-c", SEED, str(data / "exemplar.db"), str(writers)],
                                cwd=repo, env=env, capture_output=True, text=True, check=True)
        messages = [int(line) for line in seeded.stdout.split()]
        port = free_port()
        log = open(data / "server.log", "w")
        server = subprocess.Popen(
            [sys.executable, "launch.py", "serve", "--data-dir", str(data), "--base-model", str(base_model),
             "--port", str(port), "--admin-password", "bench-password"],
            cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    urllib.request.urlopen(url + "/healthz", timeout=2)
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError((data / "server.log").read_text())
                    time.sleep(0.5)
            result = run_writers(url, messages, seconds)
            lost = missing_writes(data / "exemplar.db", result.acknowledged)
        finally:
            server.terminate()
            server.wait(timeout=30)
            log.close()
    return result.summary(str(repo)) + f", acknowledged but missing or mixed up: {len(lost) // 1}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--baseline", type=Path, help="another checkout to measure first, for comparison")
    parser.add_argument("--base-model", type=Path, default=REPO / ".cache/test-data/base/SmolLM2-135M-Instruct",
                        help="a converted base model folder (the test cache's by default)")
    args = parser.parse_args()
    if args.baseline:
        print("baseline:", measure(args.baseline, args.base_model, args.writers, args.seconds), flush=True)
    print("this:    ", measure(REPO, args.base_model, args.writers, args.seconds), flush=True)


if __name__ == "__main__":
    main()
