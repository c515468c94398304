"""Typed training configuration: how to fine-tune (TrainConfig), how to judge
the result (EvalConfig) and when to retrain by itself (RetrainPolicy).

Each field has a default chosen by measurement on a 2-core CPU with the bundled
SmolLM2-135M-Instruct (see training/README.md) and a help string; validate()
reports every problem at once, with its fix, before any model loads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from core.errors import ConfigError, ValidationError


def _help(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


@dataclass
class TrainConfig:
    """LoRA fine-tuning of the base model on the approved train split.

    Every run starts from the base model and trains on the whole current set
    (see training/trainer.py for why).
    """

    epochs: float = _help(
        "Passes over the training set. 3 teach the answer format but not new facts; 8 taught the bundled "
        "model 15-17 of 18 distinct facts, 10 taught 18 of 18.",
        default=10.0,
    )
    learning_rate: float = _help(
        "Peak learning rate (linear decay after a short warm-up). 2e-3 made the bundled model forget "
        "general answers; 1e-3 did not.",
        default=1e-3,
    )
    batch_size: int = _help("Examples per optimiser step.", default=8)
    lora_r: int = _help("LoRA rank. r8 and r16 cost the same time here; r16 learned facts more reliably.", default=16)
    lora_alpha: int = _help("LoRA scaling numerator (the update is scaled by alpha / r).", default=32)
    lora_dropout: float = _help("Dropout on the LoRA input; 0 learns a few facts fastest.", default=0.0)
    target_modules: str = _help(
        "Layers that get LoRA adapters: a comma-separated list of module names, or 'all-linear'. The default, "
        "the MLP projections of Llama-style models, learned facts as well as all-linear and kept more general "
        "answers; attention alone learned 5 of 18 facts. Other architectures name their layers differently "
        "(e.g. GPT-2's 'c_fc,c_proj'): use 'all-linear' for them.",
        default="gate_proj,up_proj,down_proj",
    )
    max_length: int = _help("Longest example in tokens; longer examples are cut (the answer's end is lost).", default=512)
    warmup_steps: int = _help("Steps of linear learning-rate warm-up.", default=2)
    weight_decay: float = _help("AdamW weight decay on the LoRA weights.", default=0.0)
    replay_examples: int = _help(
        "How many general questions with the base model's own answers (training/replay.jsonl) to mix in, "
        "so that learning new facts does not wash out general knowledge. 0 turns replay off.",
        default=15,
    )
    replay_kl_weight: float = _help(
        "Weight of the KL divergence from the base model on replay examples. 0 trains on their text instead, "
        "which kept fewer general answers (canary 71-75% against 83-96% with the KL term at weight 1-3; "
        "weight 10 learned only 13 of 18 facts).",
        default=3.0,
    )
    bf16: bool = _help(
        "Train under bfloat16 autocast: about 25% faster on this CPU, loss within 0.03 of fp32.", default=False
    )
    seed: int = _help("Random seed for LoRA initialisation and data order.", default=0)
    max_steps: int | None = _help(
        "Stop after this many optimiser steps (overrides epochs); for smoke tests and benchmarks.", default=None
    )
    threads: int = _help(
        "Torch CPU threads of the training process. 1 leaves a core to the chat server: with both processes "
        "on both cores, chat slowed from 22 to 5.7 tokens/s.",
        default=1,
    )
    nice: int = _help(
        "How much to lower the training process's CPU priority (0-19); the chat server wins any contest for a core.",
        default=19,
    )

    def validate(self) -> TrainConfig:
        """Raise ConfigError listing every invalid setting and its fix; return self when all is well."""
        problems = []
        if not self.epochs > 0:
            problems.append(f"epochs={self.epochs}: give a positive number of passes, e.g. 8")
        if not (0 < self.learning_rate <= 0.1):
            problems.append(f"learning_rate={self.learning_rate}: give a value in (0, 0.1], e.g. 1e-3")
        if self.batch_size < 1:
            problems.append(f"batch_size={self.batch_size}: give at least 1")
        if self.lora_r < 1:
            problems.append(f"lora_r={self.lora_r}: give a rank of at least 1, e.g. 16")
        if self.lora_alpha < 1:
            problems.append(f"lora_alpha={self.lora_alpha}: give at least 1, e.g. twice lora_r")
        if not (0 <= self.lora_dropout < 1):
            problems.append(f"lora_dropout={self.lora_dropout}: give a value in [0, 1)")
        if not self.target_modules.strip() or any(not m.strip() for m in self.target_modules.split(",")):
            problems.append("target_modules is empty: use 'all-linear' or names such as 'q_proj,v_proj'")
        if self.max_length < 16:
            problems.append(f"max_length={self.max_length}: give at least 16 tokens, e.g. 512")
        if self.warmup_steps < 0:
            problems.append("warmup_steps must be 0 or more")
        if self.weight_decay < 0:
            problems.append("weight_decay must be 0 or more")
        if self.replay_examples < 0:
            problems.append("replay_examples must be 0 (off) or more")
        if self.replay_kl_weight < 0:
            problems.append("replay_kl_weight must be 0 (train on the replay text) or more")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append("max_steps must be at least 1, or empty to train for `epochs`")
        if self.threads < 1:
            problems.append("threads must be at least 1")
        if not (0 <= self.nice <= 19):
            problems.append(f"nice={self.nice}: give 0 (normal priority) to 19 (lowest)")
        if problems:
            raise ConfigError(problems)
        return self

    def with_overrides(self, params: dict[str, Any] | None) -> TrainConfig:
        """A copy with `params` applied; ValidationError names unknown keys and bad values."""
        return _with_overrides(self, params)

    def peft_target_modules(self) -> str | list[str]:
        names = [m.strip() for m in self.target_modules.split(",")]
        return "all-linear" if names == ["all-linear"] else names

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class EvalConfig:
    """How a trained version is judged against the one serving now."""

    max_new_tokens: int = _help(
        "Longest generated answer when scoring accuracy and canaries, in tokens.", default=64
    )
    batch_size: int = _help("Prompts generated together (left-padded); 8 gives ~4x the tokens/s of 1 here.", default=8)
    max_heldout: int = _help(
        "Most held-out examples to score (the newest ones); generation is the slow part of evaluation.", default=64
    )
    answer_threshold: float = _help(
        "An answer counts as correct when it matches the reference exactly (normalised), contains it, "
        "or holds this share of the reference's information-carrying words (not in the question; only the rare "
        "ones, those the tokenizer splits, when there are any).",
        default=0.6,
    )
    canary_max_new_tokens: int = _help(
        "Longest canary answer in tokens; the bundled model names the answer within its first 20 or so.",
        default=32,
    )
    canary_tolerance: float = _help(
        "Most canary points (of 100) a candidate may lose against the serving version and still be promoted.",
        default=5.0,
    )

    def validate(self) -> EvalConfig:
        problems = []
        if self.max_new_tokens < 1:
            problems.append("max_new_tokens must be at least 1, e.g. 64")
        if self.batch_size < 1:
            problems.append("eval batch_size must be at least 1")
        if self.max_heldout < 1:
            problems.append("max_heldout must be at least 1")
        if not (0 < self.answer_threshold <= 1):
            problems.append("answer_threshold must be in (0, 1], e.g. 0.6")
        if self.canary_max_new_tokens < 1:
            problems.append("canary_max_new_tokens must be at least 1, e.g. 32")
        if not (0 <= self.canary_tolerance <= 100):
            problems.append("canary_tolerance is in points: give 0 to 100, e.g. 5")
        if problems:
            raise ConfigError(problems)
        return self

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class RetrainPolicy:
    """When the server retrains by itself (checked every few seconds in the background)."""

    enabled: bool = _help("Retrain automatically at all; admins can always start a run by hand.", default=True)
    min_new_examples: int = _help(
        "Retrain once this many approved train-split examples arrived (or changed) since the last run started.",
        default=20,
    )
    every_hours: float | None = _help(
        "Also retrain this often when at least one new example arrived; empty turns the timer off.", default=None
    )

    def validate(self) -> RetrainPolicy:
        problems = []
        if self.min_new_examples < 1:
            problems.append("min_new_examples must be at least 1, e.g. 20")
        if self.every_hours is not None and not self.every_hours > 0:
            problems.append("every_hours must be positive, or empty to turn the timer off")
        if problems:
            raise ConfigError(problems)
        return self

    def describe(self) -> str:
        """The policy in words, for the Admin tab."""
        if not self.enabled:
            return "Automatic retraining is off; use Retrain now."
        text = f"Retrains when {self.min_new_examples} new approved training examples have arrived since the last run"
        if self.every_hours:
            text += f", and every {self.every_hours:g} h when at least one has"
        return text + "."

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(name: str, annotation: str, value: Any) -> Any:
    """Turn a JSON value into the field's type, or raise ValidationError naming the field."""
    optional = "None" in annotation
    if value is None:
        if optional:
            return None
        raise ValidationError(f"{name} cannot be empty")
    base = annotation.replace("| None", "").strip()
    if base == "bool":
        if isinstance(value, bool):
            return value
        raise ValidationError(f"{name} must be true or false, not {value!r}")
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise ValidationError(f"{name} must be a whole number, not {value!r}")
        return int(value)
    if base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValidationError(f"{name} must be a number, not {value!r}")
        return float(value)
    if base == "str":
        if not isinstance(value, str):
            raise ValidationError(f"{name} must be a string, not {value!r}")
        return value
    raise AssertionError(f"unhandled type {annotation} for {name}")


def _with_overrides(config: Any, params: dict[str, Any] | None) -> Any:
    if params is None:
        return dataclasses.replace(config)
    if not isinstance(params, dict):
        raise ValidationError("hyper-parameters must be a JSON object such as {\"epochs\": 8}")
    known = {f.name: f for f in fields(config)}
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValidationError(
            f"Unknown hyper-parameter(s): {', '.join(unknown)}. Known: {', '.join(sorted(known))}"
        )
    values = {name: _coerce(name, str(known[name].type), value) for name, value in params.items()}
    updated = dataclasses.replace(config, **values)
    try:
        return updated.validate()
    except ConfigError as exc:
        raise ValidationError("Invalid hyper-parameters: " + "; ".join(exc.problems)) from exc
