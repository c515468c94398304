"""The chat completion and feedback routes around generation: the OpenAI shapes,
stored answers, streaming, few-shot, and cancelling when the client goes away.
A fake engine stands in for the model here; tests/test_api_openai.py uses the real one."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from bot.serving.base import GenerationParams
from core.config import ServeConfig
from core.errors import ValidationError
from core.prompts import FittedPrompt
from tests.fakes import FakeGeneration
from tests.live_app import ADMIN

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def sse_events(text: str) -> list:
    """The data payloads of a server-sent event stream, `[DONE]` as a string."""
    events = []
    for block in text.split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            data = block[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_the_model_list_names_the_version_serving_now(client, engine):
    (card,) = client.get("/v1/models").json()["data"]
    assert (card["id"], card["name"], card["exemplar"]["model_version"]) == ("exemplar", "Exemplar (base)", "base")
    engine.activate("v3")  # a promotion or a rollback: the next listing says so
    (card,) = client.get("/v1/models").json()["data"]
    assert card["name"] == "Exemplar (v3)"


def test_completion_is_stored_and_its_id_is_the_message_id(client, engine, store):
    engine.enqueue("Paris is the capital of France.")
    response = client.post("/v1/chat/completions", json={"model": "anything", "messages": QUESTION})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and isinstance(body["id"], str)
    assert body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "Paris is the capital of France."},
         "finish_reason": "stop", "logprobs": None}
    ]
    assert body["model"] == "exemplar-base"
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert body["usage"]["completion_tokens"] == 6
    assert body["exemplar"]["model_version"] == "base" and body["exemplar"]["few_shot_ids"] == []

    message = store.get_message(int(body["id"]))
    assert message["role"] == "assistant" and message["content"] == "Paris is the capital of France."
    assert message["context"] == QUESTION and message["model_version"] == "base"
    turns = store.conversation_messages(message["conversation_id"])
    assert [t["role"] for t in turns] == ["user", "assistant"]
    conversation = store.get_conversation(message["conversation_id"])
    assert conversation["source"] == "api"


def test_request_parameters_reach_the_engine(client, engine):
    client.post(
        "/v1/chat/completions",
        json={"messages": QUESTION, "max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "stop": "\n"},
    )
    assert engine.calls[-1]["params"] == GenerationParams(max_new_tokens=7, temperature=0.5, top_p=0.9, stop=["\n"])
    client.post("/v1/chat/completions", json={"messages": QUESTION, "max_completion_tokens": 9, "stop": ["a", "b"]})
    assert engine.calls[-1]["params"].max_new_tokens == 9 and engine.calls[-1]["params"].stop == ["a", "b"]
    client.post("/v1/chat/completions", json={"messages": QUESTION})
    defaults = ServeConfig()
    assert engine.calls[-1]["params"].max_new_tokens == defaults.max_new_tokens


def test_content_parts_and_system_prompts_are_accepted(client, engine, store):
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": [{"type": "text", "text": "Capital of "}, {"type": "text", "text": "Spain?"}]},
    ]
    response = client.post("/v1/chat/completions", json={"messages": messages})
    assert response.status_code == 200, response.text
    assert engine.calls[-1]["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Capital of Spain?"},
    ]


def test_few_shot_uses_approved_examples_unless_turned_off(client, engine, store):
    example_id = store.add_example("What is the capital of France?", "Paris.", source="admin")
    on = client.post("/v1/chat/completions", json={"messages": QUESTION}).json()
    # The approved answer answers the question itself: served word for word, no model asked.
    assert on["exemplar"]["few_shot_ids"] == [example_id] and on["exemplar"]["from_example"] == example_id
    assert on["choices"][0]["message"]["content"] == "Paris." and engine.calls == []
    off = client.post("/v1/chat/completions", json={"messages": QUESTION, "few_shot": False}).json()
    assert off["exemplar"]["few_shot_ids"] == [] and engine.calls[-1]["demonstrations"] == []
    assert store.get_message(int(on["id"]))["few_shot_ids"] == [example_id]


def test_stream_sends_openai_chunks_all_carrying_the_stored_id(client, engine, store):
    engine.enqueue("Paris is lovely in spring.")
    response = client.post("/v1/chat/completions", json={"messages": QUESTION, "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1
    message_id = int(ids.pop())
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert {c["model"] for c in chunks} == {"exemplar-base"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "Paris is lovely in spring."
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] == "stop" and last["choices"][0]["delta"] == {}
    assert last["usage"]["completion_tokens"] == 5
    assert last["exemplar"] == {"model_version": "base", "few_shot_ids": [], "from_example": None, "related": [],
                                "message_id": message_id,
                                "conversation_id": store.get_message(message_id)["conversation_id"], "stored": True}
    assert store.get_message(message_id)["content"] == text


def test_stream_usage_chunk_on_request(client):
    response = client.post(
        "/v1/chat/completions", json={"messages": QUESTION, "stream": True, "stream_options": {"include_usage": True}}
    )
    events = sse_events(response.text)
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["total_tokens"] > 0


class FailingGeneration(FakeGeneration):
    def __iter__(self):
        yield "Half an"
        raise ValidationError("the prompt could not be rendered")


def test_an_error_mid_stream_is_an_error_event_and_the_answer_is_not_kept(client, engine, store):
    def stream(messages, params=None, demonstrations=()):
        params = (params or GenerationParams()).validate()
        return FailingGeneration("", "base", params, FittedPrompt("q", [1, 2], [], []))

    engine.stream = stream
    events = sse_events(client.post("/v1/chat/completions", json={"messages": QUESTION, "stream": True}).text)
    assert events[-1] == "[DONE]"
    assert events[-2] == {"error": "the prompt could not be rendered"}
    message_id = int(events[0]["id"])
    assert [m["role"] for m in store.conversation_messages(1)] == ["user"]
    with pytest.raises(Exception):
        store.get_message(message_id)
    response = client.post("/v1/chat/completions", json={"messages": QUESTION})
    assert response.status_code == 400 and response.json() == {"error": "the prompt could not be rendered"}


def test_feedback_with_the_completion_id_creates_examples_the_admin_sees(client, engine, store):
    engine.enqueue("Lyon.", "Paris.")
    wrong = client.post("/v1/chat/completions", json={"messages": QUESTION}).json()
    response = client.post(
        "/api/feedback", json={"message_id": wrong["id"], "rating": "down", "reason": "wrong city", "correction": "Paris."}
    )
    assert response.status_code == 201, response.text
    result = response.json()
    assert set(result) == {"feedback_id", "example_id", "status"} and result["status"] == "approved"

    listed = client.get("/api/examples", headers=ADMIN).json()
    assert listed["total"] == 1
    example = listed["examples"][0]
    assert example["id"] == result["example_id"]
    assert (example["source"], example["output"], example["rejected"]) == ("correction", "Paris.", "Lyon.")
    assert example["input"] == QUESTION
    feedback = store.get_feedback(result["feedback_id"])
    assert (feedback["rating"], feedback["reason"], feedback["actor"]) == ("down", "wrong city", "api")

    right = client.post("/v1/chat/completions", json={"messages": QUESTION, "few_shot": False}).json()
    up = client.post("/api/feedback", json={"message_id": int(right["id"]), "rating": "up"}).json()
    assert store.get_example(up["example_id"])["source"] == "upvote"
    withdrawn = client.post("/api/feedback", json={"message_id": right["id"], "rating": None}).json()
    assert withdrawn["example_id"] is None and withdrawn["status"] is None
    assert store.get_example(up["example_id"])["status"] == "rejected"


def test_feedback_waits_for_review_under_the_manual_policy(make_client):
    client = make_client(config=ServeConfig(review_policy="manual"))
    answer = client.post("/v1/chat/completions", json={"messages": QUESTION}).json()
    result = client.post("/api/feedback", json={"message_id": answer["id"], "correction": "Paris."}).json()
    assert result["status"] == "pending"
    pending = client.get("/api/examples?status=pending", headers=ADMIN).json()
    assert [e["id"] for e in pending["examples"]] == [result["example_id"]]


def test_an_anonymous_rating_cannot_reject_what_an_admin_approved(make_client, store, engine):
    client = make_client(config=ServeConfig(review_policy="manual"))
    engine.enqueue("Paris.")
    answer = client.post("/v1/chat/completions", json={"messages": QUESTION}).json()
    up = client.post("/api/feedback", json={"message_id": answer["id"], "rating": "up"}).json()
    approved = client.patch(f"/api/examples/{up['example_id']}", json={"status": "approved"}, headers=ADMIN)
    assert approved.status_code == 200, approved.text
    for rating in ("down", None):  # anyone, without the password
        assert client.post("/api/feedback", json={"message_id": answer["id"], "rating": rating}).status_code == 201
    assert store.get_example(up["example_id"])["status"] == "approved"
    history = store.example_history(up["example_id"])
    assert [(h["field"], h["new_value"], h["actor"]) for h in history] == [
        ("created", "pending", "api"), ("status", "approved", "admin")]


class SlowGeneration(FakeGeneration):
    """Yields a word every `delay` seconds until done or cancelled, like a decode on a busy CPU."""

    delay = 0.1

    def __iter__(self):
        for word in self._reply.split(" "):
            if self.cancelled:
                return
            time.sleep(self.delay)
            piece = word if not self.text else " " + word
            self.text += piece
            yield piece


@pytest.fixture
def slow_engine(engine):
    made: list[SlowGeneration] = []

    def stream(messages, params=None, demonstrations=()):
        params = (params or GenerationParams()).validate()
        made.append(SlowGeneration(" ".join(["word"] * 200), "base", params, FittedPrompt("q", [1, 2, 3], [], [])))
        return made[-1]

    engine.stream = stream
    engine.made = made
    return engine


def test_generation_does_not_block_the_event_loop(server, slow_engine):
    url = server
    results = {}

    def long_answer():
        with httpx.Client(base_url=url, timeout=60) as http:
            results["answer"] = http.post("/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 5})

    worker = threading.Thread(target=long_answer)
    worker.start()
    while not slow_engine.made:
        time.sleep(0.01)
    started = time.perf_counter()
    health = httpx.get(url + "/healthz", timeout=5)
    assert health.status_code == 200 and health.json() == {"status": "ok", "model_version": "base"}
    assert time.perf_counter() - started < 1.0  # the 20 s answer is still being generated
    assert worker.is_alive()
    slow_engine.made[0].cancel()
    worker.join(timeout=10)


def test_a_client_that_disconnects_cancels_its_generation(server, store, slow_engine):
    url = server
    with httpx.Client(base_url=url, timeout=30) as http:
        with http.stream("POST", "/v1/chat/completions", json={"messages": QUESTION, "stream": True}) as response:
            lines = response.iter_lines()
            first = json.loads(next(line for line in lines if line.startswith("data: "))[6:])
            next(line for line in lines if "word" in line)  # at least one piece arrived
    generation = slow_engine.made[0]
    deadline = time.monotonic() + 5
    while not generation.cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert generation.cancelled, "the generation went on after the client left"
    # The partial answer is stored under the id the client was given.
    deadline = time.monotonic() + 5
    while not store.get_message(int(first["id"]))["content"] and time.monotonic() < deadline:
        time.sleep(0.05)
    stored = store.get_message(int(first["id"]))["content"]
    assert stored.startswith("word") and stored.count("word") < 200

    # The same for a non-streamed request whose client times out.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/chat/completions", json={"messages": QUESTION}, timeout=0.5)
    deadline = time.monotonic() + 5
    while not slow_engine.made[1].cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert slow_engine.made[1].cancelled


def test_an_admin_trims_the_chat_a_correction_stored_as_its_context(client, engine, store):
    engine.enqueue("Hello! How can I help?", "Lyon.")
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    first = client.post("/v1/chat/completions", json={"messages": chat}).json()
    chat += [{"role": "assistant", "content": first["choices"][0]["message"]["content"]}, *QUESTION]
    wrong = client.post("/v1/chat/completions", json={"messages": chat}).json()
    made = client.post("/api/feedback", json={"message_id": wrong["id"], "rating": "down", "correction": "Paris."}).json()
    example_id = made["example_id"]
    assert [m["role"] for m in store.get_example(example_id)["input"]] == ["system", "user", "assistant", "user"]

    url = f"/api/examples/{example_id}"
    for bad in ({"keep_turns": 0}, {"keep_turns": "two"}, {"keep_turns": 1.5},
                {"keep_turns": 1, "input": "Capital of France?"}, {"input": [{"role": "assistant", "content": "x"}]}):
        response = client.patch(url, json=bad, headers=ADMIN)
        assert 400 <= response.status_code < 500 and "error" in response.json(), (bad, response.text)
    assert client.patch(url, json={"keep_turns": 1}).status_code == 401  # the admin password, always
    assert len(store.get_example(example_id)["input"]) == 4  # nothing changed by the refused requests

    trimmed = client.patch(url, json={"keep_turns": 1}, headers=ADMIN)
    assert trimmed.status_code == 200, trimmed.text
    assert trimmed.json()["input"] == [{"role": "system", "content": "Be brief."}, *QUESTION]
    history = [h for h in store.example_history(example_id) if h["field"] == "input"]
    assert len(history) == 1 and "Hi there" in history[0]["old_value"] and "Hi there" not in history[0]["new_value"]
    # The trimmed example now is the same input as a plain question: few-shot finds it by that question.
    edited = client.patch(url, json={"input": QUESTION}, headers=ADMIN).json()
    assert edited["input"] == QUESTION and edited["output"] == "Paris."
