"""Preference stages on TRL's trainers: what users turned down is learned, not only what they wrote.

After the SFT run, and before the job evaluates it (and tops up what is still
unlearned), the same adapter can be trained on preferences (TrainConfig.objective):
- "sft+dpo": TRL's DPOTrainer on the corrections' pairs: chosen is the
  correction, rejected the answer it replaced, with an SFT loss on the chosen
  answers beside DPO's (TrainConfig.preference_sft_weight);
- "sft+kto": TRL's KTOTrainer on unpaired rows: every approved example is
  desirable; the answers corrections replaced, and the chat answers users
  turned down without a correction (Store.downvoted_answers), are undesirable.
  A thumbs-down is the only signal DPO cannot use: it has no chosen answer.

The reference model of both is the adapter as SFT left it: TRL copies a peft
model's adapter into a frozen "ref" adapter (removed again here), so the stage
moves the model only where the preferences pull, from where SFT brought it.

The SFT recipe's KL-replay term goes on: at every step the replay rows (the
base model's own answers to general questions) are held to the base model's
next-token distributions, weighted by TrainConfig.preference_kl_weight. Without it
a KTO stage on the bundled model lost 6 of the 40 canary answers (every capital
it knew came out invented), with it none (docs/training.md).

Prompts and completions go to TRL as text already rendered by core.prompts, the
renderer training and serving share, so TRL tokenises exactly what the model is
trained and served on. Each objective's data minimum is checked before any
model loads (`check_minimum`), with a message that says what is missing.
"""

from __future__ import annotations

import logging
import random
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from core.prompts import render_training_pair
from training.config import TrainConfig

log = logging.getLogger(__name__)

SFT, SFT_DPO, SFT_KTO = "sft", "sft+dpo", "sft+kto"
OBJECTIVES = (SFT, SFT_DPO, SFT_KTO)


