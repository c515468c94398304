"""The official `openai` client, unmodified, against a running server (uvicorn on
a loopback port, the whole app: API and UI) with the real bundled model: the
model list, a plain and a streamed completion, and rating the answer it returned."""

from __future__ import annotations

import json
import sqlite3
import time
from types import SimpleNamespace

import httpx
import pytest

from tests.live_app import ADMIN_PASSWORD, serve_in_thread

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def real_server(tmp_path_factory, real_engine):
    """The whole server as `serve` wires it (bot.server.build_server: watcher, few-shot warm-up, API
    and UI) on the real model, on a loopback socket, shared by the tests here (answers take seconds)."""
    from bot.server import build_server
    from core.config import ServeConfig
    from storage import Store

    config = ServeConfig(data_dir=tmp_path_factory.mktemp("openai-data"))
    store = Store(config.paths.db)
    app, watcher = build_server(real_engine, store, config, ADMIN_PASSWORD)
    try:
        with serve_in_thread(app) as url:
            yield SimpleNamespace(url=url, password=ADMIN_PASSWORD, db_path=config.paths.db)
    finally:
        watcher.stop()
        store.close()


@pytest.fixture(scope="module")
def openai_client(real_server):
    from openai import OpenAI

    return OpenAI(base_url=real_server.url + "/v1", api_key="not-needed", max_retries=0, timeout=120)


def test_model_list(openai_client):
    models = openai_client.models.list()
    assert [m.id for m in models.data] == ["exemplar"]
    assert models.data[0].model_extra["exemplar"]["model_version"] == "base"


def test_plain_completion_is_stored_and_can_be_corrected(openai_client, real_server):
    completion = openai_client.chat.completions.create(model="exemplar", messages=QUESTION, max_tokens=24,
                                                       temperature=0)
    text = completion.choices[0].message.content
    assert "Paris" in text
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage.completion_tokens > 0 and completion.usage.prompt_tokens > 10
    assert completion.model_extra["exemplar"]["model_version"] == "base"
    assert completion.id.isdigit()

    admin = {"Authorization": f"Bearer {real_server.password}"}
    feedback = httpx.post(real_server.url + "/api/feedback", json={"message_id": completion.id, "rating": "down",
                                                                    "correction": "Paris is the capital of France."})
    assert feedback.status_code == 201, feedback.text
    example_id = feedback.json()["example_id"]
    examples = httpx.get(real_server.url + "/api/examples", headers=admin).json()["examples"]
    corrected = next(e for e in examples if e["id"] == example_id)
    assert corrected["rejected"] == text and corrected["output"] == "Paris is the capital of France."

    # The correction is an approved example now, so the next answer gets it as a demonstration.
    again = openai_client.chat.completions.create(model="exemplar", messages=QUESTION, max_tokens=24)
    assert again.model_extra["exemplar"]["few_shot_ids"] == [example_id]
    plain = openai_client.chat.completions.create(model="exemplar", messages=QUESTION, max_tokens=24,
                                                  extra_body={"few_shot": False})
    assert plain.model_extra["exemplar"]["few_shot_ids"] == []


def test_streamed_completion(openai_client):
    stream = openai_client.chat.completions.create(
        model="exemplar", messages=[{"role": "user", "content": "Name three colours."}], max_tokens=32, stream=True
    )
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 3
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].usage.completion_tokens > 0

    # The helper that accumulates a stream sees the same id and text.
    with openai_client.chat.completions.stream(
        model="exemplar", messages=[{"role": "user", "content": "Name three colours."}], max_tokens=32
    ) as events:
        for _ in events:
            pass
        final = events.current_completion_snapshot
    assert final.choices[0].message.content == "".join(pieces).strip()
    assert final.id.isdigit() and final.id != chunks[0].id


def test_a_stream_the_client_leaves_stops_generating(real_server):
    with httpx.Client(base_url=real_server.url, timeout=120) as http:
        body = {"messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
                "max_tokens": 600, "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = (line for line in response.iter_lines() if line.startswith("data: "))
            message_id = json.loads(next(lines)[6:])["id"]
            for _ in range(3):
                next(lines)
        # Generation is serialised, so this answer starts only once the abandoned one has stopped.
        quick = http.post("/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 4})
        assert quick.status_code == 200
    db = sqlite3.connect(real_server.db_path)
    deadline = time.monotonic() + 10  # the partial text is written as the abandoned answer's worker ends
    while not (partial := db.execute("select content from messages where id = ?", [int(message_id)]).fetchone()[0]):
        assert time.monotonic() < deadline, "the abandoned answer was never stored"
        time.sleep(0.1)
    db.close()
    assert len(partial.split()) < 100, "the abandoned 600-token answer kept generating"
