"""A correction answers its own question, and only that (bot/serving/retrieval.py consult, bot/serving/coverage.py):
minimal pairs get the honest reply with the stored answer shown as related, never stated; the
sentence-embedding model is checked and swappable; and (slow) the targets on tests/fewshot_pairs.json
through a real server."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bot.serving.coverage import coverage
from bot.serving.embedder import SentenceEmbedder, bundled_embedder_path, shared_embedder
from bot.serving.retrieval import consult, honest_reply
from core.errors import ModelLoadError
from storage import Store
from tests.fakes import FakeEngine

PAIRS = json.loads((Path(__file__).parent / "fewshot_pairs.json").read_text())["entities"]
HONEST = ("I don't have an answer to that yet", "I don't know that yet")

CHILD = ("How much is a child ticket on Ashvane Coaches?", "A child ticket on Ashvane Coaches costs 4.60 euros.")


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return shared_embedder()


def test_minimal_pairs_are_not_covered_and_rewordings_that_keep_the_words_are(embedder):
    question, answer = CHILD
    for near_miss in ("How much is an adult ticket on Ashvane Coaches?", "How much is a child ticket on Ashvane Buses?",
                      "How much is a child ticket on Ashvane Coaches in dollars?", "How much is a 2-day child ticket on Ashvane Coaches?"):
        assert not coverage(near_miss, question, answer, embedder).covered, near_miss
    for reworded in ("What is the price of a child ticket on Ashvane Coaches?", "What do children pay on Ashvane Coaches?"):
        assert coverage(reworded, question, answer, embedder).covered, reworded
    # Open against close, first against last: function words that decide the question.
    assert not coverage("When does Larkwell Dental close?", "When does Larkwell Dental open?", "At 8:10.", embedder).covered
    assert not coverage("When is the last bus?", "When is the first bus?", "At 5:40.", embedder).covered
    # What kind of answer a question asks for: a time is not a price.
    assert not coverage("When does breakfast begin at Hotel Vestamor?", "How much is breakfast at Hotel Vestamor?",
                        "Breakfast at Hotel Vestamor costs 16.40 euros per person.", embedder).covered
    assert not coverage("When did the Veltrix Aero 14 come out?", "What does the Veltrix Aero 14 cost?",
                        "The Veltrix Aero 14 costs 1,349 euros.", embedder).covered
    assert coverage("When does the first bus leave?", "What time does the first bus leave?", "At 5:40.", embedder).covered
    # A framing word of a kind the stored question does not ask for is a new question.
    assert not coverage("What is the price of the beginners' textbook at Solvane?",
                        "What is the beginners' textbook at Solvane?", "First Steps with Orla.", embedder).covered


def store_with(*pairs: tuple[str, str]) -> tuple[Store, list[int]]:
    store = Store(":memory:")
    ids = store.add_examples([{"input": q, "output": a, "source": "correction"} for q, a in pairs])
    return store, ids


def test_consult_answers_relates_or_knows_it_does_not_know(embedder):
    store, [child_id, _bike] = store_with(CHILD, ("Can I bring a bicycle on Ashvane Coaches?", "Yes, bicycles travel free."))
    found = consult(store, ask("What is the price of a child ticket on Ashvane Coaches?"), embedder)
    assert found.answer["id"] == child_id and not found.related

    near = consult(store, ask("How much is an adult ticket on Ashvane Coaches?"), embedder)
    assert near.answer is None and near.answering == [] and [e["id"] for e in near.related][:1] == [child_id]
    reply = honest_reply(near)
    assert reply.startswith("I don't have an answer to that yet.")
    assert "“A child ticket on Ashvane Coaches costs 4.60 euros.”" in reply and "correct this reply" in reply

    unknown = consult(store, ask("Is there wifi on Ashvane Coaches?"), embedder)
    assert unknown.answer is None and unknown.unknown and unknown.entity == ["Ashvane", "Coaches"]
    assert honest_reply(unknown).startswith(("I don't know that yet", "I don't have an answer to that yet"))

    elsewhere = consult(store, ask("Write a haiku about autumn."), embedder)
    assert elsewhere.answer is None and not elsewhere.related and not elsewhere.unknown


def test_two_stored_answers_that_disagree_are_shown_and_neither_is_stated(embedder):
    store, ids = store_with(CHILD, ("What is the price of a child ticket on Ashvane Coaches?", "A child ticket costs 5 euros now."))
    found = consult(store, ask(CHILD[0]), embedder)
    assert found.answer is None and {e["id"] for e in found.related} == set(ids)


def make_service(store, engine=None, **config):
    from bot.chat.service import ChatService
    from core.config import ServeConfig

    return ChatService(engine or FakeEngine(), store, ServeConfig(**config))


def test_the_service_states_an_answer_relates_a_near_miss_and_lets_the_model_answer_the_rest():
    store, [child_id] = store_with(CHILD)
    engine = FakeEngine()
    service = make_service(store, engine)

    direct = service.answer(ask("What is the price of a child ticket on Ashvane Coaches?"))
    assert "".join(direct) == CHILD[1] and direct.from_example == child_id and direct.related == []

    near = service.answer(ask("How much is an adult ticket on Ashvane Coaches?"))
    text = "".join(near)
    assert text.startswith(HONEST[0]) and CHILD[1] in text and near.from_example is None
    assert [e["id"] for e in near.related] == [child_id] and near.few_shot_ids == []
    assert store.get_message(near.message_id)["content"] == text  # stored as said: correctable like any answer
    assert engine.calls == []  # no model was asked to make something up

    # With a system prompt the model answers (neither reply knows that prompt), shown only what answers.
    system = [{"role": "system", "content": "Answer in French."}, *ask("How much is an adult ticket on Ashvane Coaches?")]
    list(service.answer(system))
    assert engine.calls[-1]["demonstrations"] == []

    # Not grounded: a question about the entity nothing is close to goes to the model.
    list(make_service(store, engine, grounded=False).answer(ask("Is there wifi on Ashvane Coaches?")))
    assert len(engine.calls) == 2
    grounded = service.answer(ask("Is there wifi on Ashvane Coaches?"))
    assert "".join(grounded).startswith(HONEST) and len(engine.calls) == 2


def test_correcting_the_honest_reply_answers_the_same_question_next_time():
    store, _ = store_with(CHILD)
    service = make_service(store)
    adult = "How much is an adult ticket on Ashvane Coaches?"
    near = service.answer(ask(adult))
    list(near)
    result = service.record_feedback(near.message_id, correction="An adult ticket on Ashvane Coaches costs 7.90 euros.",
                                     actor="ui")
    assert result["status"] == "approved"  # auto review (loopback default)
    again = service.answer(ask(adult))
    assert "".join(again) == "An adult ticket on Ashvane Coaches costs 7.90 euros."
    assert again.from_example == result["example_id"]
    assert "".join(service.answer(ask(CHILD[0]))) == CHILD[1]  # the child fare is still its own


def test_the_bundled_embedder_is_checked_and_another_folder_can_replace_it(tmp_path):
    folder = tmp_path / "minilm"
    shutil.copytree(bundled_embedder_path(), folder)
    other = SentenceEmbedder.load(folder)  # any local folder: no checksum, no hub
    assert other.similarity("How much is a child ticket?", "What do kids pay?") > 0.5
    assert other.similarity("a", "a") == pytest.approx(1.0, abs=1e-5)

    with pytest.raises(ModelLoadError, match="no config.json"):
        SentenceEmbedder.load(tmp_path / "missing")
    from bot.serving import embedder as module

    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(ModelLoadError, match="sha256"):
        module.verify_bundled(folder)


def test_many_chats_at_once_each_get_their_own_reply():
    store, [child_id] = store_with(CHILD)
    service = make_service(store)
    questions = [CHILD[0], "How much is an adult ticket on Ashvane Coaches?"] * 12

    def one(question: str) -> tuple[str, str]:
        return question, "".join(service.answer(ask(question)))

    with ThreadPoolExecutor(8) as pool:
        for question, text in pool.map(one, questions):
            assert text == CHILD[1] if question == CHILD[0] else text.startswith(HONEST[0]), (question, text)


@pytest.mark.slow
def test_over_http_corrections_answer_their_paraphrases_and_never_a_minimal_pair(live_server_factory):
    """The user's path with the real model and the defaults: the 10 facts about one entity of
    tests/fewshot_pairs.json asked and corrected through /v1/chat/completions and /api/feedback, then
    their paraphrases and minimal pairs asked (several chats at once). Targets: no minimal pair answered
    with a neighbour's fact; every paraphrase gets its own fact, stated or shown as related."""
    import httpx

    server = live_server_factory("--no-retrain-enabled")
    [entity] = [e for e in PAIRS if e["name"] == "Hotel Vestamor"]  # held out while tuning
    facts = entity["facts"]
    with httpx.Client(base_url=server.url, timeout=120) as client:

        def chat(question: str) -> dict:
            response = client.post("/v1/chat/completions", json={
                "model": "exemplar", "messages": [{"role": "user", "content": question}], "max_tokens": 40,
            })
            assert response.status_code == 200, response.text
            return response.json()

        for fact in facts:
            answer = chat(fact["question"])
            feedback = client.post("/api/feedback", json={
                "message_id": answer["exemplar"]["message_id"], "rating": "down", "correction": fact["answer"],
            })
            assert feedback.status_code == 201, feedback.text
        asks = [(fact, p, "paraphrase") for fact in facts for p in fact["paraphrases"]]
        asks += [(fact, fact["near_miss"], "near miss") for fact in facts]
        with ThreadPoolExecutor(6) as pool:
            replies = list(pool.map(lambda a: chat(a[1]), asks))

    stated, shown, wrong = 0, 0, []
    for (fact, question, kind), reply in zip(asks, replies, strict=True):
        text = reply["choices"][0]["message"]["content"]
        honest = text.startswith(HONEST)
        assert honest == bool(reply["exemplar"]["related"]) or text.startswith(HONEST[1])
        if kind == "paraphrase":
            stated += fact["fact"] in text and not honest
            shown += fact["fact"] in text and honest
        elif not honest and any(f["fact"] in text for f in facts):
            wrong.append((question, text))
    assert wrong == []
    assert stated + shown >= 18  # the target: 90% (19 or 20 of 20 measured)
    assert stated >= 6  # 7 of 20 measured: a rewording whose words differ is shown as related instead


