"""The admins' "try it on both": one prompt answered by a chosen version and by the one serving now,
each labelled; over HTTP (admin password), in the Admin tab's handler, and in the real engine, where the
chosen version answers alone and chat keeps serving its own version."""

from __future__ import annotations

import copy

import gradio as gr
import pytest

from bot.chat.service import ChatService
from bot.serving.base import GenerationParams
from bot.ui.admin_training import TrainingHandlers
from core.config import ServeConfig
from storage.vocabulary import BASE_VERSION
from tests.live_app import ADMIN
from training.manager import TrainingManager

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def add_version(store, tmp_path, name: str = "v1") -> None:
    folder = tmp_path / "adapters" / name
    folder.mkdir(parents=True)
    store.add_model_version(name, path=str(folder), metrics={"compared_with": "base"}, example_ids=[])


def test_the_route_answers_with_both_versions_each_labelled(client, engine, store, tmp_path):
    add_version(store, tmp_path)
    engine.enqueue("Kelvarro.", "Paris.")
    response = client.post("/api/models/try", json={"prompt": "Capital of Sundra?", "version": "v1"}, headers=ADMIN)
    assert response.status_code == 200, response.text
    answers = response.json()["answers"]
    assert [(a["version"], a["serving"], a["label"], a["text"]) for a in answers] == [
        ("v1", False, "v1 (chosen version)", "Kelvarro."),
        (BASE_VERSION, True, "base (serving now)", "Paris."),
    ]
    tried = [c for c in engine.calls if "version" in c]
    assert [c["version"] for c in tried] == ["v1"] and str(tried[0]["adapter_path"]).endswith("adapters/v1")
    assert tried[0]["messages"] == [{"role": "user", "content": "Capital of Sundra?"}]
    assert store.count_examples() == 0  # nothing is stored


def test_the_route_needs_the_admin_password_and_checks_its_input(client, store, tmp_path):
    add_version(store, tmp_path)
    body = {"prompt": "Hi", "version": "v1"}
    assert client.post("/api/models/try", json=body).status_code == 401
    assert client.post("/api/models/try", json=body, headers={"Authorization": "Bearer guess"}).status_code == 401
    empty = client.post("/api/models/try", json={"prompt": "   ", "version": "v1"}, headers=ADMIN)
    assert empty.status_code == 400 and "Type a prompt" in empty.text
    unknown = client.post("/api/models/try", json={"prompt": "Hi", "version": "v9"}, headers=ADMIN)
    assert unknown.status_code == 404 and "v9" in unknown.text
    same = client.post("/api/models/try", json={"prompt": "Hi", "version": "base"}, headers=ADMIN)
    assert same.status_code == 400 and "serving now" in same.text
    default = client.post("/api/models/try", json={"prompt": "Hi"}, headers=ADMIN)  # the newest other version
    assert default.status_code == 200 and default.json()["answers"][0]["version"] == "v1"


def check_admin(password: str) -> None:
    if password != "pw":
        raise gr.Error("Wrong admin password")


def test_the_admin_tab_handler_shows_two_labelled_answers(store, engine, tmp_path):
    add_version(store, tmp_path)
    service = ChatService(engine, store, ServeConfig(data_dir=tmp_path))
    handlers = TrainingHandlers(TrainingManager(store, tmp_path), store, check_admin, service)
    engine.enqueue("Kelvarro.", "Paris.")
    title, table = handlers.try_on_both("pw", "v1", "Capital of Sundra?")
    assert "**v1** (chosen)" in title and "**base** (serving now)" in title
    assert table.values.tolist() == [["v1 (chosen version)", "Kelvarro."], ["base (serving now)", "Paris."]]
    with pytest.raises(gr.Error, match="Type a prompt"):
        handlers.try_on_both("pw", "v1", "")
    with pytest.raises(gr.Error, match="v9"):
        handlers.try_on_both("pw", "v9", "Hi")
    with pytest.raises(gr.Error, match="Wrong admin password"):
        handlers.try_on_both("guess", "v1", "Hi")


def test_the_real_engine_answers_with_a_version_it_does_not_serve(tiny_model, tokenizer, tmp_path):
    """The chosen version answers as it would once activated, and chat goes on serving its own version."""
    from bot.serving.engine import Engine
    from tests.test_engine import make_adapter

    engine = Engine(copy.deepcopy(tiny_model), tokenizer, base_name="tiny", max_context_tokens=256, bf16_from_batch=0)
    make_adapter(copy.deepcopy(tiny_model), tmp_path / "v1", seed=1)
    params = GenerationParams(max_new_tokens=10)
    base = engine.generate(QUESTION, params).text
    tried = engine.answer_with("v1", tmp_path / "v1", QUESTION, params)
    assert engine.version == BASE_VERSION and engine.generate(QUESTION, params).text == base
    engine.activate("v1", tmp_path / "v1")
    assert engine.generate(QUESTION, params).text == tried != base
    assert engine.answer_with(BASE_VERSION, None, QUESTION, params) == base  # and back, from v1 to the base
    assert engine.version == "v1" and engine.generate(QUESTION, params).text == tried


def test_a_tiny_temperature_tries_a_version_greedily(tiny_model, tokenizer, tmp_path):
    """transformers' sampler divides by the temperature too: 1e-30 would overflow it (a 500 over HTTP)."""
    from bot.serving.engine import Engine
    from tests.test_engine import make_adapter

    engine = Engine(copy.deepcopy(tiny_model), tokenizer, base_name="tiny", max_context_tokens=256, bf16_from_batch=0)
    make_adapter(copy.deepcopy(tiny_model), tmp_path / "v1", seed=1)
    greedy = engine.answer_with("v1", tmp_path / "v1", QUESTION, GenerationParams(max_new_tokens=8))
    for tiny in ({"temperature": 1e-30}, {"temperature": 5e-324}, {"temperature": 1.0, "top_p": 5e-324}):
        params = GenerationParams(max_new_tokens=8, **tiny)
        assert engine.answer_with("v1", tmp_path / "v1", QUESTION, params) == greedy, tiny
