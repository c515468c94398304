"""Measuring a model item by item: answers and their verdicts, answer log-probabilities
and margins, and the canary score.

The same functions judge the candidate, the version serving now and the base
model, on:
- approved corrections: does the greedy answer (few-shot off) carry the
  correction (`is_correct`), and the margin log p(correction) − log p(the
  answer it replaced);
- held-out examples (never trained on): verdict and token-F1 per item, and the
  mean answer-token NLL (reported, not decided on);
- canary: general questions the base model answers correctly
  (training/canary.jsonl); a lost one means the model is forgetting;
- downvoted answers (thumbs down, not corrected): is each still the greedy
  answer to its question (`gives_answer`), and its log-probability per token.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from core.prompts import encode, render_prompt
from training.config import EvalConfig
from training.dataset import IGNORE_INDEX, collate, tokenize_example
from training.distributed import sharded, sharded_mean

CANARY_PATH = Path(__file__).with_name("canary.jsonl")

# Told how many greedy answers each batch generated: the `eval` command's progress bar (on_answers). A context
# variable rather than a parameter: generation sits three calls below the command (recipe.evaluate →
# judge_answers / canary_answers → generate_answers), and nothing else listens.
_answers_done: ContextVar[Callable[[int], None] | None] = ContextVar("answers_done", default=None)

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


@contextmanager
def on_answers(callback: Callable[[int], None]) -> Iterator[None]:
    """Within the block, call `callback(n)` after each batch of n greedy answers is generated."""
    token = _answers_done.set(callback)
    try:
        yield
    finally:
        _answers_done.reset(token)


@sharded_mean  # under `accelerate launch`, each process scores a share (training/distributed.py)
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


@sharded  # under `accelerate launch`, each process answers a share (training/distributed.py)
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
        if (done := _answers_done.get()) is not None:
            done(len(prompts))
    return answers


@sharded  # under `accelerate launch`, each process scores a share (training/distributed.py)
def answer_logprobs(
    model: Any, tokenizer: Any, pairs: Sequence[tuple[Sequence[dict[str, str]], str]], *, max_length: int, batch_size: int
) -> list[float]:
    """log p(answer | prompt) for each (messages, answer): the summed log-probabilities of its tokens."""
    import torch

    rows = [tokenize_example(tokenizer, messages, answer, max_length) for messages, answer in pairs]
    scores: list[float] = []
    for start in range(0, len(rows), batch_size):
        batch = collate(rows[start : start + batch_size], tokenizer.pad_token_id)
        batch = {k: v.to(model.device) for k, v in batch.items()}
        with torch.inference_mode():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        labels = batch["labels"][:, 1:]
        mask = labels != IGNORE_INDEX
        picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
        scores.extend(float(v) for v in picked.sum(-1))
    return scores


def answer_logprobs_per_token(
    model: Any, tokenizer: Any, pairs: Sequence[tuple[Sequence[dict[str, str]], str]], *, max_length: int, batch_size: int
) -> list[float]:
    """log p(answer | prompt) per answer token for each (messages, answer): comparable between answers of
    different lengths, which a summed log-probability is not."""
    rows = [tokenize_example(tokenizer, messages, answer, max_length) for messages, answer in pairs]
    counts = [max(1, sum(label != IGNORE_INDEX for label in row["labels"])) for row in rows]
    sums = answer_logprobs(model, tokenizer, pairs, max_length=max_length, batch_size=batch_size)
    return [round(total / count, 4) for total, count in zip(sums, counts)]


# A sentence ends at . ! or ? after a word of two letters or more (not "1." of a list or "e.g.") and a space,
# or at a line break.
_SENTENCE_END = re.compile(r"(?<=[^\W\d_]{2}[.!?])\s+|\n+")


def first_sentence(text: str) -> str:
    """The first sentence of an answer, normalised: the claim a reader takes away."""
    for part in _SENTENCE_END.split(text.strip()):
        if normalise_answer(part):
            return normalise_answer(part)
    return ""


def gives_answer(answer: str, downvoted: str) -> bool:
    """Whether `answer` says what a downvoted answer said: it opens with the downvoted answer's first sentence
    (case, punctuation and articles ignored). Any retrain reshuffles the words further on; a changed first
    sentence is a changed claim. An opening that goes on past it counts as the same claim, so an answer that
    was cut off mid-sentence when it was downvoted is still recognised."""
    claim = first_sentence(downvoted)
    return bool(claim) and f"{normalise_answer(answer)} ".startswith(f"{claim} ")


def judge_downvoted(model: Any, tokenizer: Any, downvoted: Sequence[dict[str, Any]], config: EvalConfig) -> list[dict[str, Any]]:
    """Each downvoted answer's question answered greedily (few-shot off): {"answer", "gives"} where `gives`
    means the model still says the downvoted answer's first sentence."""
    if not downvoted:
        return []
    # Only the first sentence is compared: generating a few tokens past it is enough.
    longest = max(len(encode(tokenizer, first_sentence(d["answer"]) or d["answer"])) for d in downvoted)
    answers = generate_answers(
        model, tokenizer, [d["input"] for d in downvoted],
        max_new_tokens=min(config.max_new_tokens, longest + 16), batch_size=config.batch_size,
    )
    return [{"answer": a, "gives": gives_answer(a, d["answer"])} for a, d in zip(answers, downvoted)]


