"""Few-shot retrieval: the word score that finds the candidates, the examples a question brings into
the prompt, and (slow) that a correction changes the real model's very next answer. What the
candidates are then judged to be (answering, related) is tests/test_grounding.py."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from storage.search import MIN_SCORE
from storage import Store
from storage.search import content_words, idf, porter_stem, relevance, terms
from tests.fakes import FakeEngine

FACTS = json.loads((Path(__file__).parent / "fewshot_facts.json").read_text())


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def retrieve(store: Store, messages: list[dict[str, str]], *, k: int = 3, min_score: float = MIN_SCORE) -> list[dict]:
    """The word score's candidates for the latest question (what bot/serving/retrieval.py ranks by meaning)."""
    return store.search_examples(messages[-1]["content"], limit=k, min_score=min_score)


def fact_store(facts=None) -> tuple[Store, dict[int, dict]]:
    facts = FACTS["facts"] if facts is None else facts
    store = Store(":memory:")
    ids = store.add_examples([{"input": f["question"], "output": f["answer"], "source": "seed"} for f in facts])
    return store, dict(zip(ids, facts))


# -- words and scores ---------------------------------------------------------


def test_porter_stems_match_the_fts5_index():
    text = " ".join(f["question"] + " " + " ".join(f["paraphrases"]) for f in FACTS["facts"])
    words = sorted({w.lower() for w in text.replace("'", " ").split() if w.isalpha()})
    db = sqlite3.connect(":memory:")
    db.execute("create virtual table t using fts5(x, tokenize='porter')")
    db.execute("create virtual table v using fts5vocab(t, 'instance')")
    db.executemany("insert into t(rowid, x) values (?, ?)", list(enumerate(words, 1)))
    sqlite_stems = dict(db.execute("select doc, term from v"))
    assert [porter_stem(w) for w in words] == [sqlite_stems[i] for i in range(1, len(words) + 1)]
    assert [porter_stem(w) for w in ("shipping", "shipped", "cancellation", "moons")] == ["ship", "ship", "cancel", "moon"]
    # Accents are folded as the index folds them, so a question and its example agree on "Zürich".
    assert content_words("Is the Café in Zürich open?") == ["cafe", "zurich", "open"]


def test_stopwords_carry_no_weight():
    assert content_words("What is it that you do, and how?") == []
    assert content_words("What's the capital of Zorvania?") == ["capit", "zorvania"]
    # A capitalised word inside a sentence counts as a name; the first word of a sentence does not.
    assert terms("Kastor has moons. Is Kastor big?") == {"kastor": 3.0, "moon": 1.0, "big": 1.0}
    assert terms("Describe the flag of Istrenne.") == {"describ": 1.0, "flag": 1.0, "istrenn": 3.0}


def test_relevance_is_a_cosine_from_zero_to_one():
    weights = {"capit": 1.0, "zorvania": 2.0, "franc": 2.0}
    assert relevance({"capit": 1, "zorvania": 3}, {"capit": 1, "zorvania": 3}, weights) == pytest.approx(1.0)
    assert relevance({"franc": 3}, {"capit": 1, "zorvania": 3}, weights) == 0.0
    assert 0 < relevance({"capit": 1, "franc": 3}, {"capit": 1, "zorvania": 3}, weights) < 0.1
    # Rarity: a word many examples share weighs least, and with one example no word dominates.
    assert idf(300, 1000) < idf(1, 1000) < idf(0, 1000)
    assert idf(20, 20) < 0.5 < idf(1, 1) < idf(0, 1) < 1.5 * idf(1, 1)


# -- retrieval ----------------------------------------------------------------


def test_the_same_question_retrieves_its_example_with_one_or_many_examples():
    fact = FACTS["facts"][0]
    alone, _ = fact_store([fact])
    [found] = retrieve(alone, ask(fact["question"]))
    assert found["score"] == pytest.approx(1.0)
    store, by_id = fact_store()
    for f in FACTS["facts"]:
        best = retrieve(store, ask(f["question"]))[0]
        assert by_id[best["id"]] is f and best["score"] == pytest.approx(1.0)


