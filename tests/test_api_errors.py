"""Every bad request to the HTTP API answers a precise 4xx with `{"error": ...}`;
admin routes answer 401 without the password. A 5xx anywhere here is a bug."""

from __future__ import annotations

import json

import pytest

from core.config import ServeConfig
from tests.fakes import FakeTraining
from tests.live_app import ADMIN, ADMIN_PASSWORD

PASSWORD = ADMIN_PASSWORD  # tests/test_adapter_checks.py imports it from here
USER = [{"role": "user", "content": "What is the capital of France?"}]


def assert_error(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    for word in words:
        assert word.lower() in body["error"].lower(), body["error"]


def post_raw(client, path: str, content: bytes | str, headers: dict | None = None):
    return client.post(path, content=content, headers={"content-type": "application/json", **(headers or {})})


CHAT_CASES = [
    # (case, raw body, status, words the error must contain)
    ("malformed JSON", "{'messages': ", 400, ["not valid json"]),
    ("empty body", "", 422, ["body"]),
    ("body is a list", "[]", 422, ["json object"]),
    ("missing messages", {"max_tokens": 5}, 422, ["messages", "required"]),
    ("empty messages", {"messages": []}, 422, ["messages"]),
    ("unknown role", {"messages": [{"role": "wizard", "content": "hi"}]}, 422, ["messages.0.role"]),
    ("missing content", {"messages": [{"role": "user"}]}, 422, ["messages.0.content"]),
    ("content not text", {"messages": [{"role": "user", "content": 42}]}, 422, ["messages.0.content"]),
    ("last turn not user", {"messages": [*USER, {"role": "assistant", "content": "Paris"}]}, 400, ["end with a user"]),
    ("empty question", {"messages": [{"role": "user", "content": "   "}]}, 400, ["empty"]),
    ("oversized conversation", {"messages": [{"role": "user", "content": "word " * 14000}]}, 413,
     ["70000 characters", "at most 64000"]),
    ("negative max_tokens", {"messages": USER, "max_tokens": -5}, 422, ["max_tokens"]),
    ("zero max_tokens", {"messages": USER, "max_tokens": 0}, 422, ["max_tokens"]),
    ("fractional max_tokens", {"messages": USER, "max_tokens": 2.5}, 422, ["max_tokens"]),
    ("negative temperature", {"messages": USER, "temperature": -1}, 422, ["temperature"]),
    ("temperature above the UI's and OpenAI's 2", {"messages": USER, "temperature": 2.5}, 422, ["temperature"]),
    ("top_p zero", {"messages": USER, "top_p": 0}, 422, ["top_p"]),
    ("too many stops", {"messages": USER, "stop": ["a", "b", "c", "d", "e"]}, 422, ["stop"]),
    ("empty stop", {"messages": USER, "stop": ""}, 422, ["stop"]),
    ("empty stop in a list", {"messages": USER, "stop": ["a", ""]}, 422, ["stop"]),
    ("n above 1", {"messages": USER, "n": 2}, 422, ["n:"]),
    ("few_shot not bool", {"messages": USER, "few_shot": "sometimes"}, 422, ["few_shot"]),
    ("stream not bool", {"messages": USER, "stream": "please"}, 422, ["stream"]),
]


@pytest.mark.parametrize("case,body,status,words", CHAT_CASES, ids=[c[0] for c in CHAT_CASES])
def test_bad_chat_requests(client, case, body, status, words):
    raw = body if isinstance(body, str) else json.dumps(body)
    assert_error(post_raw(client, "/v1/chat/completions", raw), status, *words)


def test_a_body_that_is_not_sent_as_json_says_so(client):
    body = json.dumps({"messages": USER})
    response = client.post("/v1/chat/completions", content=body, headers={"content-type": "text/plain"})
    assert_error(response, 422, "content-type: application/json")


def test_bad_streaming_request_fails_before_the_stream_starts(client):
    response = client.post("/v1/chat/completions", json={"messages": [], "stream": True})
    assert_error(response, 422, "messages")


def test_oversized_bodies_answer_413(client):
    huge = json.dumps({"messages": [{"role": "user", "content": "x" * (1024 * 1024 + 10)}]})
    assert_error(post_raw(client, "/v1/chat/completions", huge), 413, "limit")
    assert_error(post_raw(client, "/api/feedback", huge), 413)

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(40):
            yield b"x" * 64 * 1024

    response = client.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert_error(response, 413, "limit")


FEEDBACK_CASES = [
    ("malformed JSON", "{", 400, ["not valid json"]),
    ("missing message_id", {"rating": "up"}, 422, ["message_id", "required"]),
    ("unknown message id", {"message_id": 999999, "rating": "up"}, 404, ["999999"]),
    ("unknown message id as string", {"message_id": "999999", "rating": "down"}, 404, ["999999"]),
    ("message id not a number", {"message_id": "chat-abc", "rating": "up"}, 400, ["message_id"]),
    ("message id a boolean", {"message_id": True, "rating": "up"}, 422, ["message_id"]),
    ("message id beyond any row", {"message_id": 10**30, "rating": "up"}, 422, ["message_id"]),
    ("message id string beyond any row", {"message_id": "9" * 30, "rating": "up"}, 400, ["message_id"]),
    ("message id zero", {"message_id": 0, "rating": "up"}, 422, ["message_id"]),
    ("unknown rating", {"message_id": "{answer}", "rating": "meh"}, 422, ["rating"]),
    ("rating as bool", {"message_id": "{answer}", "rating": True}, 422, ["rating"]),
    ("empty correction", {"message_id": "{answer}", "correction": "  \n "}, 400, ["correction", "empty"]),
    ("correction same as answer", {"message_id": "{answer}", "correction": "You said: What is the capital of France?"},
     400, ["same"]),
    ("reason too long", {"message_id": "{answer}", "rating": "down", "reason": "x" * 2001}, 422, ["reason"]),
    ("a user turn, not an answer", {"message_id": "{question}", "rating": "up"}, 400, ["not an assistant"]),
]


@pytest.mark.parametrize("case,body,status,words", FEEDBACK_CASES, ids=[c[0] for c in FEEDBACK_CASES])
def test_bad_feedback(client, answer_id, case, body, status, words):
    if isinstance(body, dict) and isinstance(body.get("message_id"), str):
        body = {**body, "message_id": body["message_id"].format(answer=answer_id, question=int(answer_id) - 1)}
    raw = body if isinstance(body, str) else json.dumps(body)
    assert_error(post_raw(client, "/api/feedback", raw), status, *words)


ADMIN_ROUTES = [
    ("GET", "/api/examples", None),
    ("POST", "/api/examples", {"input": "Q?", "output": "A."}),
    ("PATCH", "/api/examples/1", {"status": "approved"}),
    ("POST", "/api/examples/import", None),
    ("GET", "/api/examples/export?format=jsonl", None),
    ("POST", "/api/train", None),
    ("GET", "/api/jobs/1", None),
    ("DELETE", "/api/jobs/1", None),
    ("GET", "/api/models", None),
    ("POST", "/api/models/v1/activate", None),
    ("GET", "/api/learning", None),
]


@pytest.mark.parametrize("method,path,body", ADMIN_ROUTES, ids=[f"{m} {p}" for m, p, _ in ADMIN_ROUTES])
@pytest.mark.parametrize(
    "header",
    [None, "Bearer wrong-password", "Basic " + PASSWORD, "Bearer ", PASSWORD],
    ids=["none", "wrong", "basic", "empty", "no-scheme"],
)
def test_admin_routes_need_the_password(make_client, store, method, path, body, header):
    client = make_client(training=FakeTraining())
    headers = {"Authorization": header} if header is not None else {}
    response = client.request(method, path, json=body, headers=headers)
    assert_error(response, 401, "password")
    assert response.headers["www-authenticate"] == "Bearer"
    assert store.count_examples() == 0


ADMIN_CASES = [
    ("GET", "/api/examples?status=lost", None, 422, ["status"]),
    ("GET", "/api/examples?limit=0", None, 422, ["limit"]),
    ("GET", "/api/examples?offset=-1", None, 422, ["offset"]),
    ("POST", "/api/examples", {"input": "Q?"}, 422, ["output", "required"]),
    ("POST", "/api/examples", {"input": "Q?", "output": "   "}, 400, ["output", "empty"]),
    ("POST", "/api/examples", {"input": [], "output": "A."}, 400, ["input"]),
    ("POST", "/api/examples", {"input": [{"role": "alien", "content": "Q?"}], "output": "A."}, 422, ["input"]),
    ("POST", "/api/examples", {"input": "Q?", "output": "A.", "split": "validation"}, 422, ["split"]),
    ("PATCH", "/api/examples/424242", {"status": "approved"}, 404, ["424242"]),
    ("PATCH", "/api/examples/abc", {"status": "approved"}, 422, ["example_id"]),
    ("PATCH", "/api/examples/{example}", {}, 400, ["nothing to change"]),
    ("PATCH", "/api/examples/{example}", {"status": "superb"}, 422, ["status"]),
    ("PATCH", "/api/examples/{example}", {"output": ""}, 400, ["output"]),
    ("GET", "/api/examples/export?format=xml", None, 422, ["format"]),
    ("POST", "/api/examples/import?format=xml", None, 422, ["format"]),
    ("POST", "/api/examples/import?format=hf", None, 422, ["format"]),  # a folder: the CLI only
    ("GET", "/api/jobs/abc", None, 422, ["job_id"]),
    ("GET", "/api/jobs/" + "9" * 30, None, 422, ["job_id"]),
    ("PATCH", "/api/examples/" + "9" * 30, {"status": "approved"}, 422, ["example_id"]),
    ("GET", "/api/examples?offset=" + "9" * 30, None, 422, ["offset"]),
    ("GET", "/api/jobs/77", None, 404, ["77"]),
    ("DELETE", "/api/jobs/77", None, 404, ["77"]),
    ("POST", "/api/models/v99/activate", None, 404, ["v99"]),
    ("POST", "/api/train", [1, 2], 422, ["body"]),
]


@pytest.mark.parametrize("method,path,body,status,words", ADMIN_CASES, ids=[f"{c[0]} {c[1]} {c[3]}" for c in ADMIN_CASES])
def test_bad_admin_requests(make_client, store, method, path, body, status, words):
    client = make_client(training=FakeTraining())
    example_id = store.add_example("Seed question?", "Seed answer.", source="seed")
    response = client.request(method, path.format(example=example_id), json=body, headers=ADMIN)
    assert_error(response, status, *words)


def test_malformed_admin_json_is_400(client):
    assert_error(post_raw(client, "/api/examples", "{nope", ADMIN), 400, "not valid json")


def test_training_routes_without_a_trainer_say_so(client):
    for method, path in [("POST", "/api/train"), ("GET", "/api/jobs/1"), ("DELETE", "/api/jobs/1"),
                         ("POST", "/api/models/v1/activate"), ("GET", "/api/learning")]:
        assert_error(client.request(method, path, headers=ADMIN), 409, "training is not available")
    # The version list is plain data: it is answered from the store.
    response = client.get("/api/models", headers=ADMIN)
    assert response.status_code == 200
    assert response.json() == {"serving": "base", "models": []}


def test_training_routes_pass_through_to_the_trainer(make_client):
    trainer = FakeTraining()
    client = make_client(training=trainer)
    response = client.post("/api/train", json={"epochs": 2}, headers=ADMIN)
    assert response.status_code == 202 and response.json() == {"job_id": 1}
    assert trainer.started == [({"epochs": 2}, "api")]
    assert_error(client.post("/api/train", headers=ADMIN), 409, "already running")
    job = client.get("/api/jobs/1", headers=ADMIN).json()
    assert job["status"] == "running" and job["promoted"] is False
    assert client.delete("/api/jobs/1", headers=ADMIN).json()["status"] == "cancelled"
    assert client.post("/api/train", headers=ADMIN).status_code == 202  # empty body: default hyper-parameters
    assert trainer.started[-1] == (None, "api")
    assert client.get("/api/models", headers=ADMIN).json()["models"][0]["version"] == "v1"
    assert client.post("/api/models/v1/activate", headers=ADMIN).json() == {"active": "v1", "previous": "base"}
    assert client.get("/api/models", headers=ADMIN).json()["models"][0]["active"] is True
    report = client.get("/api/learning", params={"version": "v1", "not_learned": "true"}, headers=ADMIN).json()
    assert report["version"] == "v1" and [i["example_id"] for i in report["items"]] == [3]
    assert report["items"][0]["reason"] == "try more epochs"
    report = client.get("/api/learning", params={"version": "v1"}, headers=ADMIN).json()
    assert [i["example_id"] for i in report["items"]] == [3, 4]
    assert_error(client.get("/api/learning", params={"version": "v9"}, headers=ADMIN), 404, "v9")


def test_unknown_api_paths_and_methods_are_json_4xx_beside_the_ui(make_client):
    client = make_client(ui=True)
    response = client.delete("/v1/chat/completions")
    assert_error(response, 405, "POST")
    assert response.headers["allow"] == "POST"
    assert_error(client.put("/api/feedback", json={}), 405, "POST")
    assert_error(client.get("/api/no-such-thing"), 404, "no such route")
    assert_error(client.post("/v1/embeddings", json={}), 404, "no such route")
    assert_error(client.get("/api/examples/12", headers=ADMIN), 405, "PATCH")
    assert client.get("/").status_code == 200  # the UI still answers at /
    test_openapi_schema_describes_every_route(client)


def test_openapi_schema_describes_every_route(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    expected = {
        "/healthz": ["get"],
        "/v1/models": ["get"],
        "/v1/chat/completions": ["post"],
        "/api/feedback": ["post"],
        "/api/examples": ["get", "post"],
        "/api/examples/{example_id}": ["patch"],
        "/api/examples/import": ["post"],
        "/api/examples/export": ["get"],
        "/api/train": ["post"],
        "/api/jobs/{job_id}": ["get", "delete"],
        "/api/models": ["get"],
        "/api/models/{version}/activate": ["post"],
        "/v1/completions": ["post"],
        "/v1/load_lora_adapter": ["post"],
        "/v1/unload_lora_adapter": ["post"],
    }
    for path, methods in expected.items():
        assert path in paths, path
        for method in methods:
            assert method in paths[path], (path, method)
            assert paths[path][method].get("description") or paths[path][method].get("summary")
    request = schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert {"messages", "max_tokens", "temperature", "top_p", "stop", "stream", "few_shot"} <= set(request)
    assert "exemplar" in schema["components"]["schemas"]["ChatCompletion"]["properties"]
    assert paths["/api/examples"]["get"]["security"]  # the bearer scheme is declared


# The routes that write to the database or the disk: each may answer 507 when the storage is full.
WRITING_ROUTES = {("/v1/chat/completions", "post"), ("/api/feedback", "post"), ("/api/examples", "post"),
                  ("/api/examples/{example_id}", "patch"), ("/api/examples/import", "post"), ("/api/train", "post"),
                  ("/api/jobs/{job_id}", "delete"), ("/api/models/{version}/activate", "post"),
                  ("/api/openwebui/feedback/{feedback_id}", "put"), ("/api/openwebui/feedback/{feedback_id}", "delete"),
                  ("/api/openwebui/feedback/sync", "post"), ("/api/openwebui/corrections", "post")}


def test_openapi_schema_declares_each_routes_errors_with_the_error_body(client):
    """Every route declares its error statuses with the API's one error body (tests/test_fuzz.py checks that
    the server answers no other): 400 everywhere, the password's 401 and 429 where it is needed, 413 and 422
    where a body is read, 507 where something is written."""
    schema = client.get("/openapi.json").json()
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            responses = operation["responses"]
            errors = {int(status) for status in responses if status[0] in "45"}
            label = f"{method.upper()} {path}"
            for status in errors:
                body = responses[str(status)]["content"]["application/json"]["schema"]
                assert body == {"$ref": "#/components/schemas/ErrorBody"}, (label, status)
            assert 400 in errors, label
            assert ({401, 429} <= errors) == bool(operation.get("security")), label
            assert ({413, 422} <= errors) == ("requestBody" in operation or method != "get"), label
            assert (507 in errors) == ((path, method) in WRITING_ROUTES), label
    assert "HTTPValidationError" not in schema["components"]["schemas"]  # FastAPI's 422 body is not the API's
    assert schema["components"]["schemas"]["ErrorBody"]["required"] == ["error"]
    assert schema["paths"]["/api/models"]["get"]["responses"]["429"]["headers"]["Retry-After"]


def test_openapi_schema_documents_the_admin_views_field_by_field(client):
    """The training views are typed models (core/training_contract.py), so /openapi.json says what a
    job, a version and a learning report hold, down to the nested fields, and nothing is left open."""
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]

    def properties(name: str) -> set[str]:
        return set(components[name]["properties"])

    def response(path: str, method: str) -> str:
        content = schema["paths"][path][method]["responses"]["2" + ("02" if path == "/api/train" else "00")]
        return content["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]

    assert response("/api/jobs/{job_id}", "get") == "JobView"
    assert {"status", "progress", "losses", "metrics", "model_version", "promoted", "error", "log"} <= properties("JobView")
    assert {"phase", "step", "total_steps", "eta_seconds", "percent"} <= properties("JobProgress")
    assert {"gate", "learned", "canary", "heldout", "train"} <= properties("JobMetrics")
    assert {"passed", "rules", "not_learned", "next_steps", "summary"} <= properties("GateVerdict")
    assert response("/api/models", "get") == "ModelVersions"
    assert {"version", "status", "active", "heldout_accuracy", "canary", "learned", "notes"} <= properties("ModelVersionView")
    assert response("/api/learning", "get") == "LearningReport"
    assert {"question", "candidate_learned", "margin_base", "reason"} <= properties("LearningItem")
    assert response("/api/models/{version}/activate", "post") == "Activation"
    assert {"id", "input", "output", "source", "status", "split", "trained_in_version"} <= properties("Example")
    open_ended = [name for name, c in components.items() if c.get("additionalProperties") is True]
    assert open_ended == [], f"schemas that allow any extra field: {open_ended}"


def test_max_tokens_beyond_the_context_window_is_400_with_a_real_engine(make_client, store, tiny_model, tokenizer):
    from bot.serving.engine import Engine

    engine = Engine(tiny_model, tokenizer, base_name="tiny", max_context_tokens=256)
    client = make_client(engine, config=ServeConfig(max_new_tokens=16))
    for stream in (False, True):
        response = client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 5000, "stream": stream})
        assert_error(response, 400, "max_tokens 5000", "fewer tokens")
    assert store.count_conversations() == 0  # refused before anything was stored
    ok = client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 3})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] <= 3


