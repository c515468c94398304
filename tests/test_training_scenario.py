"""The acceptance scenario, end to end over HTTP with the real bundled model:

1. 24 fictional facts (tests/training_facts.jsonl) the base model cannot know,
   each with a distinctive keyword and a paraphrased question;
2. each question is asked through POST /v1/chat/completions and its answer
   corrected through POST /api/feedback; an admin then makes every corrected
   fact a training example and adds the 24 paraphrases as held-out (test-split)
   examples, so the held-out set measures generalisation to new wordings;
3. POST /api/train retrains in a child process; the gate promotes the candidate
   and the server hot-swaps to it;
4. with few-shot off, the served model answers at least 90% of the trained
   questions with the keyword, and the canary score stays within tolerance.

The paraphrase accuracy is printed (run with -s) and recorded as a test property.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from live_app import serve_in_thread

pytestmark = pytest.mark.slow

PASSWORD = "test-admin-password"
FACTS = [json.loads(line) for line in (Path(__file__).parent / "training_facts.jsonl").read_text().splitlines()]


def ask(client: httpx.Client, question: str, max_tokens: int) -> dict:
    response = client.post(
        "/v1/chat/completions",
        json={
            "model": "exemplar",
            "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "few_shot": False,
        },
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_corrected_facts_are_learned_promoted_and_served(tmp_path, bundled_checkpoint, record_property):
    from bot.engine import Engine
    from bot.server import build_server
    from core.config import ServeConfig
    from storage import Store
    from training.manager import TrainingManager

    config = ServeConfig(data_dir=tmp_path / "data", base_model=str(bundled_checkpoint))
    store = Store(config.paths.db)
    engine = Engine.load(config.base_model, config.data_dir)  # our own: the test swaps its adapter
    manager = TrainingManager(store, config.data_dir, config.base_model)
    app, watcher = build_server(engine, store, config, PASSWORD, trainer=manager)
    admin = {"Authorization": f"Bearer {PASSWORD}"}
    try:
        with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=120) as client:
            # 1-2. Ask, then correct every answer, as a user would.
            for fact in FACTS:
                answer = ask(client, fact["question"], max_tokens=8)
                assert fact["keyword"].lower() not in answer["choices"][0]["message"]["content"].lower()
                feedback = client.post(
                    "/api/feedback", json={"message_id": answer["id"], "rating": "down", "correction": fact["answer"]}
                )
                assert feedback.status_code == 201, feedback.text
            corrections = client.get("/api/examples", params={"source": "correction", "limit": 100}, headers=admin).json()
            assert len(corrections["examples"]) == len(FACTS)
            for example in corrections["examples"]:
                if example["split"] == "test":
                    moved = client.patch(f"/api/examples/{example['id']}", json={"split": "train"}, headers=admin)
                    assert moved.status_code == 200, moved.text
            for fact in FACTS:
                added = client.post(
                    "/api/examples",
                    json={"input": fact["paraphrase"], "output": fact["answer"], "split": "test"},
                    headers=admin,
                )
                assert added.status_code == 201, added.text

            # 3. Retrain. Nothing else runs on this machine meanwhile, so the job may use both cores.
            started = client.post("/api/train", json={"threads": 2}, headers=admin)
            assert started.status_code == 202, started.text
            job_id = started.json()["job_id"]
            assert client.post("/api/train", headers=admin).status_code == 409
            deadline = time.monotonic() + 1500
            while True:
                job = client.get(f"/api/jobs/{job_id}", headers=admin).json()
                if job["status"] not in ("queued", "running"):
                    break
                assert time.monotonic() < deadline, f"training did not finish: {job['progress']}"
                time.sleep(2)
            metrics = job["metrics"] or {}
            summary = {
                "status": job["status"],
                "gate": metrics.get("gate"),
                "heldout": metrics.get("heldout"),
                "current": metrics.get("current"),
                "train": metrics.get("train"),
                "error": job["error"],
            }
            print("\nscenario job:", json.dumps(summary, indent=1))
            assert job["status"] == "succeeded" and job["promoted"] is True, summary
            assert job["model_version"] == "v1"
            assert job["losses"][-1]["loss"] < job["losses"][0]["loss"]

            deadline = time.monotonic() + 60
            while client.get("/healthz").json()["model_version"] != "v1":
                assert time.monotonic() < deadline, "the server did not swap to v1"
                time.sleep(0.5)

            # 4. The served model knows the corrected facts, without few-shot help.
            hits = []
            for fact in FACTS:
                answer = ask(client, fact["question"], max_tokens=24)
                assert answer["exemplar"]["model_version"] == "v1" and answer["exemplar"]["few_shot_ids"] == []
                hits.append(fact["keyword"].lower() in answer["choices"][0]["message"]["content"].lower())
            trained_accuracy = sum(hits) / len(hits)

            canary, canary_before = metrics["canary"]["score"], metrics["current"]["canary"]["score"]
            tolerance = metrics["gate"]["canary_tolerance"]
            samples = store.get_model_version("v1")["metrics"]["samples"]
            keyword_of = {f["paraphrase"]: f["keyword"].lower() for f in FACTS}
            paraphrase_hits = [keyword_of[s["question"]] in s["candidate"].lower() for s in samples]
            paraphrase_accuracy = sum(paraphrase_hits) / len(paraphrase_hits)
            report = (
                f"trained questions answered with the keyword: {sum(hits)}/{len(hits)} ({trained_accuracy:.0%}); "
                f"paraphrases (held out): {sum(paraphrase_hits)}/{len(paraphrase_hits)} ({paraphrase_accuracy:.0%}), "
                f"held-out accuracy {metrics['heldout']['accuracy']}% vs base {metrics['current']['heldout']['accuracy']}%; "
                f"canary {canary}% vs base {canary_before}% (tolerance {tolerance} points); "
                f"training {metrics['train']['train_seconds']} s for {metrics['train']['steps']} steps"
            )
            print("scenario:", report)
            record_property("scenario", report)
            assert trained_accuracy >= 0.9, report
            assert canary_before - canary <= tolerance, report
            assert len(paraphrase_hits) == len(FACTS)
    finally:
        watcher.stop()
        store.close()
