"""Few-shot retrieval: which approved examples a question brings into the prompt,
and (slow) that a correction changes the real model's very next answer."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from bot.serving.retrieval import MIN_SCORE, retrieve
from storage import Store
from storage.search import content_words, idf, porter_stem, relevance, terms
from tests.fakes import FakeEngine

FACTS = json.loads((Path(__file__).parent / "fewshot_facts.json").read_text())


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


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
    service = make_service(engine, store)
    answer = service.answer(ask("Which city is Zorvania's capital?"))
    list(answer)
    assert [d["id"] for d in engine.calls[-1]["demonstrations"]] == [example_id]
    assert answer.few_shot_ids == [example_id]
    assert store.get_message(answer.message_id)["few_shot_ids"] == [example_id]

    off = service.answer(ask("Which city is Zorvania's capital?"), few_shot=False)
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

    paraphrased = service.answer(ask("Which city is Zorvania's capital?"), params=params)
    list(paraphrased)
    assert paraphrased.few_shot_ids == [result["example_id"]]

    unguided = service.answer(ask(question), params=params, few_shot=False)
    list(unguided)
    assert unguided.few_shot_ids == []
    assert "Velmora" not in unguided.text


# -- re-ranking by meaning (bot/serving/retrieval.py), with a stand-in for the model's vectors ----------------

ENTITIES = json.loads((Path(__file__).parent / "fewshot_entities.json").read_text())["entities"]


class TableEmbedder:
    """Similarities from a table (question pair -> cosine); pairs not in it are 0. Records what it was asked."""

    def __init__(self, table: dict[tuple[str, str], float], contrast: dict[str, float] | None = None):
        self.table = {**table, **{(b, a): s for (a, b), s in table.items()}}
        self.contrast = contrast or {}
        self.asked: list[tuple[str, str]] = []

    def contrast_similarity(self, text: str) -> float:
        return self.contrast.get(text, 0.0)

    def similarity(self, a: str, b: str) -> float:
        self.asked.append((a, b))
        return 1.0 if a == b else self.table.get((a, b), 0.0)


def entity_store() -> tuple[Store, dict[str, int]]:
    """The 30 corrections about three entities beside the 24 other facts, as the benchmark benchmarks.bench_fewshot stores them."""
    store, _ = fact_store()
    facts = [f for e in ENTITIES for f in e["facts"]]
    ids = store.add_examples([{"input": f["question"], "output": f["answer"], "source": "correction"} for f in facts])
    return store, dict(zip((f["question"] for f in facts), ids))


MAYOR, POPULATION, RIVER = "Who is the mayor of Brindlemoor?", "What is the population of Brindlemoor?", "Which river flows through Brindlemoor?"


def test_the_word_score_alone_cannot_tell_corrections_about_one_entity_apart():
    # The failure the re-ranking exists for: names dominate, so every Brindlemoor correction scores alike.
    store, ids = entity_store()
    found = retrieve(store, ask("How many people live in Brindlemoor?"), k=10)
    assert ids[POPULATION] in [e["id"] for e in found] and ids[MAYOR] in [e["id"] for e in found]
    scores = {e["id"]: e["score"] for e in found}
    assert found[0]["id"] != ids[POPULATION] and scores[ids[MAYOR]] >= scores[ids[POPULATION]]


def test_the_most_similar_candidate_wins_when_it_stands_out():
    store, ids = entity_store()
    question = "How many people live in Brindlemoor?"
    embedder = TableEmbedder({(question, POPULATION): 0.62, (question, MAYOR): 0.40, (question, RIVER): 0.35})
    found = retrieve(store, ask(question), k=1, embedder=embedder, min_similarity=0.3, min_margin=0.05)
    assert [e["id"] for e in found] == [ids[POPULATION]] and found[0]["similarity"] == pytest.approx(0.62)
    # Every word-score candidate was compared, the ten corrections about Brindlemoor included.
    assert len({b for _, b in embedder.asked}) == 10
    # k above 1 adds only the candidates that reach min_similarity themselves, best first.
    found = retrieve(store, ask(question), k=3, embedder=embedder, min_similarity=0.38, min_margin=0.05)
    assert [e["id"] for e in found] == [ids[POPULATION], ids[MAYOR]]


def test_no_candidate_is_used_when_none_stands_out_or_none_is_similar_enough():
    store, ids = entity_store()
    near_miss = "Who is the police chief of Brindlemoor?"
    close_call = TableEmbedder({(near_miss, MAYOR): 0.55, (near_miss, POPULATION): 0.52})
    assert retrieve(store, ask(near_miss), embedder=close_call, min_similarity=0.3, min_margin=0.05) == []
    faint = TableEmbedder({(near_miss, MAYOR): 0.25})
    assert retrieve(store, ask(near_miss), embedder=faint, min_similarity=0.3, min_margin=0.0) == []
    # The same table with a looser margin lets the best through: the margin is what refused it.
    assert [e["id"] for e in retrieve(store, ask(near_miss), k=1, embedder=close_call, min_margin=0.02)] == [ids[MAYOR]]


def test_the_word_score_still_decides_what_is_a_candidate():
    store, _ = entity_store()
    embedder = TableEmbedder({("How do I bake sourdough bread?", MAYOR): 0.9})
    assert retrieve(store, ask("How do I bake sourdough bread?"), embedder=embedder) == []
    assert embedder.asked == []  # nothing shared a meaningful word, so the model was not asked
    assert retrieve(store, ask(MAYOR), k=0, embedder=embedder) == []


def test_a_reference_demonstration_is_quoted_in_the_system_turn():
    from core.prompts import prompt_messages

    demo = {"id": 1, "input": ask(POPULATION), "output": "Brindlemoor has a population of 12,400.", "form": "reference"}
    question = ask("How many people live in Brindlemoor?")
    [system, user] = prompt_messages(question, [demo])
    assert system["role"] == "system" and user == question[0]
    assert system["content"] == (
        "Reference answer for a similar question ('What is the population of Brindlemoor?'): "
        "Brindlemoor has a population of 12,400."
    )
    with_prompt = prompt_messages([{"role": "system", "content": "Be brief."}, *question], [demo])
    assert with_prompt[0]["content"].startswith("Be brief.\n\nReference answer") and len(with_prompt) == 2
    # Without a form, a demonstration is an earlier pair of turns, as before.
    turns = prompt_messages(question, [{k: v for k, v in demo.items() if k != "form"}])
    assert [m["role"] for m in turns] == ["user", "assistant", "user"]


def test_names_are_masked_so_vectors_compare_what_is_asked():
    from bot.serving.retrieval import mask_names

    assert mask_names("How many people live in Brindlemoor?") == "How many people live in it?"
    assert mask_names("Who is the mayor of Brindlemoor?") == "Who is the mayor of it?"
    assert mask_names("What is Brindlemoor's twin town?") == "What is its twin town?"
    # A name of several words (and a model number) becomes one mask; the first word of a sentence is no name.
    assert mask_names("How much does the Veltrix Aero 14 weigh?") == "How much does it weigh?"
    assert mask_names("Is there wifi on Harbrook Ferries?") == "Is there wifi on it?"
    assert mask_names("What is the capital of France?") == "What is the capital of it?"
    assert mask_names("how do I bake bread?") == "how do I bake bread?"


POPULATION_PARAPHRASE = "How many people live in Brindlemoor?"
NEAR_MISS = "What is the weather like in Brindlemoor?"


def test_an_approved_answer_is_served_only_when_retrieval_is_sure():
    from bot.serving.retrieval import approved_answer_for

    store, ids = entity_store()
    sure = TableEmbedder({(POPULATION_PARAPHRASE, POPULATION): 0.70, (POPULATION_PARAPHRASE, MAYOR): 0.40},
                         contrast={POPULATION_PARAPHRASE: 0.30})
    found = approved_answer_for(store, ask(POPULATION_PARAPHRASE), sure, min_similarity=0.5, min_margin=0.25)
    assert found["id"] == ids[POPULATION] and found["output"] == "Brindlemoor has a population of 12,400."
    assert found["margin"] == pytest.approx(0.30)  # against the runner-up (0.40), the higher of the two
    # The margin is also taken against the generic questions about any entity: a question close to
    # one of them ("how big is it?") is not served, however few corrections compete.
    generic = TableEmbedder({(POPULATION_PARAPHRASE, POPULATION): 0.70}, contrast={POPULATION_PARAPHRASE: 0.50})
    assert approved_answer_for(store, ask(POPULATION_PARAPHRASE), generic, min_similarity=0.5, min_margin=0.25) is None
    assert approved_answer_for(store, ask(POPULATION_PARAPHRASE), generic, min_similarity=0.5, min_margin=0.15)
    # A near miss close to two corrections, or to none, is not served.
    near_miss = "Who is the police chief of Brindlemoor?"
    close_call = TableEmbedder({(near_miss, MAYOR): 0.66, (near_miss, POPULATION): 0.45})
    assert approved_answer_for(store, ask(near_miss), close_call, min_similarity=0.5, min_margin=0.25) is None
    faint = TableEmbedder({(near_miss, MAYOR): 0.45})
    assert approved_answer_for(store, ask(near_miss), faint, min_similarity=0.5, min_margin=0.25) is None
    # Nothing shares a word with the store: no candidate, and the model's vectors are not asked for.
    unrelated = TableEmbedder({})
    assert approved_answer_for(store, ask("How do I bake sourdough bread?"), unrelated) is None
    assert unrelated.asked == []
    # A long message (a pasted passage, then the question) is not embedded at all: no rewording is that long.
    passage = "Brindlemoor is a market town on the river with a station, two schools and a library. " * 3
    long = TableEmbedder({(passage + POPULATION_PARAPHRASE, POPULATION): 0.9})
    assert approved_answer_for(store, ask(passage + POPULATION_PARAPHRASE), long, min_similarity=0.5,
                               min_margin=0.25) is None
    assert long.asked == []


def test_an_approved_answer_is_served_only_to_a_question_about_what_it_names():
    from bot.serving.retrieval import approved_answer_for, same_entity

    store, ids = entity_store()
    weight = "How much does the Veltrix Aero 14 weigh?"
    # The masked vectors cannot tell these apart (both are "how heavy is it?"); the names and numbers can.
    for question, served in [("How heavy is the Veltrix Aero 14?", True), ("How heavy is the Veltrix Aero 15?", False),
                             ("How heavy is the Zephyr Aero 14?", False), ("how heavy is it?", False)]:
        embedder = TableEmbedder({(question, weight): 0.95})
        found = approved_answer_for(store, ask(question), embedder, min_similarity=0.5, min_margin=0.25, min_score=0.0)
        assert (found is not None and found["id"] == ids[weight]) is served, question
    assert same_entity("What is the population of Brindlemoor?", POPULATION)
    assert not same_entity("What is the population of Harbrook?", POPULATION)
    assert same_entity("How old is the Harbrook Ferries company?", "When was harbrook ferries founded?")


def test_an_example_of_several_turns_is_never_served_word_for_word():
    from bot.serving.retrieval import approved_answer_for

    store = Store(":memory:")
    conversation = [{"role": "user", "content": "I live in Brindlemoor."}, {"role": "assistant", "content": "Nice!"},
                    {"role": "user", "content": POPULATION}]
    store.add_examples([{"input": conversation, "output": "12,400 people.", "source": "correction"}])
    embedder = TableEmbedder({(POPULATION_PARAPHRASE, POPULATION): 0.9})
    assert approved_answer_for(store, ask(POPULATION_PARAPHRASE), embedder, min_similarity=0.5, min_margin=0.25) is None


def direct_service(store, embedder, **config):
    from tests.fakes import FakeEngine

    engine = FakeEngine()
    service = make_service(engine, store, few_shot_direct=True, **config)
    service.embedder = embedder  # the fake engine has no weights to take vectors from
    return engine, service


def test_the_service_answers_a_reworded_question_with_the_approved_answer_and_says_so(store):
    from bot.serving.base import GenerationParams

    population = store.add_example(POPULATION, "Brindlemoor has a population of 12,400.", source="correction")
    mayor = store.add_example(MAYOR, "The mayor of Brindlemoor is Odessa Quint.", source="correction")
    embedder = TableEmbedder({(POPULATION_PARAPHRASE, POPULATION): 0.70, (POPULATION_PARAPHRASE, MAYOR): 0.40})
    engine, service = direct_service(store, embedder)
    answer = service.answer(ask(POPULATION_PARAPHRASE))
    assert "".join(answer) == "Brindlemoor has a population of 12,400."
    assert engine.calls == []  # no decoding at all
    assert answer.few_shot_ids == [population] and answer.from_example == population
    stored = store.get_message(answer.message_id)
    assert stored["content"] == "Brindlemoor has a population of 12,400." and stored["few_shot_ids"] == [population]

    # Not sure (the near miss is as close to the mayor as to the population): the model answers, with
    # the usual demonstrations, and the answer is its own.
    near_miss = "Who is the police chief of Brindlemoor?"
    embedder.table.update({(near_miss, MAYOR): 0.60, (near_miss, POPULATION): 0.55})
    guided = service.answer(ask(near_miss))
    list(guided)
    assert len(engine.calls) == 1 and guided.from_example is None
    assert set(guided.few_shot_ids) == {population, mayor}
    # Served only where the approved answer fits the request: no system prompt, within max_tokens,
    # no stop string in it; and never with few-shot off.
    for messages, params in [
        ([{"role": "system", "content": "Answer in French."}, *ask(POPULATION_PARAPHRASE)], None),
        (ask(POPULATION_PARAPHRASE), GenerationParams(max_new_tokens=3)),
        (ask(POPULATION_PARAPHRASE), GenerationParams(stop=["12,400"])),
    ]:
        assert service.answer(messages, params=params).from_example is None
    assert service.answer(ask(POPULATION_PARAPHRASE), few_shot=False).few_shot_ids == []
    assert make_service(engine, store, few_shot_direct=False).answer(ask(POPULATION_PARAPHRASE)).from_example is None
    assert len(engine.calls) == 6


@pytest.mark.slow
def test_over_http_a_correction_answers_its_paraphrase_and_not_a_near_miss(live_server_factory):
    """A user's path with the real model and the default settings: three questions about one town,
    each answer corrected through /api/feedback; then a paraphrase of one is answered with that
    approved answer, streamed or not, and says so;
    a question about something no correction covers is answered by the model, with none of the
    corrected facts."""
    import httpx

    server = live_server_factory("--no-retrain-enabled")
    [brindlemoor] = [e for e in ENTITIES if e["name"] == "Brindlemoor"]
    facts = {f["question"]: f for f in brindlemoor["facts"]}
    with httpx.Client(base_url=server.url, timeout=120) as client:

        def chat(question: str, **extra) -> httpx.Response:
            response = client.post("/v1/chat/completions", json={
                "model": "exemplar", "messages": [{"role": "user", "content": question}], "max_tokens": 32,
                "temperature": 0, **extra,
            })
            assert response.status_code == 200, response.text
            return response

        example_ids = {}
        for question in (MAYOR, POPULATION, RIVER):
            answer = chat(question).json()
            assert answer["exemplar"]["from_example"] is None
            feedback = client.post("/api/feedback", json={
                "message_id": answer["id"], "rating": "down", "correction": facts[question]["answer"],
            })
            assert feedback.status_code == 201, feedback.text
            example_ids[question] = feedback.json()["example_id"]

        river = facts[RIVER]
        paraphrase = chat(river["paraphrase"]).json()
        assert paraphrase["exemplar"]["from_example"] == example_ids[RIVER]
        assert paraphrase["exemplar"]["few_shot_ids"] == [example_ids[RIVER]]
        assert paraphrase["choices"][0]["message"]["content"] == river["answer"]
        streamed = chat(river["paraphrase"], stream=True).text
        events = [json.loads(line[6:]) for line in streamed.splitlines() if line.startswith("data: {")]
        assert "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"]) == river["answer"]
        assert events[-1]["exemplar"]["from_example"] == example_ids[RIVER]
        assert streamed.rstrip().endswith("data: [DONE]")

        # Many users at once (the vectors are shared and computed under a lock): each gets the approved
        # answer, in a turn of its own.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda _: chat(river["paraphrase"]).json(), range(24)))
        assert {a["exemplar"]["from_example"] for a in answers} == {example_ids[RIVER]}
        assert {a["choices"][0]["message"]["content"] for a in answers} == {river["answer"]}
        assert len({a["id"] for a in answers}) == 24 and len({a["exemplar"]["conversation_id"] for a in answers}) == 24

        # Retrieval is not sure enough of this one ("how many people" is as close to "how many are
        # there?" as to the population), so the model answers, guided by the demonstrations.
        guided = chat(POPULATION_PARAPHRASE).json()
        assert guided["exemplar"]["from_example"] is None
        assert example_ids[POPULATION] in guided["exemplar"]["few_shot_ids"]

        near_miss = chat(NEAR_MISS).json()
        assert near_miss["exemplar"]["from_example"] is None
        text = near_miss["choices"][0]["message"]["content"]
        assert not any(facts[q]["fact"] in text for q in (MAYOR, POPULATION, RIVER)), text


# -- question vectors: cost ------------------------------------------------------


def test_the_embedders_own_copy_stops_at_its_layer_and_gives_the_same_vectors(tiny_model, tokenizer):
    """for_engine's embedder drops the layers above the one it reads (and the output layer): the same
    vectors, for less work."""
    import copy

    import torch

    from bot.serving.retrieval import QuestionEmbedder

    full = QuestionEmbedder(tiny_model, tokenizer, layer_fraction=0.5)
    short = QuestionEmbedder(copy.deepcopy(tiny_model), tokenizer, layer_fraction=0.5)
    assert short.truncate_to_layer()
    assert len(short.model.layers) == short.layer < tiny_model.config.num_hidden_layers
    assert len(tiny_model.model.layers) == tiny_model.config.num_hidden_layers  # the given model is untouched
    for text in ("How many boats does Harbrook Ferries run?", "Who is the mayor of Brindlemoor?"):
        with torch.no_grad():
            assert torch.equal(short._raw(text), full._raw(text))
    # Reading the last layer, nothing is dropped: the model gives that state after its final norm.
    last = QuestionEmbedder(copy.deepcopy(tiny_model), tokenizer, layer_fraction=1.0)
    assert not last.truncate_to_layer()
    with torch.no_grad():
        assert torch.equal(last._raw("Who is the mayor of Brindlemoor?"),
                           QuestionEmbedder(tiny_model, tokenizer, layer_fraction=1.0)._raw("Who is the mayor of Brindlemoor?"))


def test_warming_caches_the_shared_and_the_example_vectors(tiny_model, tokenizer, store):
    from bot.chat.service import ChatService
    from bot.serving.retrieval import QuestionEmbedder
    from core.config import ServeConfig

    class LocalEngine(FakeEngine):  # what for_engine needs of an engine: a tokenizer and a local model's base copy
        def __init__(self):
            super().__init__()
            self.tokenizer = tokenizer

        def local_model(self):
            return self

        def base_copy(self):
            import copy

            return copy.deepcopy(tiny_model)

    store.add_example("Who is the mayor of Brindlemoor?", "Mara Vell.", source="admin", status="approved")
    store.add_example("Where is the office?", "Upstairs.", source="admin", status="pending")
    service = ChatService(LocalEngine(), store, ServeConfig())
    assert isinstance(service.embedder, QuestionEmbedder) and service.embedder._centre is None
    assert service.warm_few_shot() == 1  # the approved example only
    assert service.embedder._centre is not None and "Who is the mayor of Brindlemoor?" in service.embedder._cache
    assert service.warm_few_shot() == 0  # already there


def test_vectors_asked_from_many_threads_during_the_warm_up_are_each_their_own(tiny_model, tokenizer):
    """The truncated copy hands its state over through a hook: chats asking at once, while the server
    warms up, must each get their own question's vector."""
    import copy
    import threading

    import torch

    from bot.serving.retrieval import QuestionEmbedder

    def embedder():
        made = QuestionEmbedder(copy.deepcopy(tiny_model), tokenizer, layer_fraction=0.5)
        assert made.truncate_to_layer()
        return made

    questions = [f"How many ferries leave pier {i} of Harbrook on a Sunday?" for i in range(16)]
    shared = embedder()
    results: dict[str, torch.Tensor] = {}

    def ask(question):
        results[question] = shared.vector(question)

    warming = threading.Thread(target=shared.warm, args=([f"Who runs depot {i}?" for i in range(16)],))
    askers = [threading.Thread(target=ask, args=(q,)) for q in questions]
    for thread in [warming, *askers]:
        thread.start()
    for thread in [warming, *askers]:
        thread.join(60)
    alone = embedder()
    assert all(torch.equal(results[q], alone.vector(q)) for q in questions)
