"""vLLM's runtime LoRA routes and /v1/completions on Exemplar's own API: admin-only,
vLLM's request shapes, and `"model": "<lora_name>"` picks the adapter that answers."""

from __future__ import annotations

import pytest

from bot.serving.engine import Engine
from bot.serving.watcher import ModelWatcher
from core.config import ServeConfig
from core.prompts import render_prompt
from tests.live_app import ADMIN


def save_adapter(model, folder, seed: int) -> None:
    """A LoRA adapter with non-zero random weights, so it changes the answers."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["gate_proj", "up_proj", "down_proj"],
                                                  init_lora_weights=False))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.mul_(20)
    peft_model.save_pretrained(folder)
    peft_model.unload()


@pytest.fixture
def served(make_client, tmp_path, store, tiny_model, tokenizer):
    """(a client on the API over a tiny real engine and its watcher, the engine, an adapter's folder)."""
    adapter = tmp_path / "adapters" / "a1"
    save_adapter(tiny_model, adapter, seed=1)
    engine = Engine(tiny_model, tokenizer, base_name="tiny", max_context_tokens=512)
    watcher = ModelWatcher(engine, store, tmp_path)
    watcher.sync()
    return make_client(engine, config=ServeConfig(data_dir=tmp_path), watcher=watcher), engine, adapter


def complete(client, tokenizer, model=None, **extra):
    prompt = render_prompt(tokenizer, [{"role": "user", "content": "Hello there"}])
    body = {"prompt": prompt, "max_tokens": 6, "temperature": 0, **extra}
    if model:
        body["model"] = model
    return client.post("/v1/completions", json=body, headers=ADMIN)


def test_lora_routes_need_the_admin_password(served, tokenizer):
    client, _, adapter = served
    for path, body in (("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(adapter)}),
                       ("/v1/unload_lora_adapter", {"lora_name": "x"}),
                       ("/v1/completions", {"prompt": "Hi"})):
        response = client.post(path, json=body)
        assert response.status_code == 401, path
        assert "error" in response.json()


def test_load_select_and_unload_an_adapter_by_name(served, tokenizer):
    client, engine, adapter = served
    base = complete(client, tokenizer)
    assert base.status_code == 200, base.text
    base_text = base.json()["choices"][0]["text"]

    loaded = client.post("/v1/load_lora_adapter", json={"lora_name": "exemplar-v7", "lora_path": str(adapter)},
                         headers=ADMIN)
    assert loaded.status_code == 200 and "added successfully" in loaded.text
    again = client.post("/v1/load_lora_adapter", json={"lora_name": "exemplar-v7", "lora_path": str(adapter)},
                        headers=ADMIN)
    assert again.status_code == 400 and "already" in again.json()["error"]
    listed = client.get("/v1/models").json()["data"]
    assert (listed[1]["id"], listed[1]["root"], listed[1]["parent"]) == ("exemplar-v7", str(adapter), "exemplar")

    tuned = complete(client, tokenizer, model="exemplar-v7").json()
    assert tuned["model"] == "exemplar-v7"
    assert tuned["choices"][0]["text"] != base_text  # the adapter answered
    # A request that names no adapter is answered by the active version (the base model here).
    plain = complete(client, tokenizer).json()
    assert plain["choices"][0]["text"] == base_text and engine.version == "base"
    chat = client.post("/v1/chat/completions", headers=ADMIN, json={
        "model": "exemplar-v7", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 6})
    assert chat.json()["exemplar"]["model_version"] == "exemplar-v7"

    assert client.post("/v1/unload_lora_adapter", json={"lora_name": "exemplar-v7"}, headers=ADMIN).status_code == 200
    assert engine.version == "base"
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["exemplar"]
    gone = client.post("/v1/unload_lora_adapter", json={"lora_name": "exemplar-v7"}, headers=ADMIN)
    assert gone.status_code == 404 and "cannot be found" in gone.json()["error"]


def test_completions_stream_in_openai_chunks(served, tokenizer):
    client, _, _ = served
    with client.stream("POST", "/v1/completions", headers=ADMIN, json={
        "prompt": render_prompt(tokenizer, [{"role": "user", "content": "Hi"}]), "max_tokens": 5, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True}}) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    import json

    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert lines[-1] == "data: [DONE]"
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["usage"]["completion_tokens"] == 5 and chunks[-1]["choices"] == []
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"


def test_bad_adapter_paths_and_names_are_refused(served, tmp_path):
    client, _, _ = served
    missing = client.post("/v1/load_lora_adapter", json={"lora_name": "v9", "lora_path": str(tmp_path / "nope")},
                          headers=ADMIN)
    assert missing.status_code == 400 and "adapter_config.json" in missing.json()["error"]
    odd = client.post("/v1/load_lora_adapter", json={"lora_name": "../x", "lora_path": str(tmp_path)}, headers=ADMIN)
    assert odd.status_code == 422
    too_long = client.post("/v1/completions", json={"prompt": "word " * 600, "max_tokens": 8}, headers=ADMIN)
    assert too_long.status_code == 400 and "context window" in too_long.json()["error"]


def test_sampling_bounds_are_the_engines(served, tokenizer):
    """/v1/completions takes the same temperature range as the chat route, the engine and --temperature."""
    from core.config import MAX_TEMPERATURE

    client, _, _ = served
    too_hot = complete(client, tokenizer, temperature=MAX_TEMPERATURE + 0.5)
    assert too_hot.status_code == 422 and "temperature" in too_hot.json()["error"]
    assert complete(client, tokenizer, temperature=MAX_TEMPERATURE).status_code == 200
    for bad in ({"top_p": 0}, {"stop": ["a", ""]}, {"max_tokens": 0}):
        assert complete(client, tokenizer, **bad).status_code == 422, bad


@pytest.mark.parametrize("sampling", [
    {"temperature": 1.0, "top_p": 5e-324},  # subnormal: 0 once the sampler compares it in float32
    {"temperature": 1.0, "top_p": 1e-40},
    {"temperature": 5e-324},  # the logits divided by it overflow to inf, and inf - inf is nan
    {"temperature": 1e-30, "top_p": 1e-300},
    {"temperature": 1e-6},
])
def test_tiny_temperatures_and_top_ps_decode_as_their_limit_greedy(served, tokenizer, sampling):
    """Schemathesis found `top_p` 5e-324 answered 500. Every value the schema allows is answered: a
    temperature or top_p that tends to 0 keeps only the most likely token, as greedy decoding does."""
    client, _, _ = served
    greedy = complete(client, tokenizer, temperature=0).json()["choices"][0]["text"]
    response = complete(client, tokenizer, **sampling)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] == greedy


