"""The natural path, end to end over HTTP: chat, correct, retrain; nothing else.

1. 24 fictional facts (tests/training_facts.jsonl) the base model cannot know
   are asked through POST /v1/chat/completions, as a user would, and every
   answer is corrected through POST /api/feedback (approved automatically on a
   loopback server). No split is moved and no test example is added by hand.
2. POST /api/train with no body: the default recipe, in a child process.
3. The job is promoted and the server hot-swaps to it; with few-shot off the
   served model answers at least 95% of *all* the corrected questions (those
   whose examples fell into the test split included) and the canary is kept.

The second test is a new admin's mixed set (imports, thumbs-up, one correction),
learned whole by the first retrain; the third takes the same path with a tiny
model and a self-contradicting pair of corrections, and checks that the pair is
reported as not learned, with the reason. The last turns answers down and
retrains with the KTO objective: the downvoted answers do not come back.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest

from tests.live_app import ADMIN, ADMIN_PASSWORD, serve_in_thread
from tests.training_helpers import learnable_tiny_llama, save_tiny_base

FACTS = [json.loads(line) for line in (Path(__file__).parent / "training_facts.jsonl").read_text().splitlines()]


def ask(client: httpx.Client, question: str, max_tokens: int, **extra) -> dict:
    response = client.post(
        "/v1/chat/completions",
        json={"model": "exemplar", "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
              "temperature": 0, **extra},
    )
    assert response.status_code == 200, response.text
    return response.json()


def correct(client: httpx.Client, answer: dict, text: str) -> dict:
    feedback = client.post("/api/feedback", json={"message_id": answer["id"], "rating": "down", "correction": text})
    assert feedback.status_code == 201, feedback.text
    return feedback.json()


def wait_for_job(client: httpx.Client, job_id: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/jobs/{job_id}", headers=ADMIN).json()
        if job["status"] not in ("queued", "running"):
            return job
        assert time.monotonic() < deadline, f"training did not finish: {job['progress']}"
        time.sleep(2)


def wait_for_version(client: httpx.Client, version: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/healthz").json()["model_version"] != version:
        assert time.monotonic() < deadline, f"the server did not swap to {version}"
        time.sleep(0.5)


def serve(tmp_path, engine, base_model: str):
    from bot.server import build_server
    from core.config import ServeConfig
    from storage import Store
    from training.manager import TrainingManager

    config = ServeConfig(data_dir=tmp_path / "data", base_model=base_model)
    store = Store(config.paths.db)
    manager = TrainingManager(store, config.data_dir, config.base_model)
    app, watcher = build_server(engine, store, config, ADMIN_PASSWORD, training=manager)
    return app, watcher, store


@pytest.mark.slow
def test_chat_correct_retrain_promotes_and_serves_every_correction(tmp_path, bundled_checkpoint, record_property):
    from bot.serving.engine import Engine

    engine = Engine.load(str(bundled_checkpoint), tmp_path / "data")
    app, watcher, store = serve(tmp_path, engine, str(bundled_checkpoint))
    try:
        with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=300) as client:
            # 1. Ask, then correct every answer, as a user would.
            for fact in FACTS:
                correct(client, ask(client, fact["question"], max_tokens=8), fact["answer"])
            examples = client.get("/api/examples", params={"source": "correction", "limit": 100}, headers=ADMIN).json()
            assert examples["total"] == len(FACTS)
            assert {e["status"] for e in examples["examples"]} == {"approved"}
            held_out = sum(e["split"] == "test" for e in examples["examples"])

            # 2. Retrain with the defaults.
            started_at, load_before = time.monotonic(), os.getloadavg()[0]
            started = client.post("/api/train", headers=ADMIN)
            assert started.status_code == 202, started.text
            job = wait_for_job(client, started.json()["job_id"], timeout=3600)  # ~10 min alone on 2 cores
            metrics = job["metrics"] or {}
            print("\nscenario job:", json.dumps({k: metrics.get(k) for k in ("gate", "learned", "heldout", "timings")}, indent=1))
            assert job["status"] == "succeeded" and job["promoted"] is True, job["error"]
            assert job["model_version"] == "v1"
            wait_for_version(client, "v1")
            served_after = time.monotonic() - started_at
            load_after = os.getloadavg()[0]

            # 3. The served model knows every corrected fact without few-shot help, and kept the canary.
            hits, paraphrase_hits = [], []
            for fact in FACTS:
                answer = ask(client, fact["question"], max_tokens=24, few_shot=False)
                assert answer["exemplar"]["model_version"] == "v1" and answer["exemplar"]["few_shot_ids"] == []
                hits.append(fact["keyword"].lower() in answer["choices"][0]["message"]["content"].lower())
                paraphrase = ask(client, fact["paraphrase"], max_tokens=24, few_shot=False)
                paraphrase_hits.append(fact["keyword"].lower() in paraphrase["choices"][0]["message"]["content"].lower())
            canary = next(r for r in metrics["gate"]["rules"] if r["name"] == "canary")
            report = (
                f"corrections answered with few-shot off: {sum(hits)}/{len(hits)} ({held_out} of them in the test split); "
                f"paraphrases (never trained): {sum(paraphrase_hits)}/{len(paraphrase_hits)}; {canary['message']}; "
                f"trained, evaluated and served in {served_after:.0f} s (load average {load_before:.1f} → {load_after:.1f} "
                f"on {os.cpu_count()} cores); timings {metrics['timings']}; {metrics['train']['steps']} steps"
            )
            print("scenario:", report)
            record_property("scenario", report)
            assert sum(hits) >= 0.95 * len(FACTS), report
            assert canary["passed"] and len(canary["items"]) <= 1, report

            # "Did it learn this?" over the API agrees with what the server answers.
            learned = client.get("/api/learning", headers=ADMIN).json()
            assert learned["version"] == "v1" and learned["n"] == len(FACTS) and learned["learned"] >= 23
            assert all(i["margin_candidate"] > i["margin_base"] for i in learned["items"] if i["candidate_learned"])
    finally:
        watcher.stop()
        store.close()


GENERAL = ["What is the capital of France?", "How many days are in a week?", "What do bees make?"]


@pytest.mark.slow
def test_a_new_admins_mixed_set_is_learned_whole_by_the_first_retrain(tmp_path, bundled_checkpoint, record_property):
    """As a new admin starts: 20 help-desk examples imported for review and 15 of them approved, one answer
    corrected and three thumbed up in the chat, then "retrain" with the defaults. The first retrain learns
    every approved example, by itself (the top-up rounds), and the verdict counts each kind apart."""
    from bot.serving.engine import Engine

    engine = Engine.load(str(bundled_checkpoint), tmp_path / "data")
    app, watcher, store = serve(tmp_path, engine, str(bundled_checkpoint))
    try:
        with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=300) as client:
            data = (Path(__file__).parents[1] / "examples" / "help_desk.jsonl").read_bytes()
            imported = client.post("/api/examples/import", params={"status": "pending"}, content=data, headers=ADMIN)
            assert imported.status_code == 201, imported.text
            for example_id in imported.json()["ids"][:15]:
                approved = client.patch(f"/api/examples/{example_id}", json={"status": "approved"}, headers=ADMIN)
                assert approved.status_code == 200, approved.text
            for question in GENERAL:
                answer = ask(client, question, max_tokens=48)
                up = client.post("/api/feedback", json={"message_id": answer["id"], "rating": "up"})
                assert up.status_code == 201, up.text
            correct(client, ask(client, FACTS[0]["question"], max_tokens=24), FACTS[0]["answer"])
            # And one answer turned down without a correction (a question no example is related to, so the model
            # answers it): the retrain is asked whether it still gives it.
            disliked = ask(client, "Who wrote Romeo and Juliet?", max_tokens=48)
            down = client.post("/api/feedback", json={"message_id": disliked["id"], "rating": "down",
                                                      "reason": "Wrong fact"})
            assert down.status_code == 201, down.text
            examples = client.get("/api/examples", params={"status": "approved", "limit": 100}, headers=ADMIN).json()
            kinds = sorted(e["source"] for e in examples["examples"])
            assert kinds == ["correction"] + ["import"] * 15 + ["upvote"] * 3, kinds

            started_at = time.monotonic()
            started = client.post("/api/train", headers=ADMIN)
            assert started.status_code == 202, started.text
            job = wait_for_job(client, started.json()["job_id"], timeout=3600)
            metrics = job["metrics"] or {}
            report = (
                f"mixed set: {job['status']}, {(metrics.get('gate') or {}).get('reasons')}; learned "
                f"{metrics.get('learned')}; top-ups {metrics.get('topups')}; timings {metrics.get('timings')}; "
                f"{time.monotonic() - started_at:.0f} s to the verdict"
            )
            print("\n" + report)
            record_property("mixed_set", report)
            assert job["status"] == "succeeded" and job["promoted"] is True, report
            learned = metrics["learned"]
            assert learned["candidate"] == learned["n"] == 19, report
            assert learned["by_source"] == "corrections 1 of 1, thumbs-up 3 of 3, imports 15 of 15", report
            assert metrics["not_learned"] == [], report
            # The downvoted answer is an item of the report, beside the base model's own greedy answer.
            assert metrics["downvoted"]["n"] == 1 and metrics["downvoted"]["serving"] == 1, report
            assert next(r for r in metrics["gate"]["rules"] if r["name"] == "downvoted")["passed"], report
            learning = client.get("/api/learning", headers=ADMIN).json()
            [item] = learning["downvoted"]
            assert item["message_id"] == int(disliked["id"]) and item["reasons"] == ["wrong fact"]
            assert item["answer"] == disliked["choices"][0]["message"]["content"]
            assert item["logp_candidate"] is not None and item["logp_base"] is not None
    finally:
        watcher.stop()
        store.close()


RECIPE = {"max_steps": 40, "learning_rate": 0.02, "batch_size": 4, "replay_examples": 0,
          "target_modules": "all-linear", "warmup_steps": 0}


@pytest.mark.slow  # a training run in a child process
def test_a_self_contradicting_correction_is_reported_as_not_learned_with_the_reason(tmp_path, tokenizer):
    from bot.serving.engine import Engine

    base = save_tiny_base(learnable_tiny_llama(tokenizer), tokenizer, tmp_path / "tiny-base")
    engine = Engine(learnable_tiny_llama(tokenizer), tokenizer, base_name="tiny", max_context_tokens=256)
    app, watcher, store = serve(tmp_path, engine, str(base))
    try:
        with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=120) as client:
            ids = {}
            for question, text in [
                ("Is door number 1 open?", "yes indeed"),
                ("Is door number 2 open?", "yes indeed"),
                ("Is door number 3 open?", "yes indeed"),
                # The same question twice, asked with different punctuation, corrected two ways:
                ("What colour is the gate?", "The gate is crimson."),
                ("what colour is the gate", "The gate is teal."),
            ]:
                ids[text, question] = correct(client, ask(client, question, max_tokens=6), text)["example_id"]
            started = client.post("/api/train", json=RECIPE, headers=ADMIN)
            assert started.status_code == 202, started.text
            job = wait_for_job(client, started.json()["job_id"], timeout=300)
            assert job["status"] in ("succeeded", "rejected"), job["error"]
            crimson = ids["The gate is crimson.", "What colour is the gate?"]
            teal = ids["The gate is teal.", "what colour is the gate"]
            report = client.get("/api/learning", params={"version": job["model_version"]}, headers=ADMIN).json()
            pair = {i["example_id"]: i for i in report["items"] if i["example_id"] in (crimson, teal)}
            assert not all(i["candidate_learned"] for i in pair.values())  # no model can give both answers
            for example_id, other in ((crimson, teal), (teal, crimson)):
                if not pair[example_id]["candidate_learned"]:
                    assert pair[example_id]["reason"] == f"contradicts #{other}: the same question with a different answer"
            not_learned = client.get(
                "/api/learning", params={"version": job["model_version"], "not_learned": "true"}, headers=ADMIN
            ).json()["items"]
            assert {i["example_id"] for i in not_learned} >= {k for k, i in pair.items() if not i["candidate_learned"]}
            assert "they contradict each other" in job["metrics"]["gate"]["summary"]
    finally:
        watcher.stop()
        store.close()


@pytest.mark.slow
def test_downvoted_answers_are_unlearned_and_corrections_kept_by_a_kto_retrain(tmp_path, bundled_checkpoint,
                                                                               record_property):
    """A thumbs-down teaches what not to say. Users chat; eight wrong general answers are turned down (with a
    reason, no correction), eight other wrong answers are left unrated, eight fictional facts are corrected; an
    admin retrains from the API with the KTO objective. The promoted version no longer gives the downvoted
    answers (few-shot off), their log-probability per token falls by more than the unrated answers' (learned,
    not drift), and the corrections and the canary hold."""
    import statistics

    from peft import PeftModel

    from benchmarks.bench_preference import PREFERENCE_QUESTIONS
    from bot.serving.engine import Engine
    from core.models import load_base_model, resolve_base_model
    from training.evaluate import answer_logprobs_per_token, gives_answer

    engine = Engine.load(str(bundled_checkpoint), tmp_path / "data")
    app, watcher, store = serve(tmp_path, engine, str(bundled_checkpoint))
    try:
        with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=300) as client:
            said = {}  # what the base model told the user, by question
            for part in ("downvoted", "controls"):
                for question in PREFERENCE_QUESTIONS[part]:
                    answer = ask(client, question, max_tokens=48)
                    said[question] = answer["choices"][0]["message"]["content"]
                    if part == "downvoted":
                        down = client.post("/api/feedback", json={"message_id": answer["id"], "rating": "down",
                                                                  "reason": "Wrong fact"})
                        assert down.status_code == 201, down.text
            facts = FACTS[:8]
            for fact in facts:
                correct(client, ask(client, fact["question"], max_tokens=24), fact["answer"])

            started = client.post("/api/train", json={"objective": "sft+kto"}, headers=ADMIN)
            assert started.status_code == 202, started.text
            job = wait_for_job(client, started.json()["job_id"], timeout=3600)
            metrics = job["metrics"] or {}
            rules = {r["name"]: r for r in (metrics.get("gate") or {}).get("rules", [])}
            report = (
                f"KTO retrain: {job['status']}, {(metrics.get('gate') or {}).get('reasons')}; learned "
                f"{metrics.get('learned')}; downvoted {metrics.get('downvoted')}; preference "
                f"{metrics.get('preference')}; timings {metrics.get('timings')}"
            )
            print("\n" + report)
            assert job["status"] == "succeeded" and job["promoted"] is True, report
            wait_for_version(client, "v1")
            assert metrics["preference"]["objective"] == "sft+kto" and metrics["preference"]["undesirable"] >= 8

            # The promoted version, asked again with few-shot off, no longer gives the downvoted answers
            # and still answers the corrections.
            again = {q: ask(client, q, max_tokens=48, few_shot=False)["choices"][0]["message"]["content"]
                     for q in PREFERENCE_QUESTIONS["downvoted"]}
            given = [q for q, text in again.items() if gives_answer(text, said[q])]
            hits = [fact["keyword"].lower() in ask(client, fact["question"], max_tokens=24, few_shot=False)[
                "choices"][0]["message"]["content"].lower() for fact in facts]

            # Learned, not drift: the downvoted answers' log-probability falls by more than the unrated ones'.
            model, tokenizer = load_base_model(resolve_base_model(str(bundled_checkpoint), tmp_path / "data"))
            pairs = {part: [([{"role": "user", "content": q}], said[q]) for q in PREFERENCE_QUESTIONS[part]]
                     for part in ("downvoted", "controls")}
            before = {part: answer_logprobs_per_token(model, tokenizer, p, max_length=512, batch_size=8)
                      for part, p in pairs.items()}
            trained = PeftModel.from_pretrained(model, str(tmp_path / "data" / "adapters" / "v1")).eval()
            after = {part: answer_logprobs_per_token(trained, tokenizer, p, max_length=512, batch_size=8)
                     for part, p in pairs.items()}
            fall = {part: statistics.median(b - a for b, a in zip(before[part], after[part])) for part in pairs}
            summary = (f"downvoted given again {len(given)}/8 {given}; corrections {sum(hits)}/8; median log p fall "
                       f"per token: downvoted {fall['downvoted']:.3f}, unrated {fall['controls']:.3f}")
            print(summary)
            record_property("kto_retrain", f"{report}; {summary}")
            assert len(given) <= 1, summary
            assert fall["downvoted"] - fall["controls"] >= 0.1, summary  # 0.18 measured (bench_preference --facts 8)
            assert sum(hits) == len(facts), summary
            assert rules["canary"]["passed"] and len(rules["canary"]["items"]) <= 1, report
            assert metrics["downvoted"]["n"] == 8 and rules["downvoted"]["passed"], report
    finally:
        watcher.stop()
        store.close()