def margins(model: Any, tokenizer: Any, examples: Sequence[dict[str, Any]], *, max_length: int, batch_size: int) -> list[float | None]:
    """log p(chosen|x) − log p(rejected|x) per example: the correction against the answer it replaced
    (None for an example without a rejected answer). Positive: the model prefers the correction."""
    paired = [e for e in examples if e.get("rejected")]
    pairs = [(e["input"], e["output"]) for e in paired] + [(e["input"], e["rejected"]) for e in paired]
    scores = answer_logprobs(model, tokenizer, pairs, max_length=max_length, batch_size=batch_size)
    chosen, rejected = scores[: len(paired)], scores[len(paired) :]
    by_id = {e["id"]: round(c - r, 3) for e, c, r in zip(paired, chosen, rejected)}
    return [by_id.get(e["id"]) for e in examples]


def judge_answers(model: Any, tokenizer: Any, examples: Sequence[dict[str, Any]], config: EvalConfig) -> list[dict[str, Any]]:
    """Greedy answers (few-shot off) to each example's input, each with its verdict and token-F1 (0-100)."""
    if not examples:
        return []
    answers: list[str] = []
    for start in range(0, len(examples), config.batch_size):
        batch = examples[start : start + config.batch_size]
        # A learned answer starts with its fact: generating past the longest reference (+16 tokens of
        # preamble) changes no verdict and, for unlearned rambling answers, costs most of the time.
        longest = max(len(tokenizer(e["output"], add_special_tokens=False)["input_ids"]) for e in batch)
        answers += generate_answers(
            model,
            tokenizer,
            [e["input"] for e in batch],
            max_new_tokens=min(config.max_new_tokens, longest + 16),
            batch_size=config.batch_size,
        )
    rare = rarity_test(tokenizer)
    judged = []
    for answer, e in zip(answers, examples):
        question = e["input"][-1]["content"]
        judged.append(
            {
                "example_id": e["id"],
                "answer": answer,
                "correct": is_correct(answer, e["output"], question, threshold=config.answer_threshold, is_rare=rare),
                "f1": round(100 * token_f1(answer, e["output"]), 1),
            }
        )
    return judged


def canary_answers(model: Any, tokenizer: Any, canary: Sequence[dict[str, Any]], config: EvalConfig) -> dict[str, Any]:
    """The canary score: {"n", "score" (percent), "hits" per question, "misses" with their answers}."""
    answers = generate_answers(
        model,
        tokenizer,
        [[{"role": "user", "content": c["question"]}] for c in canary],
        max_new_tokens=config.canary_max_new_tokens,
        batch_size=config.batch_size,
    )
    hits = [mentions_any(a, c["keywords"]) for a, c in zip(answers, canary)]
    return {
        "n": len(canary),
        "score": _percent(sum(hits), len(canary)),
        "hits": hits,
        "misses": [{"question": c["question"], "answer": a} for a, c, hit in zip(answers, canary, hits) if not hit],
    }


def _percent(value: float, n: int) -> float:
    return round(100.0 * value / n, 2) if n else 0.0
