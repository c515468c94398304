"""The Chat tab's handlers, driven with a fake engine: what they store and show."""

import json
import re

import gradio as gr
import pytest

from bot.chat.service import ChatService
from bot.ui.chat_tab import ANSWERING, BUSY, ChatHandlers, normalise_history
from core.config import ServeConfig
from tests.fakes import FakeEngine

SETTINGS = ("", True, 0.0, 64)  # system prompt, few-shot, temperature, max tokens


@pytest.fixture
def engine():
    return FakeEngine()


def make(store, engine, **config):
    service = ChatService(engine, store, ServeConfig(**config))
    return service, ChatHandlers(service)


def shown_of(chatbot):
    """The history a chatbot output shows (the last yield is an update that also sets the thumbs)."""
    return chatbot["value"] if isinstance(chatbot, dict) else chatbot


def ask(handlers, question, history=None, ids=None, conv=None, settings=SETTINGS, rater=None):
    outputs = list(handlers.submit(question, history or [], ids or [], conv, *settings, rater))
    _, shown, conv, ids, info, *_buttons = outputs[-1]
    return shown_of(shown), ids, conv, info, outputs


def test_submit_streams_the_answer_and_stores_both_turns(store, engine):
    service, handlers = make(store, engine)
    engine.enqueue("The capital of France is Lyon.")
    shown, ids, conv, info, outputs = ask(handlers, "What is the capital of France?")
    assert outputs[0][0] == ""  # the input box is cleared first
    assert outputs[1][4] == ANSWERING and outputs[1][3][1] == ids[1]  # the id goes out before the first piece
    partials = [shown_of(o[1])[-1]["content"] for o in outputs[2:]]
    assert partials[0] != partials[-1] and partials[-1] == "The capital of France is Lyon."
    assert ids[0] is None and isinstance(ids[1], int)
    stored = store.get_message(ids[1])
    assert stored["content"] == "The capital of France is Lyon." and stored["model_version"] == "base"
    assert stored["context"] == [{"role": "user", "content": "What is the capital of France?"}]
    assert f"#{ids[1]}" in info and "base" in info


def test_multi_turn_keeps_one_conversation_and_system_prompt(store, engine):
    _, handlers = make(store, engine)
    settings = ("Answer in French.", True, 0.0, 64)
    shown, ids, conv, _, _ = ask(handlers, "Hi", settings=settings)
    shown, ids, conv2, _, _ = ask(handlers, "And again", shown, ids, conv, settings=settings)
    assert conv2 == conv and len(ids) == 4
    assert engine.calls[-1]["messages"][0] == {"role": "system", "content": "Answer in French."}
    assert [m["role"] for m in engine.calls[-1]["messages"]] == ["system", "user", "assistant", "user"]
    assert store.get_message(ids[3])["context"][-1]["content"] == "And again"


def chat_of(ids):
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": "x"} for i in range(len(ids))]


def like(handlers, ids, index, liked, rater=None, history=None):
    status, _thumbs = handlers.like(
        gr.LikeData(target=None, data={"index": index, "value": "x", "liked": liked}), history or chat_of(ids), ids, rater
    )
    return status


def details(handlers, ids, rater=None, **fields):
    """The rating panel's Save, as the page's script sends it."""
    status, thumbs, marks = handlers.rate_details(json.dumps(fields), chat_of(ids), ids, rater)
    return status, thumbs["feedback_value"], marks


def test_thumbs_up_stores_an_upvote_example_and_unrate_withdraws_it(store, engine):
    _, handlers = make(store, engine)
    engine.enqueue("Paris.")
    _, ids, _, _, _ = ask(handlers, "Capital of France?")
    status = like(handlers, ids, 1, True)
    (example,) = store.list_examples(source="upvote")
    assert example["output"] == "Paris." and example["status"] == "approved" and "example" in status
    like(handlers, ids, 1, "")  # the thumb clicked again
    assert store.get_example(example["id"])["status"] == "rejected"
    ratings = [f["rating"] for f in store.message_feedback(ids[1])]
    assert ratings == ["up", None]


