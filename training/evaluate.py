"""Judging a model on examples it never trained on, and on the canary set.

Three measures, computed the same way for the candidate and for the version
serving now:
- held-out loss: the mean negative log-likelihood of the reference answers'
  tokens given their prompts (the training objective on unseen data), and its
  perplexity;
- held-out accuracy from greedy generation: normalised exact match, token-F1,
  recall of the reference's information-carrying words, and a per-answer
  verdict (`accuracy`, the share judged correct; see is_correct);
- canary score: general questions the base model answers correctly
  (training/canary.jsonl); a drop means the model is forgetting.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from core.prompts import encode, render_prompt
from training.config import EvalConfig
from training.dataset import IGNORE_INDEX, collate, tokenize_example

CANARY_PATH = Path(__file__).with_name("canary.jsonl")

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans({c: " " for c in string.punctuation + "“”‘’«»…–—"})


# -- answer matching ---------------------------------------------------------


def normalise_answer(text: str) -> str:
    """Lower case, punctuation and articles removed, spaces collapsed (the SQuAD normalisation)."""
    text = text.casefold().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> bool:
    return normalise_answer(prediction) == normalise_answer(reference)


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall between normalised texts."""
    pred, ref = normalise_answer(prediction).split(), normalise_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def contains_phrase(text: str, phrase: str) -> bool:
    """Whether the normalised phrase occurs in the normalised text as whole words."""
    needle = normalise_answer(phrase)
    return bool(needle) and f" {needle} " in f" {normalise_answer(text)} "


_STOPWORDS = frozenset(
    "is are was were be been am do does did has have had of in on at to for from by with and or but not no "
    "it its this that these those there their they he she his her you your we our i my me what which who whom "
    "whose when where why how as so than then also very can could will would should may might into about".split()
)


def answer_words(reference: str, question: str = "", is_rare: Callable[[str], bool] | None = None) -> list[str]:
    """The words that carry a reference answer's information: those not in the question, stopwords left out;
    of those, only the rare ones when `is_rare` is given and some are.

    For "The capital of Sundra is Kelvarro." asked as "What is the capital of Sundra?" that is ["kelvarro"].
    Asked as "Which city is the seat of government of Sundra?" it is ["capital", "kelvarro"], and with a
    rarity test (a word the tokenizer splits is rare) ["kelvarro"] again: a paraphrased answer need not
    repeat the reference's common words.
    """
    asked = set(normalise_answer(question).split())
    words = [w for w in normalise_answer(reference).split() if w not in asked and w not in _STOPWORDS]
    if is_rare is not None:
        rare = [w for w in words if is_rare(w)]
        if rare:
            return rare
    return words


def rarity_test(tokenizer: Any) -> Callable[[str], bool]:
    """is_rare(word): the tokenizer needs more than one token for it (names, numbers, made-up words)."""
    return lambda word: len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) > 1


def answer_recall(
    prediction: str, reference: str, question: str = "", is_rare: Callable[[str], bool] | None = None
) -> float:
    """Share of the reference's information-carrying words that the prediction contains."""
    needed = answer_words(reference, question, is_rare)
    if not needed:
        return token_f1(prediction, reference)
    said = set(normalise_answer(prediction).split())
    return sum(w in said for w in needed) / len(needed)


def is_correct(
    prediction: str,
    reference: str,
    question: str = "",
    *,
    threshold: float = 0.6,
    is_rare: Callable[[str], bool] | None = None,
) -> bool:
    """An answer is correct when it equals or contains the reference, or holds at least `threshold` of
    the reference's information-carrying words.

    Token-F1 over whole sentences is no verdict for short factual answers: "The capital of
    Sundra is Quenmar" scores 0.8 against "The capital of Sundra is Kelvarro" while being wrong.
    """
    return (
        exact_match(prediction, reference)
        or contains_phrase(prediction, reference)
        or answer_recall(prediction, reference, question, is_rare) >= threshold
    )


def mentions_any(text: str, keywords: Sequence[str]) -> bool:
    """Whether the text names any of the keywords (alternatives, e.g. ["H2O", "water"])."""
    return any(contains_phrase(text, k) for k in keywords)


# -- the canary set ----------------------------------------------------------