def test_paraphrases_retrieve_their_example():
    # python -m benchmarks.measure_retrieval reports these figures in more detail (71/72 and 70/72 when written).
    store, by_id = fact_store()
    paraphrases = [(f, p) for f in FACTS["facts"] for p in f["paraphrases"]]
    first = sum(by_id.get(next(iter(retrieve(store, ask(p))), {}).get("id")) is f for f, p in paraphrases)
    assert first / len(paraphrases) >= 0.95
    # Each fact alone in its store: the score does not depend on how many examples there are.
    alone = 0
    for fact in FACTS["facts"]:
        single, _ = fact_store([fact])
        alone += sum(bool(retrieve(single, ask(p))) for p in fact["paraphrases"])
    assert alone / len(paraphrases) >= 0.9


def test_unrelated_questions_retrieve_nothing():
    store, _ = fact_store()
    for question in FACTS["unrelated"]:
        assert retrieve(store, ask(question)) == [], question
    single, _ = fact_store(FACTS["facts"][:1])
    assert all(retrieve(single, ask(q)) == [] for q in FACTS["unrelated"])


def test_a_name_outweighs_the_shared_generic_words():
    store, _ = fact_store()
    assert retrieve(store, ask("What is the capital of France?")) == []
    assert retrieve(store, ask("Who wrote the novel Moby Dick?")) == []
    assert retrieve(store, ask("what is the capital of zorvania")), "lower-case typing still finds it"


def test_only_approved_examples_are_used_and_the_index_follows_updates(store):
    pending = store.add_example("How do I reset my Fluxboard password?", "Settings, then Account.", source="correction", status="pending")
    assert retrieve(store, ask("Fluxboard password reset?")) == []
    store.update_example(pending, status="approved", actor="admin")
    assert [e["id"] for e in retrieve(store, ask("Fluxboard password reset?"))] == [pending]
    newer = store.add_example("How do I reset my Fluxboard password?", "Settings, Account, Reset password.", source="admin")
    assert [e["id"] for e in retrieve(store, ask("Fluxboard password reset?"))] == [newer]  # the superseded one is out
    store.update_example(newer, status="rejected", actor="admin")
    assert retrieve(store, ask("Fluxboard password reset?")) == []


def test_k_limits_and_ranks_by_relevance(store):
    ids = [
        store.add_example("How do I reset my Fluxboard password?", "A.", source="admin"),
        store.add_example("How do I reset my Fluxboard router?", "B.", source="admin"),
        store.add_example("Can the Fluxboard password be shared?", "C.", source="admin"),
        store.add_example("Fluxboard password rules?", "D.", source="admin"),
    ]
    found = retrieve(store, ask("How do I reset my Fluxboard password?"))
    assert len(found) == 3 and found[0]["id"] == ids[0]
    assert [e["score"] for e in found] == sorted((e["score"] for e in found), reverse=True)
    assert all(e["score"] >= MIN_SCORE for e in found)
    assert len(retrieve(store, ask("How do I reset my Fluxboard password?"), k=1)) == 1
    assert retrieve(store, ask("How do I reset my Fluxboard password?"), k=0) == []
    assert ids[0] not in [e["id"] for e in store.search_examples("Fluxboard password", exclude_ids=[ids[0]])]


def test_the_query_is_the_latest_user_question(store):
    store.add_example("What is the capital of Zorvania?", "Velmora.", source="admin")
    conversation = [
        {"role": "system", "content": "You know Zorvania's capital well."},
        {"role": "user", "content": "What is the capital of Zorvania?"},
        {"role": "assistant", "content": "Velmora."},
        {"role": "user", "content": "Thanks! Now, how do I bake bread?"},
    ]
    assert retrieve(store, conversation) == []
    assert retrieve(store, conversation[:2])


# -- the chat service ---------------------------------------------------------


def make_service(engine, store, **config):
    from bot.chat.service import ChatService
    from core.config import ServeConfig

    return ChatService(engine, store, ServeConfig(**config))