def test_thumbs_down_then_reason_tags_score_and_comment_is_feedback_only(store, engine):
    _, handlers = make(store, engine)
    _, ids, _, _, _ = ask(handlers, "Capital of France?", rater="a" * 32)
    assert "Say why in the panel" in like(handlers, ids, 1, False, rater="a" * 32)
    status, thumbs, marks = details(
        handlers, ids, "a" * 32, answer=ids[1], rating="down", reason="Wrong fact", comment="It is Paris",
        tags="geography,  capitals , Geography", score=2,
    )
    assert store.count_examples() == 0 and thumbs == ["Dislike"]
    assert status.startswith(f"Disliked message #{ids[1]} (wrong fact · #geography, #capitals · 2/10 · “It is Paris”)")
    last = store.message_feedback(ids[1])[-1]
    assert (last["rating"], last["reason"], last["comment"], last["tags"], last["score"]) == (
        "down", "wrong fact", "It is Paris", ["geography", "capitals"], 2)
    # The badge says it all, for this person only, and carries it for the panel to fill in again.
    assert "👎 disliked · wrong fact · #geography, #capitals · 2/10 · “It is Paris”" in marks
    assert "Edit rating details" in marks and "&quot;score&quot;: 2" in marks
    assert "answer-rating" not in handlers.marks(chat_of(ids), ids, "b" * 32)
    # A second save refines the same thumb: what it leaves out stays.
    details(handlers, ids, "a" * 32, answer=ids[1], rating="down", score=5)
    last = store.message_feedback(ids[1])[-1]
    assert (last["reason"], last["comment"], last["tags"], last["score"]) == (
        "wrong fact", "It is Paris", ["geography", "capitals"], 5)


@pytest.mark.parametrize("fields, says", [
    ({"rating": "down", "reason": "Because"}, "A reason is one of"),
    ({"rating": "up", "reason": "Wrong fact"}, "A reason is one of"),
    ({"rating": "sideways"}, "Choose 👍 or 👎"),
    ({"rating": "down", "score": 11}, "score must be a whole number from 1 to 10"),
    ({"rating": "down", "score": "3"}, "score must be a whole number"),
    ({"rating": "down", "tags": ["x" * 51]}, "each tag must be a text of at most 50"),
    ({"rating": "down", "tags": [str(i) for i in range(11)]}, "at most 10"),
    ({"rating": "down", "comment": "x" * 2001}, "at most 2000"),
    ({"rating": "down", "answer": 999}, "only answers given in this chat"),
])
def test_rating_details_are_checked_and_a_refusal_stores_nothing(store, engine, fields, says):
    _, handlers = make(store, engine)
    _, ids, _, _, _ = ask(handlers, "Capital of France?")
    with pytest.raises(gr.Error, match=re.escape(says)):
        details(handlers, ids, **({"answer": ids[1]} | fields))
    with pytest.raises(gr.Error, match="did not arrive whole"):
        handlers.rate_details("{not json", chat_of(ids), ids, None)
    assert store.message_feedback(ids[1]) == []


def test_editing_an_answer_stores_a_correction_with_the_rejected_original(store, engine):
    _, handlers = make(store, engine)
    engine.enqueue("Lyon.")
    shown, ids, conv, _, _ = ask(handlers, "Capital of France?")
    edited = [shown[0], {"role": "assistant", "content": "Paris is the capital of France."}]
    data = gr.EditData(target=None, data={"index": 1, "value": "Paris is the capital of France.", "previous_value": "Lyon."})
    *_, last = handlers.edit(data, edited, ids, conv, *SETTINGS)
    (example,) = store.list_examples(source="correction")
    assert example["output"] == "Paris is the capital of France." and example["rejected"] == "Lyon."
    assert example["input"] == [{"role": "user", "content": "Capital of France?"}]
    assert example["message_id"] == ids[1] and "stored as example" in last[4]


def test_editing_a_question_answers_it_again(store, engine):
    _, handlers = make(store, engine)
    shown, ids, conv, _, _ = ask(handlers, "Capital of Spain?")
    edited = [{"role": "user", "content": "Capital of Italy?"}, shown[1]]
    data = gr.EditData(target=None, data={"index": 0, "value": "Capital of Italy?", "previous_value": "Capital of Spain?"})
    *_, last = handlers.edit(data, edited, ids, conv, *SETTINGS)
    assert shown_of(last[0])[-1]["content"] == "You said: Capital of Italy?"
    assert store.count_examples() == 0