@pytest.mark.parametrize("path", [
    "a" * 4000,  # one name longer than the file system allows (ENAMETOOLONG)
    "/tmp/" + "b" * 256 + "/adapter",
    "/tmp/" + "c/" * 2040,  # short names, but a path longer than the system's limit
    "/tmp/nul\x00byte",
])
def test_an_adapter_path_the_system_cannot_open_is_refused_naming_the_field(served, path):
    client, _, _ = served
    response = client.post("/v1/load_lora_adapter", json={"lora_name": "v9", "lora_path": path}, headers=ADMIN)
    assert 400 <= response.status_code < 500, response.text
    assert "lora_path" in response.json()["error"]


def test_completions_accept_the_fields_that_change_nothing(served, tokenizer):
    """The refused fields are tests/test_openai_fields.py's; these are answered."""
    client, _, _ = served
    accepted = {"seed": 3, "user": "u-1", "response_format": {"type": "text"}, "presence_penalty": 0,
                "logit_bias": {}, "echo": False, "best_of": 1, "suffix": ""}
    response = complete(client, tokenizer, **accepted)
    assert response.status_code == 200, response.text
    assert complete(client, tokenizer, echo=True).json()["error"].startswith("echo")


@pytest.mark.parametrize("model", ["", "exemplar", "tiny"])
def test_completions_answer_every_documented_name_of_the_active_version(served, tokenizer, model):
    """As /openapi.json says: an empty `model`, `exemplar` or the base model's name is the active version."""
    client, engine, _ = served
    response = client.post("/v1/completions", headers=ADMIN, json={
        "prompt": render_prompt(tokenizer, [{"role": "user", "content": "Hi"}]), "max_tokens": 3, "model": model})
    assert response.status_code == 200, response.text
    assert engine.version == "base"
    assert client.post("/v1/completions", headers=ADMIN, json={"prompt": "Hi", "model": "v404"}).status_code == 404


@pytest.mark.parametrize("field, value", [("echo", 0), ("stream", 1), ("temperature", False), ("max_tokens", "8"),
                                          ("top_logprobs", False), ("stream_options", {"include_usage": 1})])
def test_completions_take_each_field_as_the_schema_types_it(served, field, value):
    """A value of another JSON type than /openapi.json's (0 for false, "8" for 8) is refused naming the field,
    not read as the schema's type (schemathesis: negative_data_rejection)."""
    client, _, _ = served
    response = client.post("/v1/completions", headers=ADMIN, json={"prompt": "Hi", "max_tokens": 2, field: value})
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith(field)