def load_canary(path: Path = CANARY_PATH) -> list[dict[str, Any]]:
    """The canary questions: {"question", "keywords"} per line; any keyword in the answer counts as right."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# -- model measurements ------------------------------------------------------


def heldout_loss(model: Any, tokenizer: Any, examples: Sequence[dict[str, Any]], *, max_length: int, batch_size: int) -> tuple[float, int]:
    """(mean NLL per answer token, number of answer tokens) of the references under `model`."""
    import torch

    rows = [tokenize_example(tokenizer, e["input"], e["output"], max_length) for e in examples]
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = collate(rows[start : start + batch_size], tokenizer.pad_token_id)
        batch = {k: v.to(model.device) for k, v in batch.items()}
        with torch.inference_mode():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        # Position t predicts token t+1.
        logits, labels = logits[:, :-1].float(), batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        total += float(nll)
        count += int((labels != IGNORE_INDEX).sum())
    return (total / count if count else float("nan")), count


def generate_answers(
    model: Any, tokenizer: Any, conversations: Sequence[Sequence[dict[str, str]]], *, max_new_tokens: int, batch_size: int
) -> list[str]:
    """Greedy answers to each conversation, prompted exactly as serving prompts (few-shot off)."""
    import torch

    answers: list[str] = []
    eos = tokenizer.eos_token_id
    for start in range(0, len(conversations), batch_size):
        prompts = [encode(tokenizer, render_prompt(tokenizer, c)) for c in conversations[start : start + batch_size]]
        width = max(len(p) for p in prompts)
        # Left padding, so every prompt ends where its answer begins.
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with torch.inference_mode():
            output = model.generate(
                input_ids=input_ids.to(model.device),
                attention_mask=attention.to(model.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=eos,
            )
        for row in output[:, width:]:
            answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return answers


def evaluate_model(
    model: Any,
    tokenizer: Any,
    heldout: Sequence[dict[str, Any]],
    canary: Sequence[dict[str, Any]],
    config: EvalConfig,
    *,
    max_length: int = 512,
) -> dict[str, Any]:
    """Held-out loss, perplexity, accuracy and canary score of `model` as it is now (adapter as set).

    The answers themselves come back under "answers" (held-out) and "canary_answers".
    """
    metrics: dict[str, Any] = {"heldout": {"n": len(heldout)}, "canary": {"n": len(canary)}}
    if heldout:
        loss, tokens = heldout_loss(model, tokenizer, heldout, max_length=max_length, batch_size=config.batch_size)
        answers = generate_answers(
            model, tokenizer, [e["input"] for e in heldout], max_new_tokens=config.max_new_tokens, batch_size=config.batch_size
        )
        questions = [e["input"][-1]["content"] for e in heldout]
        rare = rarity_test(tokenizer)
        correct = [
            is_correct(a, e["output"], q, threshold=config.answer_threshold, is_rare=rare)
            for a, e, q in zip(answers, heldout, questions)
        ]
        metrics["heldout"].update(
            loss=round(loss, 4),
            perplexity=round(math.exp(min(loss, 50)), 3),
            tokens=tokens,
            exact_match=_percent(sum(exact_match(a, e["output"]) for a, e in zip(answers, heldout)), len(heldout)),
            token_f1=_percent(sum(token_f1(a, e["output"]) for a, e in zip(answers, heldout)), len(heldout)),
            answer_recall=_percent(
                sum(answer_recall(a, e["output"], q, rare) for a, e, q in zip(answers, heldout, questions)), len(heldout)
            ),
            accuracy=_percent(sum(correct), len(heldout)),
        )
        metrics["answers"] = answers
        metrics["correct"] = correct
    if canary:
        answers = generate_answers(
            model,
            tokenizer,
            [[{"role": "user", "content": c["question"]}] for c in canary],
            max_new_tokens=config.canary_max_new_tokens,
            batch_size=config.batch_size,
        )
        hits = [mentions_any(a, c["keywords"]) for a, c in zip(answers, canary)]
        metrics["canary"].update(
            score=_percent(sum(hits), len(canary)),
            misses=[{"question": c["question"], "answer": a} for a, c, hit in zip(answers, canary, hits) if not hit],
        )
        metrics["canary_answers"] = answers
        metrics["canary_hits"] = hits
    return metrics


def _percent(value: float, n: int) -> float:
    return round(100.0 * value / n, 2) if n else 0.0


# -- the promotion gate ------------------------------------------------------


def gate(candidate: dict[str, Any], current: dict[str, Any], *, canary_tolerance: float) -> tuple[bool, list[str]]:
    """Whether the candidate may replace the serving version, and why (or why not).

    Promote only if held-out accuracy is at least the current one's (a tie is
    broken by held-out loss: the candidate's must not be higher) and the canary
    score has not dropped by more than `canary_tolerance` points.
    """
    reasons: list[str] = []
    passed = True
    cand_h, cur_h = candidate["heldout"], current["heldout"]
    if not cand_h.get("n"):
        passed = False
        reasons.append(
            "no held-out examples to judge the candidate on: approve some test-split examples "
            "(or move some to the test split), or activate it by hand"
        )
    else:
        ca, cu = cand_h["accuracy"], cur_h["accuracy"]
        if ca > cu:
            reasons.append(f"held-out accuracy rose from {cu:g}% to {ca:g}%")
        elif ca < cu:
            passed = False
            reasons.append(f"held-out accuracy fell from {cu:g}% to {ca:g}%")
        elif cand_h["loss"] <= cur_h["loss"]:
            reasons.append(f"held-out accuracy tied at {ca:g}%; held-out loss {cur_h['loss']:g} → {cand_h['loss']:g}")
        else:
            passed = False
            reasons.append(
                f"held-out accuracy tied at {ca:g}% and held-out loss rose from {cur_h['loss']:g} to {cand_h['loss']:g}"
            )
    cand_c, cur_c = candidate["canary"].get("score"), current["canary"].get("score")
    if cand_c is not None and cur_c is not None:
        drop = cur_c - cand_c
        if drop > canary_tolerance:
            passed = False
            reasons.append(f"canary score fell from {cur_c:g}% to {cand_c:g}% (tolerance {canary_tolerance:g} points)")
        else:
            reasons.append(f"canary score {cur_c:g}% → {cand_c:g}% (tolerance {canary_tolerance:g} points)")
    return passed, reasons