ODD_VALUES = [None, "", "x" * 5000, [], [None], {}, {"role": "user"}, -1, 0, 10**30, 1.5, True, "NaN"]
FIELD_ROUTES = [
    ("POST", "/v1/chat/completions", {"messages": USER, "max_tokens": 4, "temperature": 0.5, "top_p": 0.9,
                                      "stop": ["\n"], "stream": False, "few_shot": True, "n": 1, "model": "x",
                                      "stream_options": {"include_usage": True}, "max_completion_tokens": 4}),
    ("POST", "/api/feedback", {"message_id": "{answer}", "rating": "down", "reason": "r", "comment": "c",
                               "correction": "Paris."}),
    ("POST", "/api/examples", {"input": "Q?", "output": "A.", "split": "train", "status": "pending"}),
    ("PATCH", "/api/examples/{example}", {"status": "approved", "output": "B.", "split": "test"}),
    ("POST", "/api/train", {"epochs": 1}),
]


@pytest.mark.parametrize("method,path,base", FIELD_ROUTES, ids=[f"{m} {p}" for m, p, _ in FIELD_ROUTES])
def test_odd_values_in_any_field_never_cause_a_5xx(make_client, store, answer_id, method, path, base):
    client = make_client(training=FakeTraining())
    example_id = store.add_example("Seed question?", "Seed answer.", source="seed")
    path = path.format(example=example_id)
    for field in base:
        for value in ODD_VALUES:
            body = {k: (v.format(answer=answer_id) if isinstance(v, str) and "{" in v else v) for k, v in base.items()}
            body[field] = value
            response = client.request(method, path, json=body, headers=ADMIN)
            assert response.status_code < 500, (field, value, response.text)
            if response.status_code >= 400:
                assert set(response.json()) == {"error"}, response.text
            client.delete("/api/jobs/1", headers=ADMIN)  # let the next /api/train start