def test_answers_record_the_examples_that_guided_them(store):
    from tests.fakes import FakeEngine

    example_id = store.add_example("What is the capital of Zorvania?", "The capital of Zorvania is Velmora.", source="admin")
    engine = FakeEngine()
    service = make_service(engine, store, few_shot_direct=False)  # the model answers, shown the example
    answer = service.answer(ask("What's the capital of Zorvania?"))
    list(answer)
    assert [d["id"] for d in engine.calls[-1]["demonstrations"]] == [example_id]
    assert answer.few_shot_ids == [example_id]
    assert store.get_message(answer.message_id)["few_shot_ids"] == [example_id]

    off = service.answer(ask("What's the capital of Zorvania?"), few_shot=False)
    list(off)
    assert engine.calls[-1]["demonstrations"] == [] and off.few_shot_ids == []
    assert make_service(engine, store, few_shot=False).answer(ask("Zorvania capital?")).few_shot_ids == []


def test_a_correction_is_used_at_once_under_auto_review_and_only_after_approval_under_manual(store):
    from tests.fakes import FakeEngine

    engine = FakeEngine()
    engine.enqueue("I think it is Lyon.")
    manual = make_service(engine, store, review_policy="manual")
    first = manual.answer(ask("What is the capital of Zorvania?"))
    list(first)
    result = manual.record_feedback(first.message_id, correction="The capital of Zorvania is Velmora.", actor="ui")
    assert result["status"] == "pending"
    again = manual.answer(ask("What is the capital of Zorvania?"))
    assert again.few_shot_ids == []
    store.update_example(result["example_id"], status="approved", actor="admin")
    assert manual.answer(ask("What is the capital of Zorvania?")).few_shot_ids == [result["example_id"]]


def test_demonstrations_are_dropped_before_the_conversation(tokenizer, store):
    from core.prompts import fit_prompt

    long_answer = "Velmora. " * 150
    demos = [
        {"id": 1, "input": ask("What is the capital of Zorvania?"), "output": long_answer},
        {"id": 2, "input": ask("Which city is Zorvania's capital?"), "output": "Velmora."},
    ]
    conversation = ask("What is the capital of Zorvania?")
    fitted = fit_prompt(tokenizer, conversation, demos, 200)
    assert len(fitted.token_ids) <= 200
    assert fitted.dropped_demonstrations >= 1 and fitted.messages[-1] == conversation[-1]
    assert fitted.dropped_turns == 0


# -- the real model -----------------------------------------------------------


@pytest.mark.slow
def test_a_correction_changes_the_real_models_next_answer(real_engine, store):
    """The acceptance test: the bundled model gets a fictional fact wrong; once
    corrected, the same question with few-shot on answers with the corrected
    fact and names the example; with few-shot off it does not."""
    from bot.serving.base import GenerationParams

    service = make_service(real_engine, store, review_policy="auto", max_new_tokens=40)
    params = GenerationParams(max_new_tokens=40)
    question = "What is the capital of Zorvania?"

    wrong = service.answer(ask(question), params=params)
    list(wrong)
    assert "Velmora" not in wrong.text
    result = service.record_feedback(wrong.message_id, correction="The capital of Zorvania is Velmora.", actor="ui")
    assert result["status"] == "approved"

    guided = service.answer(ask(question), params=params)
    list(guided)
    assert "Velmora" in guided.text
    assert guided.few_shot_ids == [result["example_id"]]
    assert store.get_message(guided.message_id)["few_shot_ids"] == [result["example_id"]]

    # Served word for word (ServeConfig.few_shot_direct): the same question, reworded.
    assert guided.text == "The capital of Zorvania is Velmora." and guided.from_example == result["example_id"]
    paraphrased = service.answer(ask("What's the capital of Zorvania?"), params=params)
    list(paraphrased)
    assert paraphrased.from_example == result["example_id"] and "Velmora" in paraphrased.text

    unguided = service.answer(ask(question), params=params, few_shot=False)
    list(unguided)
    assert unguided.few_shot_ids == []
    assert "Velmora" not in unguided.text