def pairs(examples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """DPO pairs: every approved example with the answer it replaced."""
    return [{"input": e["input"], "chosen": e["output"], "rejected": e["rejected"]} for e in examples if e.get("rejected")]


def unpaired(examples: Sequence[dict[str, Any]], downvoted: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """KTO rows: every approved example desirable; the answers corrections replaced and the downvoted answers
    undesirable."""
    rows = [{"input": e["input"], "completion": e["output"], "label": True} for e in examples]
    rows += [{"input": e["input"], "completion": e["rejected"], "label": False} for e in examples if e.get("rejected")]
    rows += [{"input": d["input"], "completion": d["answer"], "label": False} for d in downvoted]
    return rows


def check_minimum(objective: str, examples: Sequence[dict[str, Any]], downvoted: Sequence[dict[str, Any]]) -> None:
    """Raise ValueError, in words a person can act on, when the data cannot train `objective`."""
    if objective == SFT_DPO and not pairs(examples):
        raise ValueError(
            "objective sft+dpo needs at least one approved correction with the answer it replaced, and there is none: "
            "correct an answer in the chat, or train with objective sft or sft+kto"
        )
    if objective == SFT_KTO:
        rows = unpaired(examples, downvoted)
        bad = sum(not r["label"] for r in rows)
        if not bad:
            raise ValueError(
                "objective sft+kto needs at least one undesirable answer (a thumbs-down, or a correction's original "
                "answer), and there is none: turn down or correct an answer in the chat, or train with objective sft"
            )
        if len(rows) < 2:  # KTO estimates its KL term from the other completions of a batch
            raise ValueError("objective sft+kto needs at least two rows (one approved example and one undesirable "
                             "answer); train with objective sft")


def split_rendered(tokenizer: Any, messages: Sequence[dict[str, str]], answer: str) -> tuple[str, str]:
    """(prompt, completion) text as core.prompts renders them, the completion ending with the end-of-turn
    token (TRL adds the tokenizer's EOS only when the text lacks it; the template's trailing newline is left out,
    as the serving engine stops at that token)."""
    prompt, full = render_training_pair(tokenizer, messages, answer)
    completion = full[len(prompt):]
    eos = tokenizer.eos_token
    if eos and eos in completion:
        completion = completion[: completion.rindex(eos) + len(eos)]
    return prompt, completion


def dataset_rows(tokenizer: Any, objective: str, examples: Sequence[dict[str, Any]],
                 downvoted: Sequence[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """The stage's rows in TRL's format (prompt/chosen/rejected, or prompt/completion/label), as rendered text."""
    if objective == SFT_DPO:
        rows = []
        for p in pairs(examples):
            prompt, chosen = split_rendered(tokenizer, p["input"], p["chosen"])
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": split_rendered(tokenizer, p["input"], p["rejected"])[1]})
        return rows
    rows = []
    for r in unpaired(examples, downvoted):
        prompt, completion = split_rendered(tokenizer, r["input"], r["completion"])
        rows.append({"prompt": prompt, "completion": completion, "label": r["label"]})
    # Both labels in each batch: KTO's KL estimate pairs each prompt with another row's completion.
    random.Random(seed).shuffle(rows)
    return rows


def kto_weights(rows: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight) that put the weighted desirable:undesirable ratio at 1.15, inside
    the [1, 4/3] range TRL's KTOConfig documents (from the KTO paper), whichever side has more rows."""
    good = sum(bool(r["label"]) for r in rows)
    bad = len(rows) - good
    if good >= bad:
        return 1.0, round(good / bad / 1.15, 3)
    return round(bad / good * 1.15, 3), 1.0


def with_replay_kl(trainer_class: type, replay: Sequence[dict[str, Any]], kl_weight: float, max_length: int) -> type:
    """`trainer_class` (TRL's DPO or KTO trainer) with the SFT recipe's KL-replay term added to its loss: the
    replay rows' answer tokens held to the base model's next-token distributions (training/finetune.py). With no
    replay rows or kl_weight 0, the class itself."""
    if not replay or kl_weight <= 0:
        return trainer_class
    import torch
    import torch.nn.functional as F

    from training.dataset import IGNORE_INDEX, tokenize_example
    from training.finetune import kl_from_base

    class ReplayKL(trainer_class):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            tokenizer = self.processing_class
            rows = [tokenize_example(tokenizer, r["input"], r["output"], max_length) for r in replay]
            width = max(len(r["input_ids"]) for r in rows)
            pad = tokenizer.pad_token_id or 0
            device = self.accelerator.device
            # All the replay rows in every step, padded to one batch: 15 short answers by default.
            self.replay_batch = {
                "input_ids": torch.tensor([r["input_ids"] + [pad] * (width - len(r["input_ids"])) for r in rows]),
                "attention_mask": torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"]))
                                                for r in rows]),
            }
            self.replay_batch = {k: v.to(device) for k, v in self.replay_batch.items()}
            labels = torch.tensor([r["labels"] + [IGNORE_INDEX] * (width - len(r["labels"])) for r in rows])
            self.replay_at = (labels[:, 1:] != IGNORE_INDEX).to(device)  # positions that predict an answer token
            # The base model (every adapter off, TRL's reference copy included), once: it never changes.
            with torch.no_grad(), self.model.disable_adapter():
                logits = self.model(**self.replay_batch).logits[:, :-1].float()
            self.replay_base = F.log_softmax(logits[self.replay_at], dim=-1)
            self.replay_kl: list[float] = []

        def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
            out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
            logits = model(**self.replay_batch).logits[:, :-1].float()
            kl = kl_from_base(self.replay_base, logits[self.replay_at])
            self.replay_kl.append(float(kl.detach()))
            if return_outputs:
                return out[0] + kl_weight * kl, out[1]
            return out + kl_weight * kl

    return ReplayKL


def train_preferences(
    peft_model: Any, tokenizer: Any, objective: str, examples: Sequence[dict[str, Any]],
    downvoted: Sequence[dict[str, Any]], config: TrainConfig, *, callbacks: Sequence[Any] = (),
    replay: Sequence[dict[str, Any]] = (),
) -> tuple[Any, dict[str, Any]]:
    """Train `peft_model`'s adapter further with TRL's DPO or KTO trainer, `replay` (the plan's replay rows)
    held to the base model; return the model (its adapter active, in eval mode, TRL's reference copy removed)
    and what the stage did."""
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback

    check_minimum(objective, examples, downvoted)
    rows = dataset_rows(tokenizer, objective, examples, downvoted, config.seed)
    use_cuda = torch.cuda.is_available()
    torch.manual_seed(config.seed)
    with tempfile.TemporaryDirectory(prefix="exemplar-preference-") as scratch:
        common: dict[str, Any] = dict(
            output_dir=scratch,
            per_device_train_batch_size=max(2, min(config.batch_size, len(rows))),
            num_train_epochs=config.preference_epochs,
            max_steps=config.max_steps or -1,
            learning_rate=config.preference_learning_rate,
            beta=config.preference_beta,
            lr_scheduler_type="linear",
            warmup_steps=0,
            seed=config.seed,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            # TRL turns both on by default; checkpointing only slows a model this small, and on a CPU without native
            # bf16 the arithmetic is emulated (the SFT run trains in fp32 on a CPU too, finetune.default_bf16).
            gradient_checkpointing=False,
            bf16=False,
            max_length=config.max_length,
            use_cpu=not use_cuda,
            dataloader_pin_memory=use_cuda,
        )
        if objective == SFT_DPO:
            from trl import DPOConfig, DPOTrainer

            trainer_class = with_replay_kl(DPOTrainer, replay, config.preference_kl_weight, config.max_length)
            # DPO lowers the chosen answers too while it widens the margin; an SFT term on them holds them.
            sft_term: dict[str, Any] = (
                {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, config.preference_sft_weight]}
                if config.preference_sft_weight else {}
            )
            trainer: Any = trainer_class(model=peft_model, args=DPOConfig(**common, **sft_term),
                                         train_dataset=Dataset.from_list(rows),
                                         processing_class=tokenizer, callbacks=list(callbacks))
            weights = None
        else:
            from trl import KTOConfig, KTOTrainer

            weights = kto_weights(rows)
            args = KTOConfig(**common, desirable_weight=weights[0], undesirable_weight=weights[1])
            trainer_class = with_replay_kl(KTOTrainer, replay, config.preference_kl_weight, config.max_length)
            trainer = trainer_class(model=peft_model, args=args, train_dataset=Dataset.from_list(rows),
                                    processing_class=tokenizer, callbacks=list(callbacks))
        trainer.remove_callback(PrinterCallback)
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        history = trainer.state.log_history
        losses = [float(h["loss"]) for h in history if "loss" in h]
        margins = [float(h["rewards/margins"]) for h in history if "rewards/margins" in h]
        steps = trainer.state.global_step
        replay_kl = getattr(trainer, "replay_kl", [])
    model = trainer.model
    if "ref" in model.peft_config:  # TRL's frozen copy of the adapter, the reference: not part of the version
        model.set_adapter("default")
        model.delete_adapter("ref")
    model.set_adapter("default")
    model.eval()
    good = sum(bool(r.get("label", True)) for r in rows)
    stage = {
        "objective": objective,
        "rows": len(rows),
        "desirable": good if objective == SFT_KTO else None,
        "undesirable": len(rows) - good if objective == SFT_KTO else None,
        "weights": list(weights) if weights else None,
        "steps": steps,
        "seconds": round(seconds, 1),
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "first_margin": margins[0] if margins else None,
        "final_margin": margins[-1] if margins else None,
        "replay_rows": len(replay) if replay_kl else 0,
        "final_replay_kl": round(replay_kl[-1], 4) if replay_kl else None,
    }
    log.info("%s stage: %d rows, %d steps in %.1f s, loss %s → %s", objective, len(rows), steps, seconds,
             stage["first_loss"], stage["final_loss"])
    return model, stage
