"""OpenAI request fields that would change what an answer means, and that Exemplar does not apply
(JSON mode, tools, log probabilities, penalties, logit bias, ...), are refused with 400 naming the
field on /v1/chat/completions and /v1/completions, never answered as if applied; fields that change
nothing a client relies on (user, seed, metadata, ...) are accepted. Checked with httpx and with the
real `openai` client library."""

from __future__ import annotations

import json

import pytest

from tests.live_app import ADMIN

CHAT = [{"role": "user", "content": "Give me a JSON object with a key 'city'."}]

REFUSED = [
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}},
     "response_format"),
    ({"tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]}, "tools"),
    ({"functions": [{"name": "get_weather", "parameters": {}}]}, "functions"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, "tool_choice"),
    ({"function_call": "auto"}, "function_call"),
    ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"frequency_penalty": -1.0}, "frequency_penalty"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"n": 2}, "n"),
]

ACCEPTED = {
    "response_format": {"type": "text"}, "tools": [], "tool_choice": "none", "logprobs": False, "top_logprobs": 0,
    "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {}, "user": "user-42", "seed": 7,
    "metadata": {"ticket": "T-1"}, "store": False, "service_tier": "auto", "parallel_tool_calls": False,
    "stream_options": {"include_usage": True}, "n": 1,
}


@pytest.mark.parametrize(("extra", "field"), REFUSED)
def test_a_field_the_chat_route_would_not_apply_is_refused_naming_it(client, engine, extra, field):
    response = client.post("/v1/chat/completions", json={"messages": CHAT, **extra})
    assert response.status_code in ((422,) if field == "n" else (400,)), response.text
    assert response.json()["error"].startswith(field), response.json()
    assert engine.calls == []  # nothing was generated


def test_refused_fields_are_refused_before_a_stream_starts(client):
    response = client.post("/v1/chat/completions", json={"messages": CHAT, "stream": True,
                                                         "response_format": {"type": "json_object"}})
    assert response.status_code == 400 and response.headers["content-type"].startswith("application/json")
    assert "response_format 'json_object' is not supported" in response.json()["error"]


def test_every_refused_field_is_named_at_once(client):
    response = client.post("/v1/chat/completions", json={"messages": CHAT, "logprobs": True, "presence_penalty": 1,
                                                         "logit_bias": {"1": 5}})
    message = response.json()["error"]
    assert response.status_code == 400
    assert "logprobs" in message and "presence_penalty 1 " in message and "logit_bias" in message


def test_fields_that_change_nothing_a_client_relies_on_are_accepted(client):
    response = client.post("/v1/chat/completions", json={"messages": CHAT, **ACCEPTED})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize(("extra", "field"), [
    *[r for r in REFUSED if r[1] not in ("n", "logprobs")],
    ({"logprobs": 0}, "logprobs"),  # the legacy route's logprobs is a count; any count asks for them
    ({"echo": True}, "echo"),
    ({"best_of": 3}, "best_of"),
    ({"suffix": "}"}, "suffix"),
])
def test_a_field_the_completions_route_would_not_apply_is_refused_naming_it(client, extra, field):
    response = client.post("/v1/completions", json={"prompt": "Hi", **extra}, headers=ADMIN)
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith(field), response.json()


def test_the_openai_client_asking_for_json_mode_gets_a_400_naming_the_field(server):
    """What the `llm` CLI's `-o json_object 1` sends: it must not get 200 with an answer that is not JSON."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server + "/v1", api_key="not-needed", max_retries=0, timeout=30)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="exemplar", messages=CHAT, response_format={"type": "json_object"})
    # The client reads the API's {"error": "..."} into `body` (it puts only {"error": {"message"}} in the text).
    assert refused.value.status_code == 400 and refused.value.body.startswith("response_format 'json_object'")
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="exemplar", messages=CHAT, tools=[
            {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}])
    assert refused.value.body.startswith("tools are not supported")
    # The same client with only fields that change nothing is answered.
    completion = client.chat.completions.create(model="exemplar", messages=CHAT, seed=1, user="u-1",
                                                response_format={"type": "text"}, metadata={"k": "v"}, store=False)
    assert completion.choices[0].message.content


def test_the_schema_documents_the_refused_fields(client):
    schema = client.get("/openapi.json").json()["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert "400" in schema["response_format"]["description"] and "logprobs" in schema
    assert json.dumps(schema["tools"]).count("Refused with 400") == 1
