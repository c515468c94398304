"""Hostile input never gives a 5xx: invalid Unicode, deep nesting, non-ASCII digits
and non-finite numbers are refused with a 4xx (or gr.Error, or a ConfigError) that
names the field, on the HTTP API, in the Gradio handlers and in the import parsers."""

from __future__ import annotations

import json

import gradio as gr
import pytest

from core.config import ADMIN_PASSWORD_ENV
from core.errors import ConfigError, ValidationError
from storage.formats import parse_examples
from tests.fakes import FakeEngine
from tests.live_app import ADMIN
from tests.test_ui_handlers import ask, make
from training.config import EvalConfig, RetrainPolicy, TrainConfig

LONE = "\\ud800"  # JSON's escape for a lone surrogate: valid JSON, invalid Unicode
JSON = {"content-type": "application/json"}


def post_raw(client, url, body: str, headers=None):
    return client.post(url, content=body.encode(), headers={**JSON, **(headers or {})})


def assert_refused(response, *words, status=(400, 422)):
    assert response.status_code in status, (response.status_code, response.text)
    message = response.json()["error"]
    for word in words:
        assert word in message, message
    return message


def test_lone_surrogates_are_refused_naming_the_field(client, answer_id, store):
    chat = post_raw(client, "/v1/chat/completions", f'{{"messages": [{{"role": "user", "content": "hi {LONE}"}}]}}')
    assert_refused(chat, "messages.0.content", "invalid Unicode")
    parts = post_raw(client, "/v1/chat/completions",
                     f'{{"messages": [{{"role": "user", "content": [{{"type": "text", "text": "{LONE}"}}]}}]}}')
    assert_refused(parts, "messages.0.content.0.text")
    for field in ("correction", "reason", "comment"):
        body = f'{{"message_id": "{answer_id}", "rating": "down", "{field}": "x{LONE}"}}'
        assert_refused(post_raw(client, "/api/feedback", body), field, "invalid Unicode")
    created = post_raw(client, "/api/examples", f'{{"input": "q", "output": "a{LONE}"}}', ADMIN)
    assert_refused(created, "output")
    ok = client.post("/api/examples", json={"input": "q", "output": "a"}, headers=ADMIN)
    assert ok.status_code == 201
    patched = client.patch(f"/api/examples/{ok.json()['id']}", content=f'{{"output": "{LONE}"}}'.encode(),
                           headers={**JSON, **ADMIN})
    assert_refused(patched, "output")
    key = post_raw(client, "/api/feedback", f'{{"message_id": "{answer_id}", "{LONE}": 1}}')
    assert_refused(key, "a key")
    line = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    bad = line.replace('"a"}', f'"a{LONE}"}}')
    imported = client.post("/api/examples/import", content=f"{line}\n{bad}\n".encode(), headers=ADMIN)
    assert_refused(imported, "line 2", "messages.1.content")
    # Nothing of the refused requests was stored: one chat answer, one example.
    assert store.count_examples() == 1
    assert store.get_example(ok.json()["id"])["output"] == "a"


def test_deep_nesting_is_refused(client, store):
    deep = "[" * 5000 + "]" * 5000
    chat = post_raw(client, "/v1/chat/completions", f'{{"messages": {deep}}}')
    assert_refused(chat, "nested")
    moderately = "[" * 100 + "]" * 100  # parses, but deeper than any real request
    assert_refused(post_raw(client, "/api/feedback", f'{{"message_id": {moderately}}}'), "nested")
    for body in (deep, f'{{"messages": {deep}}}', f'[{{"messages": {moderately}}}]'):
        response = client.post("/api/examples/import", content=body.encode(), headers=ADMIN)
        assert_refused(response, "nested")
    trained = client.post("/api/train", content=f'{{"epochs": {deep}}}'.encode(), headers={**JSON, **ADMIN})
    assert_refused(trained, "nested")
    assert store.count_examples() == 0


@pytest.mark.parametrize("value", ["²", "٣", "３", "+5", "5.0", "1_000", " ", "-1", "99999999999999999999"])
def test_ids_are_ascii_digits_only(client, answer_id, value):
    feedback = client.post("/api/feedback", json={"message_id": value, "rating": "up"})
    assert_refused(feedback, "message_id")
    from urllib.parse import quote

    for method, url in (("PATCH", f"/api/examples/{quote(value)}"), ("GET", f"/api/jobs/{quote(value)}")):
        response = client.request(method, url, json={"status": "approved"}, headers=ADMIN)
        assert response.status_code in (404, 405, 409, 422), (value, response.status_code, response.text)
        assert response.status_code != 409, "a non-digit id reached the handler"
    # The ASCII form of the same id is accepted.
    ok = client.post("/api/feedback", json={"message_id": f" {answer_id} ", "rating": "up"})
    assert ok.status_code == 201, ok.text