def test_serve_refuses_an_embedder_folder_that_holds_no_model_before_loading_anything(tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(repo / "launch.py"), "serve", "--data-dir", str(tmp_path / "data"), "--embedder", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"--embedder {tmp_path} must be a folder with a sentence-embedding model" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr and not (tmp_path / "data" / "exemplar.db").exists()


def test_on_the_whole_minimal_pair_set_no_neighbour_is_stated_and_every_paraphrase_finds_its_fact(embedder):
    """The guard on tests/fewshot_pairs.json, retrieval only (the decisions the server takes before any
    model runs): all 60 corrections stored, every minimal pair and paraphrase asked."""
    from bot.chat.service import ChatService
    from core.config import ServeConfig

    store = Store(":memory:")
    facts = [dict(f, entity=e["name"]) for e in PAIRS for f in e["facts"]]
    ids = store.add_examples([{"input": f["question"], "output": f["answer"], "source": "correction"} for f in facts])
    service = ChatService(FakeEngine(), store, ServeConfig())
    stated_wrong, stated, related = [], 0, 0
    for fact_id, fact in zip(ids, facts, strict=True):
        near = service.consult(ask(fact["near_miss"]))
        if near.answer is not None:
            stated_wrong.append((fact["near_miss"], near.answer["output"]))
        for paraphrase in fact["paraphrases"]:
            found = service.consult(ask(paraphrase))
            stated += found.answer is not None and found.answer["id"] == fact_id
            related += found.answer is None and fact_id in {e["id"] for e in found.related}
            if found.answer is not None and found.answer["id"] != fact_id:
                stated_wrong.append((paraphrase, found.answer["output"]))
    assert stated_wrong == []
    assert stated + related >= 114  # of 120: 120 measured
    assert stated >= 33  # 35 measured; the rest is shown as related (docs/few-shot.md)
