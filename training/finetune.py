"""The fine-tuning recipe: base model + LoRA, transformers' Trainer, loss on answer tokens only.

The loss on the users' examples is the cross-entropy of their answers. Mixed
in are replay examples (general questions, training/replay.jsonl); on those
the loss is the KL divergence from the base model's own next-token
distribution, so learning new facts does not wash out what the model knew.
Measured on the bundled model (docs/training.md): replaying the base model's
answers as plain text still lost a quarter of the canary answers; the KL term
kept them.

Batches are packed (training/dataset.py pack, on by default): each batch is one
row without padding, the system turn its examples share is computed once, the
output layer runs only where an answer token is predicted, and the base model's
distributions on the replay answers are computed once per run instead of at
every step. The loss is the padded batch's (tests/test_training_packing.py);
benchmarks/bench_training.py measures the speed.

Every version is trained from the base model on the whole current approved
train set, not on top of the previous adapter. At this project's scale
(hundreds of examples, minutes per run) that costs little, and it buys a lot:
a version is reproducible from its example list alone, a corrected answer
replaces the old one instead of fighting it, removed or rejected examples are
really gone, and a bad version is never the parent of the next one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from core.models import bf16_trains_fast
from training.config import TrainConfig
from training.dataset import IGNORE_INDEX, Collator, PackingCollator, build_dataset, pack

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a training run did, for the version record and the benchmark."""

    steps: int
    total_steps: int
    losses: list[float] = field(default_factory=list)
    examples: int = 0
    train_seconds: float = 0.0
    tokens: int = 0  # tokens processed, padding excluded
    stopped_early: bool = False

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.train_seconds if self.train_seconds else 0.0

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "total_steps": self.total_steps,
            "examples": self.examples,
            "first_loss": self.losses[0] if self.losses else None,
            "final_loss": self.final_loss,
            "train_seconds": round(self.train_seconds, 2),
            "tokens": self.tokens,
            "tokens_per_second": round(self.tokens_per_second, 1),
            "stopped_early": self.stopped_early,
        }


def add_lora(model: Any, config: TrainConfig) -> Any:
    """Wrap the base model in a fresh, trainable LoRA adapter; the base weights stay frozen."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.peft_target_modules(),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def total_steps(n_examples: int, config: TrainConfig) -> int:
    """Optimiser steps a run on `n_examples` rows will take (the Trainer's own arithmetic, without gradient
    accumulation), for planning; during a run, the Trainer's state.max_steps is the total."""
    if config.max_steps:
        return config.max_steps
    return math.ceil(math.ceil(n_examples / config.batch_size) * config.epochs)


def per_process_batch(batch_size: int) -> int:
    """Rows of each batch one process takes: the batch split over the processes of a distributed run."""
    from training.distributed import world_size

    processes = world_size()
    if batch_size % processes:
        raise ValueError(
            f"batch_size={batch_size} does not split over {processes} training processes: "
            f"use a multiple of {processes}, e.g. --set batch_size={processes * max(1, batch_size // processes)}"
        )
    return batch_size // processes


def kl_from_base(base_logp: Any, logits: Any) -> Any:
    """The replay term: KL(base || tuned) at each predicted token, averaged, from the base model's
    log-probabilities and the tuned model's logits at the same positions."""
    import torch.nn.functional as F

    tuned_logp = F.log_softmax(logits, dim=-1)
    return (base_logp.exp() * (base_logp - tuned_logp)).sum(-1).mean()


