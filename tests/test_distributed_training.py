"""`python launch.py train` under `accelerate launch` with two CPU processes (gloo) trains
the adapter one process trains, writes exactly one version, and so does the worker the
manager launches with `processes=2`.

Tolerance, measured here: with the same global batches the two runs differ in how the
loss is averaged (DDP averages the two processes' per-token means; one process takes the
mean over all tokens: the loss in training/finetune.py is a per-process token mean) and in
float summation order. Per-step losses agreed within 0.0034 and the LoRA B weights within
4.2% (relative norm; 1.8% with 8 examples); the test allows 0.01 and 10%.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.live_app import REPO, free_port

FACTS = Path(__file__).with_name("training_facts.jsonl")
# Small and even: 12 approved examples (8 train, 4 test; the version is refit on all 12) in batches
# of 4 (2 per process), 2 epochs: 6 steps. No extra wordings, and fp32, as when the tolerances below
# were measured (the default recipe's rewordings and bf16 are the same code on one process or two).
# One top-up round (the tiny model learns nothing, so it runs on all 12): 12 rows, 1 epoch, 3 more steps.
SETTINGS = ["--set", "replay_examples=0", "--set", "batch_size=4", "--set", "epochs=2", "--set", "rewordings=0",
            "--set", "statement_prompts=0", "--set", "bf16=false", "--set", "topup_rounds=1",
            "--set", "topup_epochs=1", "--no-progress"]
LOSS_TOLERANCE = 0.01
WEIGHT_TOLERANCE = 0.10


def launch(*args: str, data_dir: Path, base_model: Path, accelerate: bool = False) -> subprocess.CompletedProcess:
    command = [sys.executable]
    if accelerate:
        command += ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                    "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    command += [str(REPO / "launch.py"), *args, "--data-dir", str(data_dir), "--base-model", str(base_model)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def rows(data_dir: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(data_dir / "exemplar.db") as db:
        return db.execute(sql).fetchall()


def lora_b(data_dir: Path) -> dict:
    from safetensors.torch import load_file

    weights = load_file(data_dir / "adapters" / "v1" / "adapter_model.safetensors")
    return {k: v for k, v in weights.items() if "lora_B" in k}


def relative_difference(a: dict, b: dict) -> float:
    num = sum(float((a[k] - b[k]).norm() ** 2) for k in a) ** 0.5
    return num / sum(float(a[k].norm() ** 2) for k in a) ** 0.5


@pytest.mark.slow
def test_two_processes_train_what_one_trains_and_write_one_version(tmp_path, tiny_checkpoint):
    facts = [json.loads(line) for line in FACTS.read_text().splitlines()][:12]
    examples = tmp_path / "examples.jsonl"
    examples.write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": f["question"]}, {"role": "assistant", "content": f["answer"]}],
                    "split": "train" if i < 8 else "test"}) + "\n"
        for i, f in enumerate(facts)
    ))
    single, launched, spawned = tmp_path / "single", tmp_path / "launched", tmp_path / "spawned"
    imported = launch("import", str(examples), data_dir=single, base_model=tiny_checkpoint)
    assert imported.returncode == 0, imported.stderr
    shutil.copytree(single, launched)
    shutil.copytree(single, spawned)

    one = launch("train", *SETTINGS, data_dir=single, base_model=tiny_checkpoint)
    two = launch("train", *SETTINGS, data_dir=launched, base_model=tiny_checkpoint, accelerate=True)
    spawn = launch("train", *SETTINGS, "--set", "processes=2", data_dir=spawned, base_model=tiny_checkpoint)
    for run in (one, two, spawn):
        assert run.returncode in (0, 3), run.stdout + run.stderr  # promoted, or kept as rejected
    assert "on 2 processes" in two.stdout
    # Only the main process reported: one outcome line, not two.
    assert two.stdout.count("Promoted v1") + two.stdout.count("Not promoted") == 1

    reference = rows(single, "select losses from jobs")
    for data_dir in (launched, spawned):
        # Exactly one job and one version, one adapter folder, nothing half-written beside it.
        assert len(rows(data_dir, "select id from jobs")) == 1
        assert [r[0] for r in rows(data_dir, "select version from model_versions")] == ["v1"]
        assert sorted(p.name for p in (data_dir / "adapters").iterdir()) == ["v1"]
        (status, losses), = rows(data_dir, "select status, losses from jobs")
        assert status in ("succeeded", "rejected")
        ours, theirs = json.loads(losses), json.loads(reference[0][0])
        assert [s["step"] for s in ours] == [s["step"] for s in theirs] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
        assert max(abs(a["loss"] - b["loss"]) for a, b in zip(ours, theirs)) < LOSS_TOLERANCE
        assert relative_difference(lora_b(single), lora_b(data_dir)) < WEIGHT_TOLERANCE
        # Evaluation was sharded and gathered: every approved example and every canary was judged once.
        (metrics,), = rows(data_dir, "select metrics from jobs")
        metrics = json.loads(metrics)
        assert metrics["learned"]["n"] == 12 and metrics["canary"]["n"] == 40
        # The processes agreed on the top-up round: the same 12 examples, 3 steps, the curve's steps 7 to 9.
        assert [(len(r["examples"]), r["steps"]) for r in metrics["topups"]] == [(12, 3)]
        (items,), = rows(data_dir, "select metrics from model_versions")
        assert sorted(i["example_id"] for i in json.loads(items)["items"]) == list(range(1, 13))
    # The spawned launch ran both processes in the worker (each logs its own training steps).
    log = (spawned / "logs" / "job-1.log").read_text()
    assert log.count("step 6/6") == 2
