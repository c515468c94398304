"""Adapters are checked before they serve: a damaged one is refused at activation (HTTP 4xx,
the serving version stays), and a server whose active version cannot load starts on the
newest version that can, saying so in the log and in /healthz."""

from __future__ import annotations

import logging
import shutil

import pytest
from fastapi.testclient import TestClient

from bot.server import build_server
from bot.serving.engine import Engine
from core.config import ServeConfig
from core.errors import ModelLoadError
from tests.test_api_errors import PASSWORD
from tests.test_engine import make_adapter
from training import registry
from training.manager import TrainingManager

ADMIN = {"Authorization": f"Bearer {PASSWORD}"}


def engine_for(tiny_model, tokenizer) -> Engine:
    return Engine(tiny_model, tokenizer, base_name="tiny", max_context_tokens=256, bf16_from_batch=0)


def train_version(store, data_dir, model, seed: int) -> str:
    """A version as a training run leaves it: a LoRA adapter committed through the registry."""
    temp = registry.new_temp_dir(data_dir)
    make_adapter(model, temp, seed)
    return registry.commit_version(store, data_dir, temp, base_model="tiny")["version"]


def weights(store, version):
    return registry.adapter_path(store.get_model_version(version)) / "adapter_model.safetensors"


@pytest.fixture
def served(store, tmp_path, tiny_model, tokenizer):
    engine = engine_for(tiny_model, tokenizer)
    v1 = train_version(store, tmp_path, tiny_model, seed=1)
    v2 = train_version(store, tmp_path, tiny_model, seed=2)
    manager = TrainingManager(store, tmp_path)
    config = ServeConfig(data_dir=tmp_path)
    app, watcher = build_server(engine, store, config, PASSWORD, training=manager, watch_interval=3600)
    client = TestClient(app, base_url="http://127.0.0.1")
    assert client.post(f"/api/models/{v1}/activate", headers=ADMIN).status_code == 200
    watcher.sync()
    assert engine.version == v1
    yield client, engine, watcher, v1, v2
    watcher.stop()


def test_registry_records_checksums(store, tmp_path, tiny_model):
    version = train_version(store, tmp_path, tiny_model, seed=3)
    folder = registry.adapter_path(store.get_model_version(version))
    assert (folder / registry.CHECKSUMS).is_file()
    registry.verify_files(folder, version)
    assert not any(p.name.startswith(registry.TMP_PREFIX) for p in folder.parent.iterdir())


def test_a_truncated_adapter_is_refused_and_the_old_version_keeps_serving(served, store):
    client, engine, watcher, v1, v2 = served
    path = weights(store, v2)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    response = client.post(f"/api/models/{v2}/activate", headers=ADMIN)
    assert 400 <= response.status_code < 500, response.text
    assert v2 in response.json()["error"] and "damaged" in response.json()["error"]
    assert store.active_version()["version"] == v1
    watcher.sync()
    assert engine.version == v1


def test_a_changed_adapter_fails_its_checksum(served, store):
    client, _, _, v1, v2 = served
    config = registry.adapter_path(store.get_model_version(v2)) / "adapter_config.json"
    config.write_text(config.read_text() + " ")  # still valid JSON: only the checksum notices
    response = client.post(f"/api/models/{v2}/activate", headers=ADMIN)
    assert response.status_code == 400 and "checksum" in response.json()["error"]
    assert store.active_version()["version"] == v1


def test_an_adapter_for_another_base_is_refused_by_the_engine(served, store, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    client, engine, _, v1, v2 = served
    other = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    folder = registry.adapter_path(store.get_model_version(v2))
    shutil.rmtree(folder)
    make_adapter(other, folder, seed=4)
    registry.write_checksums(folder)  # intact files, wrong shapes: only loading them shows it
    response = client.post(f"/api/models/{v2}/activate", headers=ADMIN)
    assert response.status_code == 400 and "does not fit" in response.json()["error"]
    assert store.active_version()["version"] == v1 and engine.version == v1
    assert client.post("/api/models/base/activate", headers=ADMIN).status_code == 200  # base needs no adapter


def test_an_adapter_with_nan_weights_is_refused_by_the_engine(served, store):
    from safetensors.torch import load_file, save_file

    client, engine, _, v1, v2 = served
    path = weights(store, v2)
    tensors = load_file(path)
    tensors[next(key for key in tensors if "lora_B" in key)][0, 0] = float("nan")
    save_file(tensors, path)
    registry.write_checksums(path.parent)  # intact files, broken numbers: only the engine's check shows it
    response = client.post(f"/api/models/{v2}/activate", headers=ADMIN)
    assert response.status_code == 400 and "NaN" in response.json()["error"], response.text
    assert store.active_version()["version"] == v1 and engine.version == v1


def admin_login_message(engine, store, watcher) -> str:
    """What the Admin tab shows after a correct password (its login handler, called as Gradio would)."""
    from bot.auth import AdminGuard
    from bot.chat.service import ChatService
    from bot.ui.app import build_ui

    service = ChatService(engine, store, ServeConfig(data_dir=watcher.data_dir))
    demo = build_ui(service, AdminGuard(PASSWORD), serving_warning=lambda: watcher.fallback)
    block = next(block for block in demo.fns.values() if block.name == "log_in_and_load")
    # The sections' loaders get the password box and their controls' initial values, as in a fresh tab.
    box = block.inputs[0]
    return block.fn(PASSWORD, *(PASSWORD if c is box else c.value for c in block.inputs[1:]))[1]


def test_a_restart_with_a_damaged_active_adapter_serves_the_newest_that_loads(
    store, tmp_path, tiny_model, tokenizer, caplog
):
    manager = TrainingManager(store, tmp_path)
    v1 = train_version(store, tmp_path, tiny_model, seed=1)
    v2 = train_version(store, tmp_path, tiny_model, seed=2)
    v3 = train_version(store, tmp_path, tiny_model, seed=3)
    manager.activate(v3)
    path = weights(store, v3)
    path.write_bytes(path.read_bytes()[:100])  # damaged after activation (disk, a bad copy)
    engine = engine_for(tiny_model, tokenizer)
    with caplog.at_level(logging.ERROR):
        app, watcher = build_server(engine, store, ServeConfig(data_dir=tmp_path), PASSWORD, training=manager,
                                    watch_interval=3600)
    try:
        assert engine.version == v2  # the newest one that loads
        assert v3 in caplog.text and f"serving {v2} instead" in caplog.text
        health = TestClient(app, base_url="http://127.0.0.1").get("/healthz").json()
        assert health["model_version"] == v2 and v3 in health["warning"]
        # ... and the Admin tab says so when an admin logs in.
        assert v3 in admin_login_message(engine, store, watcher) and "Warning" in admin_login_message(engine, store, watcher)
        # Activating a good version clears the warning.
        manager.activate(v1)
        watcher.sync()
        assert engine.version == v1 and watcher.fallback is None
    finally:
        watcher.stop()
    with pytest.raises(ModelLoadError):
        manager.activate(v3)  # the CLI's path refuses it too