def make_trainer_class(kl_weight: float) -> type:
    """transformers' Trainer with the loss described in the module docstring.

    Batches carry a `replay` flag per row. With kl_weight 0, replay rows are
    plain cross-entropy rows like the rest.
    """
    import torch
    import torch.nn.functional as F
    from transformers import Trainer

    class ReplayTrainer(Trainer):
        # dataset row → the base model's log-probabilities at that replay example's answer tokens,
        # computed once before training (packed batches only; see base_distributions).
        base_logp: dict[int, Any] = {}

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
            if "predict_at" in inputs:
                return self.packed_loss(model, inputs, return_outputs)
            is_replay = inputs.pop("replay").bool()
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            # Position t predicts token t+1; only answer tokens carry labels.
            logits, targets = outputs.logits[:, :-1].float(), labels[:, 1:]
            answer = targets != IGNORE_INDEX
            distil = answer & is_replay[:, None] if kl_weight > 0 else torch.zeros_like(answer)
            learn = answer & ~distil
            loss = logits.new_zeros(())
            if learn.any():
                loss = loss + F.cross_entropy(logits[learn], targets[learn])
            if distil.any():
                rows = is_replay.nonzero().squeeze(1)
                # Under `accelerate launch` the model arrives wrapped for DDP; the adapter switch is on the peft model.
                with torch.no_grad(), self.accelerator.unwrap_model(model).disable_adapter():
                    base_logits = model(**{k: v[rows] for k, v in inputs.items()}).logits[:, :-1].float()
                base_logp = F.log_softmax(base_logits[distil[rows]], dim=-1)
                kl = kl_from_base(base_logp, logits[distil])
                loss = loss + kl_weight * kl
            return (loss, outputs) if return_outputs else loss

        def packed_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool) -> Any:
            """The same loss on a packed batch (training/dataset.py pack): the output layer runs only
            where an answer token is predicted, and the base model's side of the KL term is cached."""
            predict_at, targets = inputs.pop("predict_at"), inputs.pop("targets")
            is_replay, replay_rows = inputs.pop("target_replay").bool(), inputs.pop("replay_rows")
            outputs = model(**inputs, logits_to_keep=predict_at)
            logits = outputs.logits[0].float()
            distil = is_replay if kl_weight > 0 else torch.zeros_like(is_replay)
            learn = ~distil
            loss = logits.new_zeros(())
            if learn.any():
                loss = loss + F.cross_entropy(logits[learn], targets[learn])
            if distil.any():
                base_logp = torch.cat([self.base_logp[int(r)] for r in replay_rows]).to(logits.device)
                kl = kl_from_base(base_logp, logits[distil])
                loss = loss + kl_weight * kl
            return (loss, outputs) if return_outputs else loss

    return ReplayTrainer


def packing_mask_kind(model: Any) -> str | None:
    """How pack() must shape its 4D mask for this model's attention ("bool" for SDPA, "additive" for
    eager), or None when the attention takes no custom mask (e.g. flash attention): then batches are padded."""
    implementation = getattr(model.config, "_attn_implementation", None) or "eager"
    return {"sdpa": "bool", "eager": "additive"}.get(implementation)