def test_correct_this_answer_box_replaces_the_last_answer(store, engine):
    _, handlers = make(store, engine, host="0.0.0.0", admin_password="secret-password")
    engine.enqueue("Lyon.")
    shown, ids, _, _, _ = ask(handlers, "Capital of France?")
    history, box, status = handlers.correct_last("Paris.", shown, ids)
    assert history[-1]["content"] == "Paris." and box == ""
    (example,) = store.list_examples(source="correction")
    assert example["status"] == "pending"  # a non-loopback bind waits for review
    with pytest.raises(gr.Error):
        handlers.correct_last("   ", shown, ids)


def test_retry_and_undo_keep_ids_aligned(store, engine):
    _, handlers = make(store, engine)
    engine.enqueue("First.", "Second.")
    shown, ids, conv, _, _ = ask(handlers, "Hello?")
    retry = gr.RetryData(target=None, data={"index": 0, "value": "Hello?"})
    *_, (shown2, conv2, ids2, info, *_buttons) = handlers.retry(retry, shown, ids, conv, *SETTINGS, None)
    shown2 = shown_of(shown2)
    assert shown2[-1]["content"] == "Second." and ids2[1] != ids[1] and len(ids2) == 2
    assert "Temperature is 0" in info  # a greedy retry says why it cannot vary
    undo = gr.UndoData(target=None, data={"index": 0, "value": "Hello?"})
    history, ids3, text, info = handlers.undo(undo, shown2, ids2)
    assert history == [] and ids3 == [] and text == "Hello?" and info == ""


def test_errors_become_gradio_errors(store, engine):
    _, handlers = make(store, engine)
    with pytest.raises(gr.Error):
        list(handlers.submit("   ", [], [], None, *SETTINGS))
    with pytest.raises(gr.Error, match="cannot be rated"):
        like(handlers, [None], 0, True)


@pytest.mark.parametrize("temperature, max_tokens", [(float("nan"), 64), (float("inf"), 64), (0.0, float("inf")),
                                                     (0.0, float("nan")), (0.0, 0)])
def test_settings_out_of_range_become_gradio_errors_and_store_nothing(store, engine, temperature, max_tokens):
    _, handlers = make(store, engine)
    with pytest.raises(gr.Error):
        list(handlers.submit("What is the capital of France?", [], [], None, "", True, temperature, max_tokens))
    assert store.db["messages"].count == 0


BAD_SETTINGS = [float("inf"), float("-inf"), float("nan"), "0.5", "hot", 10**30, 1e308, True, False, None, -1, [1]]


@pytest.mark.parametrize("value", BAD_SETTINGS, ids=repr)
@pytest.mark.parametrize("setting", ["temperature", "max_tokens"])
def test_any_bad_setting_gradio_can_send_is_a_message_naming_it(store, engine, setting, value):
    """Gradio's API passes slider values through unchecked: each bad one is refused with the
    setting's name and range (no traceback in the log), before anything is stored or generated."""
    _, handlers = make(store, engine)
    temperature, max_tokens = (value, 64) if setting == "temperature" else (0.0, value)
    with pytest.raises(gr.Error) as refused:
        list(handlers.submit("What is the capital of France?", [], [], None, "", True, temperature, max_tokens))
    words = "Temperature must be a number from 0 to 2" if setting == "temperature" else (
        "Max new tokens must be a whole number from 1 to 1024")
    assert words in refused.value.message
    assert refused.value.print_exception is False
    assert store.db["messages"].count == 0 and engine.calls == []


def test_settings_in_range_are_used_as_given(store, engine):
    _, handlers = make(store, engine)
    list(handlers.submit("What is the capital of France?", [], [], None, "", True, 2, 1024.0))
    params = engine.calls[-1]["params"]
    assert (params.temperature, params.max_new_tokens) == (2.0, 1024)


def test_history_normalisation_accepts_gradio_parts():
    history = [{"role": "user", "content": [{"type": "text", "text": "Hi"}], "metadata": None},
               {"role": "assistant", "content": "Hello", "options": None}]
    assert normalise_history(history) == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


class Request:
    """What the handlers read of gr.Request: the browser session."""

    def __init__(self, session_hash):
        self.session_hash = session_hash