@pytest.mark.parametrize(("name", "low", "high"), [("temperature", -0.1, None), ("top_p", 0.0, 1.01),
                                                    ("max_tokens", 0, None)])
def test_every_edge_takes_the_same_generation_bounds(client, name, low, high):
    """The chat route, /v1/completions' model, --temperature/--top-p/--max-new-tokens and the engine's
    GenerationParams share one bound per setting (core/config.py), so none accepts what another refuses."""
    import pydantic

    from bot.api.chat import ChatCompletionRequest
    from bot.api.lora import CompletionRequest
    from bot.serving.base import GenerationParams
    from core.config import MAX_TEMPERATURE
    from core.errors import ConfigError, ValidationError

    high = MAX_TEMPERATURE + 0.01 if name == "temperature" else high
    engine_name = {"max_tokens": "max_new_tokens"}.get(name, name)
    for value in (low, high):
        if value is None:
            continue
        assert client.post("/v1/chat/completions", json={"messages": USER, name: value}).status_code == 422
        with pytest.raises(pydantic.ValidationError):
            CompletionRequest(prompt="Hi", **{name: value})
        with pytest.raises(ConfigError, match="--" + engine_name.replace("_", "-")):
            ServeConfig(**{engine_name: value})
        with pytest.raises(ValidationError, match=engine_name):
            GenerationParams(**{engine_name: value}).validate()
    if name == "temperature":  # the top of the range is allowed everywhere, the UI slider's end included
        assert ChatCompletionRequest(messages=USER, temperature=MAX_TEMPERATURE).temperature == MAX_TEMPERATURE
        assert CompletionRequest(prompt="Hi", temperature=MAX_TEMPERATURE).temperature == MAX_TEMPERATURE
        assert ServeConfig(temperature=MAX_TEMPERATURE).temperature == MAX_TEMPERATURE
        assert GenerationParams(temperature=MAX_TEMPERATURE).validate().temperature == MAX_TEMPERATURE