def base_distributions(model: Any, dataset: Any, batch_size: int, additive_mask: bool) -> dict[int, Any]:
    """The base model's log-probabilities at each replay example's answer tokens, by dataset row.

    The KL term compares the adapter's predictions with these; the base model never changes during a
    run, so they are computed once here instead of in an extra forward pass at every step.
    """
    import torch
    import torch.nn.functional as F

    rows = [i for i, replay in enumerate(dataset["replay"]) if replay]
    cache: dict[int, Any] = {}
    model_was_training = model.training
    model.eval()
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = pack([dataset[i] for i in chunk], additive_mask=additive_mask)
        device = model.device
        with torch.no_grad():
            logits = model(
                input_ids=batch["input_ids"].to(device),
                position_ids=batch["position_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                logits_to_keep=batch["predict_at"].to(device),
            ).logits[0].float()
        logp = F.log_softmax(logits, dim=-1)
        counts = [sum(label != IGNORE_INDEX for label in dataset[i]["labels"][1:]) for i in chunk]
        for row, part in zip(chunk, torch.split(logp, counts)):
            cache[row] = part
    model.train(model_was_training)
    return cache


def default_bf16() -> bool:
    """TrainConfig.bf16 when it is empty: on a GPU with bf16, not on the CPU."""
    import torch

    return torch.cuda.is_available() and bf16_trains_fast()


def train_adapter(
    model: Any,
    tokenizer: Any,
    examples: Sequence[dict[str, Any]],
    config: TrainConfig,
    *,
    callbacks: Sequence[Any] = (),
    adapter: Any = None,
) -> tuple[Any, TrainResult]:
    """Fine-tune a new LoRA adapter on `examples` (dicts with chat `input` and `output`, and
    `replay` true for replay examples), or train `adapter` (a PeftModel over `model`) further.

    Returns the PeftModel (base + trained adapter, in eval mode) and what the run did.
    A callback that sets `control.should_training_stop` ends the run early; the
    result then says `stopped_early`.
    """
    import torch
    from transformers import PrinterCallback, TrainerCallback, TrainingArguments

    dataset = build_dataset(tokenizer, examples, config.max_length)
    if len(dataset) == 0:
        raise ValueError("No training examples with an answer inside max_length")
    mask_kind = packing_mask_kind(model) if config.packed else None
    base_logp: dict[int, Any] = {}
    if mask_kind:
        dataset = dataset.add_column("row", list(range(len(dataset))))
        if config.replay_kl_weight > 0:
            # The KL term holds replay rows to the base model's answers, never to a half-trained adapter's.
            with adapter.disable_adapter() if adapter is not None else contextlib.nullcontext():
                base_logp = base_distributions(model, dataset, config.batch_size, mask_kind == "additive")
    torch.manual_seed(config.seed)
    peft_model = adapter if adapter is not None else add_lora(model, config)
    losses: list[float] = []
    trainer_class = make_trainer_class(config.replay_kl_weight)

    class _Losses(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    use_cuda = torch.cuda.is_available()
    # Unless set: bf16 on a GPU that supports it; fp32 on the CPU, even one with native bf16, where bf16 is faster
    # but a retrain on one correction lost 4 of 40 canary answers against fp32's 1 (TrainConfig.bf16). A GPU
    # without bf16 would make the Trainer refuse to start, so such a GPU trains in fp32 whatever the setting.
    bf16 = default_bf16() if config.bf16 is None else config.bf16
    bf16 = bf16 and (not use_cuda or torch.cuda.is_bf16_supported())
    with tempfile.TemporaryDirectory(prefix="exemplar-trainer-") as scratch:
        args = TrainingArguments(
            output_dir=scratch,  # the Trainer wants one; nothing is saved there (save_strategy "no")
            # Under `accelerate launch` each of N processes takes batch_size / N rows of every batch,
            # so a step sees the same examples as a single process would (see training/distributed.py).
            per_device_train_batch_size=per_process_batch(config.batch_size),
            # Similar lengths in one batch: less padding computed for nothing.
            train_sampling_strategy="group_by_length" if config.length_grouped else "random",
            num_train_epochs=config.epochs,
            max_steps=config.max_steps or -1,
            learning_rate=config.learning_rate,
            lr_scheduler_type="linear",
            warmup_steps=config.warmup_steps,
            weight_decay=config.weight_decay,
            bf16=bf16,
            seed=config.seed,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            remove_unused_columns=False,
            dataloader_pin_memory=use_cuda,
            use_cpu=not use_cuda,
        )
        trainer = trainer_class(
            model=peft_model,
            args=args,
            train_dataset=dataset,
            data_collator=PackingCollator(mask_kind == "additive") if mask_kind else Collator(tokenizer.pad_token_id),
            callbacks=[_Losses(), *callbacks],
        )
        trainer.base_logp = base_logp
        # Progress is reported by our callbacks; the Trainer's own printing would flood the job log.
        trainer.remove_callback(PrinterCallback)
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        steps, planned = trainer.state.global_step, trainer.state.max_steps
    # Tokens actually seen: each example's length times the epochs run.
    lengths = [len(row["input_ids"]) for row in dataset]
    epochs_run = steps / max(1, math.ceil(len(dataset) / config.batch_size))
    result = TrainResult(
        steps=steps,
        total_steps=planned,
        losses=losses,
        examples=len(dataset),
        train_seconds=seconds,
        tokens=int(sum(lengths) * epochs_run),
        stopped_early=steps < planned,
    )
    peft_model.eval()
    return peft_model, result
