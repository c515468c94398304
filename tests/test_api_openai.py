"""The official `openai` client, unmodified, against `python launch.py serve`
with the real bundled model: the model list, a plain and a streamed completion,
and rating the answer it returned."""

from __future__ import annotations

import time

import httpx
import pytest

from conftest import LiveServer

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory, bundled_checkpoint):
    live = LiveServer(tmp_path_factory.mktemp("openai-data"), bundled_checkpoint, "--threads", "1")
    try:
        yield live.wait_ready()
    finally:
        live.stop()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="not-needed", max_retries=0, timeout=120)


def test_model_list(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["exemplar"]
    assert models.data[0].model_extra["exemplar"]["model_version"] == "base"


def test_plain_completion_is_stored_and_can_be_corrected(client, server):
    completion = client.chat.completions.create(model="exemplar", messages=QUESTION, max_tokens=24, temperature=0)
    text = completion.choices[0].message.content
    assert "Paris" in text
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage.completion_tokens > 0 and completion.usage.prompt_tokens > 10
    assert completion.model_extra["exemplar"]["model_version"] == "base"
    assert completion.id.isdigit()

    admin = {"Authorization": f"Bearer {server.password}"}
    feedback = httpx.post(server.url + "/api/feedback", json={"message_id": completion.id, "rating": "down",
                                                               "correction": "Paris is the capital of France."})
    assert feedback.status_code == 201, feedback.text
    example_id = feedback.json()["example_id"]
    examples = httpx.get(server.url + "/api/examples", headers=admin).json()["examples"]
    corrected = next(e for e in examples if e["id"] == example_id)
    assert corrected["rejected"] == text and corrected["output"] == "Paris is the capital of France."

    # The correction is an approved example now, so the next answer gets it as a demonstration.
    again = client.chat.completions.create(model="exemplar", messages=QUESTION, max_tokens=24)
    assert again.model_extra["exemplar"]["few_shot_ids"] == [example_id]
    plain = client.chat.completions.create(model="exemplar", messages=QUESTION, max_tokens=24,
                                           extra_body={"few_shot": False})
    assert plain.model_extra["exemplar"]["few_shot_ids"] == []


def test_streamed_completion(client):
    stream = client.chat.completions.create(
        model="exemplar", messages=[{"role": "user", "content": "Name three colours."}], max_tokens=32, stream=True
    )
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 3
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].usage.completion_tokens > 0

    # The helper that accumulates a stream sees the same id and text.
    with client.chat.completions.stream(
        model="exemplar", messages=[{"role": "user", "content": "Name three colours."}], max_tokens=32
    ) as events:
        for _ in events:
            pass
        final = events.current_completion_snapshot
    assert final.choices[0].message.content == "".join(pieces).strip()
    assert final.id.isdigit() and final.id != chunks[0].id


def test_a_stream_the_client_leaves_stops_generating(server):
    started = time.perf_counter()
    with httpx.Client(base_url=server.url, timeout=60) as http:
        body = {"messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
                "max_tokens": 600, "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = (line for line in response.iter_lines() if line.startswith("data: "))
            first_id = next(lines)
            for _ in range(3):
                next(lines)
        # Generation is serialised: the next answer can only start once the abandoned one stopped.
        quick = http.post("/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 4})
    assert quick.status_code == 200
    assert time.perf_counter() - started < 15, "the abandoned 600-token answer kept generating"
    assert '"id": "' in first_id