def test_review_ids_typed_in_the_admin_tab_are_ascii_digits():
    from bot.ui.admin_review import parse_ids

    assert parse_ids("3, 5-6") == [3, 5, 6]
    for text in ("٣", "²", "３-５"):
        with pytest.raises(ValidationError):
            parse_ids(text)


@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN", "1e999"])
def test_hyper_parameters_must_be_finite(make_client, value, store, tmp_path):
    from training.manager import TrainingManager

    config = TrainConfig()
    with pytest.raises(ValidationError, match="finite"):
        config.with_overrides({"epochs": json.loads(value)})
    with pytest.raises(ValidationError, match="finite"):
        config.with_overrides({"batch_size": json.loads(value)})
    # Over HTTP, against the real training manager: refused before a job exists.
    manager = TrainingManager(store, tmp_path)
    client = make_client(training=manager)
    store.add_example("q", "a", source="admin", status="approved", split="train")
    response = client.post("/api/train", content=f'{{"learning_rate": {value}}}'.encode(), headers={**JSON, **ADMIN})
    assert_refused(response, "learning_rate", "finite")
    assert manager.latest_job() is None


def test_absurdly_large_hyper_parameters_are_refused_with_the_bound(make_client, store, tmp_path):
    from training.manager import TrainingManager

    with pytest.raises(ValidationError, match="batch_size=.*at most 4096"):
        TrainConfig().with_overrides({"batch_size": 10**30})
    with pytest.raises(ConfigError, match="--eval-max-new-tokens 1000000000000: must be at most 32768"):
        EvalConfig(max_new_tokens=10**12)
    manager = TrainingManager(store, tmp_path)
    client = make_client(training=manager)
    store.add_example("q", "a", source="admin", status="approved", split="train")
    response = client.post("/api/train", content=b'{"epochs": 1e300, "lora_r": 100000000000000000000}',
                           headers={**JSON, **ADMIN})
    assert_refused(response, "epochs", "at most")
    assert "lora_r" in response.json()["error"]
    assert manager.latest_job() is None


def test_configs_from_the_command_line_must_be_finite():
    for build in (lambda: TrainConfig(epochs=float("inf")), lambda: EvalConfig(answer_threshold=float("nan")),
                  lambda: RetrainPolicy(every_hours=float("inf"))):
        with pytest.raises(ConfigError, match="finite"):
            build()


def test_config_paths_the_system_cannot_open_are_named_problems(tmp_path):
    """A name longer than the file system allows raises OSError (ENAMETOOLONG) when looked at."""
    from core.config import ServeConfig

    too_long = str(tmp_path / ("x" * 300))
    with pytest.raises(ConfigError) as refused:
        ServeConfig(data_dir=too_long, base_model=too_long, embedder=too_long)
    problems = refused.value.problems
    assert [p.split(" ", 1)[0] for p in problems] == ["--data-dir", "--base-model", "--embedder"], problems
    assert "cannot be opened: File name too long" in problems[0]


def test_generation_settings_refuse_nan(client):
    from bot.serving.base import GenerationParams

    with pytest.raises(ValidationError):
        GenerationParams(temperature=float("nan")).validate()
    response = post_raw(client, "/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}')
    assert response.status_code in (400, 422)


def test_gradio_handlers_refuse_invalid_unicode(store):
    engine = FakeEngine()
    _, handlers = make(store, engine)
    with pytest.raises(gr.Error, match="invalid Unicode"):
        ask(handlers, "hi \ud800")
    shown, ids, *_ = ask(handlers, "Capital of France?")
    with pytest.raises(gr.Error, match="invalid Unicode"):
        handlers.correct_last("Paris \udfff", shown, ids)
    assert store.count_examples() == 0


@pytest.mark.parametrize("text", [
    "[" * 5000 + "]" * 5000,
    '{"messages": ' + "[" * 5000 + "]" * 5000 + "}",
    '{"conversations": [{"from": ["human"], "value": "q"}, {"from": "gpt", "value": "a"}]}',
    '{"input": "q", "output": "a", "rejected": "\\udc00"}',
    'input,output\nq,"a\x00"\n',
])
def test_import_parsers_refuse_hostile_files(text):
    with pytest.raises(ValidationError):
        parse_examples(text, "csv" if text.startswith("input,") else None)


def test_the_training_worker_does_not_get_the_admin_password(monkeypatch, store, tmp_path):
    import subprocess

    from training.manager import TrainingManager

    seen = {}

    class Child:
        pid = 12345

    def fake_popen(command, **kwargs):
        seen.update(kwargs["env"])
        return Child()

    monkeypatch.setenv(ADMIN_PASSWORD_ENV, "secret-password-123")
    monkeypatch.setattr(subprocess, "Popen", fake_popen)
    manager = TrainingManager(store, tmp_path)
    store.add_example("q", "a", source="admin", status="approved", split="train")
    manager.start()
    assert seen and ADMIN_PASSWORD_ENV not in seen
    assert "secret-password-123" not in json.dumps(seen)