def test_ratings_stay_on_every_answer_of_the_chat(store, engine):
    _, handlers = make(store, engine)
    shown, ids, conv, _, _ = ask(handlers, "One?", rater="a" * 32)
    like(handlers, ids, 1, True, rater="a" * 32)
    shown, ids, conv, _, _ = ask(handlers, "Two?", shown, ids, conv, rater="a" * 32)
    like(handlers, ids, 3, False, rater="a" * 32)
    thumbs, send, stop, more = handlers.idle(shown, ids, "a" * 32)
    assert thumbs["feedback_value"] == ["Like", "Dislike"]
    assert send["visible"] is True and stop["visible"] is False and more["visible"] is False
    # Another person sees their own ratings, not this one's.
    assert handlers.idle(shown, ids, "b" * 32)[0]["feedback_value"] == [None, None]
    like(handlers, ids, 1, "", rater="a" * 32)  # the thumb clicked again: un-rated
    assert handlers.idle(shown, ids, "a" * 32)[0]["feedback_value"] == [None, "Dislike"]


def test_stop_ends_the_answer_and_keeps_the_text_so_far(store, engine):
    _, handlers = make(store, engine)
    engine.enqueue("one two three four five six seven eight")
    request = Request("session-1")
    outputs = []
    for output in handlers.submit("Count?", [], [], None, *SETTINGS, None, request):
        outputs.append(output)
        if len(outputs) == 4:
            assert handlers.stop(Request("someone-else")) is not None  # another tab's Stop: nothing to stop
            assert "Stopping" in handlers.stop(request)
    _, shown, _, ids, info, *_ = outputs[-1]
    assert shown[-1]["content"] == "one two" and "Stopped" in info
    assert store.get_message(ids[1])["content"] == "one two"
    assert outputs[1][5:7] == BUSY[:2]  # Send became Stop while answering


def test_an_answer_cut_at_the_token_limit_offers_continue(store, engine):
    _, handlers = make(store, engine)
    engine.enqueue("A long answer")
    request = Request("s")
    original = engine.stream

    def cut(*args, **kwargs):
        generation = original(*args, **kwargs)
        generation.finish_reason = "length"
        return generation

    engine.stream = cut
    *_, last = handlers.submit("Tell me everything", [], [], None, *SETTINGS, None, request)
    assert "Cut at the 64-token limit" in last[4]
    assert handlers.idle(last[1], last[3], None, request)[3]["visible"] is True
    engine.stream = original
    *_, after = handlers.continue_answer(last[1], last[3], last[2], *SETTINGS, None, request)
    assert engine.calls[-1]["messages"][-1]["content"] == "Please continue where you stopped."


def test_every_answer_has_a_badge_saying_what_made_it_from_the_store(store, engine):
    _, handlers = make(store, engine)
    child = ("How much is a child ticket on Ashvane Coaches?", "A child ticket on Ashvane Coaches costs 4.60 euros.")
    example_id = store.add_example(child[0], child[1], source="admin")
    engine.enqueue("Lyon <i>&</i> co.")
    shown, ids, conv, _, _ = ask(handlers, "Capital of France?")
    shown, ids, conv, _, _ = ask(handlers, child[0], shown, ids, conv)
    shown, ids, conv, _, _ = ask(handlers, "How much is an adult ticket on Ashvane Coaches?", shown, ids, conv)
    model, stated, honest = ids[1], ids[3], ids[5]
    marks = handlers.marks(shown, ids)
    assert marks.count('class="answer-mark"') == 3
    assert f"message #{model} · by model base</span>" in marks
    assert f"message #{stated} · stated from example #{example_id}, word for word" in marks
    assert f"message #{honest} · no example answers this yet · related example #{example_id}" in marks
    assert "corrected" not in marks
    # The answer starting to stream has its badge before its first piece (its id comes first).
    assert handlers.marks(shown[:-1], ids).count('class="answer-mark"') == 3

    # Corrected: marked, with the original (escaped) a click away; the same from a reopened chat's ids.
    edited = [*shown[:1], {"role": "assistant", "content": "Paris <b>is</b> the capital."}, *shown[2:]]
    data = gr.EditData(target=None, data={"index": 1, "value": "Paris <b>is</b> the capital.", "previous_value": "Lyon <i>&</i> co."})
    list(handlers.edit(data, edited, ids, conv, *SETTINGS))
    marks = ChatHandlers(handlers.service).marks(edited, list(ids))
    assert f"message #{model} · by model base</span><span class=\"answer-corrected\">" in marks
    assert "<summary>Original answer</summary><div class=\"answer-original-text\">Lyon &lt;i&gt;&amp;&lt;/i&gt; co.</div>" in marks
    assert marks.count('class="answer-corrected"') == 1
    # Undo: the badges of what is left.
    assert handlers.marks(edited[:2], ids[:2]).count('class="answer-mark"') == 1
