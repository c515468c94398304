"""The contracts bot relies on (bot/serving/contracts.py, core/training_contract.py) match their
implementations: the real engines and their answers, the TrainingManager, and the test fakes.
A member added, removed or re-signed on one side fails here, not in a request."""

from __future__ import annotations

import inspect

import pytest

from bot.serving.contracts import AnswerStream, ChatEngine, LocalModel
from core.training_contract import TrainingController
from tests.fakes import FakeEngine, FakeGeneration, FakeTraining


def members(protocol: type) -> dict[str, str]:
    """Each member the protocol declares: 'method', 'property' or 'attribute'."""
    found = {name: "attribute" for name in getattr(protocol, "__annotations__", {})}
    for name, value in vars(protocol).items():
        if name.startswith("_") and name != "__iter__":
            continue
        if isinstance(value, property):
            found[name] = "property"
        elif callable(value):
            found[name] = "method"
    return found


def parameters(function) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def check(protocol: type, cls: type, instance: object) -> None:
    """`cls` defines every member of `protocol` itself (not inherited from it), with the same parameters."""
    for name, kind in members(protocol).items():
        assert hasattr(instance, name), f"{cls.__name__} lacks {protocol.__name__}.{name}"
        if kind == "attribute":
            continue
        owner = next(c for c in cls.__mro__ if name in vars(c))
        assert owner is not protocol, f"{cls.__name__}.{name} is only the protocol's stub"
        if kind == "method":
            assert parameters(getattr(cls, name)) == parameters(getattr(protocol, name)), (
                f"{cls.__name__}.{name}{inspect.signature(getattr(cls, name))} differs from "
                f"{protocol.__name__}.{name}{inspect.signature(getattr(protocol, name))}"
            )
        else:
            assert isinstance(getattr(cls, name), property), f"{cls.__name__}.{name} should be a property"


def test_the_fake_engine_keeps_the_engine_contract():
    engine = FakeEngine()
    check(ChatEngine, FakeEngine, engine)
    generation = engine.stream([{"role": "user", "content": "Hi"}])
    check(AnswerStream, FakeGeneration, generation)
    assert isinstance(engine, ChatEngine) and isinstance(generation, AnswerStream)


def test_the_real_engine_keeps_the_engine_contract(tiny_model, tokenizer):
    from bot.serving.engine import Engine

    engine = Engine(tiny_model, tokenizer, base_name="tiny")
    check(ChatEngine, Engine, engine)
    check(LocalModel, Engine, engine)
    assert engine.local_model() is engine and engine.health() is None
    from bot.serving.base import GenerationParams

    generation = engine.stream([{"role": "user", "content": "Hi"}], GenerationParams(max_new_tokens=2))
    "".join(generation)
    check(AnswerStream, type(generation), generation)


def test_the_training_manager_and_its_fake_keep_the_training_contract(tmp_path, store):
    from training.manager import TrainingManager

    check(TrainingController, TrainingManager, TrainingManager(store, tmp_path))
    check(TrainingController, FakeTraining, FakeTraining())
    assert isinstance(FakeTraining(), TrainingController)


def test_a_missing_member_is_caught():
    class Forgetful:
        version = "base"
        base_name = "x"

        def stream(self, messages, params=None):  # no demonstrations
            raise NotImplementedError

    with pytest.raises(AssertionError):
        check(ChatEngine, Forgetful, Forgetful())
