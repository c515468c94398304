"""Approved examples → tokenised training data with the loss on the answer only.

Prompts are rendered by core.prompts, the function serving uses, so the model
is trained on exactly the text it will see when it answers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.prompts import encode, render_training_pair
from storage.vocabulary import ExampleStatus, Split

if TYPE_CHECKING:
    from storage import Store

IGNORE_INDEX = -100  # label value the cross-entropy skips

REPLAY_PATH = Path(__file__).with_name("replay.jsonl")


def dedupe_newest(examples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One example per input: the newest (highest id) wins, whatever order they came in."""
    newest: dict[str, dict[str, Any]] = {}
    for example in sorted(examples, key=lambda e: e["id"]):
        newest[example["input_key"]] = example
    return sorted(newest.values(), key=lambda e: e["id"])


def training_examples(store: Store) -> list[dict[str, Any]]:
    """Every approved example, both splits, deduplicated: what a version that serves is trained on.

    The test split is held out only from the selection run that judges the recipe
    (training/recipe.py); the version that serves learns every approved correction.
    """
    return dedupe_newest(store.list_examples(status=ExampleStatus.APPROVED, limit=None))


def heldout_examples(store: Store, limit: int | None = None) -> list[dict[str, Any]]:
    """The approved test-split examples, deduplicated; the newest `limit` of them."""
    examples = dedupe_newest(store.list_examples(status=ExampleStatus.APPROVED, split=Split.TEST, limit=None))
    return examples[-limit:] if limit else examples


def is_truncated(tokenizer: Any, example: dict[str, Any], max_length: int) -> bool:
    """Whether an example's answer is cut off at max_length tokens (then it cannot be learned whole)."""
    _, full = render_training_pair(tokenizer, example["input"], example["output"])
    return len(encode(tokenizer, full)) > max_length


def load_replay(count: int, path: Path = REPLAY_PATH) -> list[dict[str, Any]]:
    """The first `count` replay examples: the base model's own answers to general questions."""
    if count <= 0 or not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{"input": r["input"], "output": r["output"], "replay": True} for r in rows[:count]]


def tokenize_example(tokenizer: Any, messages: Sequence[dict[str, str]], output: str, max_length: int) -> dict[str, list[int]]:
    """input_ids and labels for one example; labels are IGNORE_INDEX on every prompt token.

    The prompt's tokens are checked to be a prefix of the full text's tokens, so
    the boundary between prompt and answer is exact.
    """
    prompt, full = render_training_pair(tokenizer, messages, output)
    prompt_ids = encode(tokenizer, prompt)
    input_ids = encode(tokenizer, full)
    if input_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError("The prompt tokenises differently inside the full conversation; cannot mask it")
    labels = [IGNORE_INDEX] * len(prompt_ids) + input_ids[len(prompt_ids) :]
    return {"input_ids": input_ids[:max_length], "labels": labels[:max_length]}


def build_dataset(tokenizer: Any, examples: Sequence[dict[str, Any]], max_length: int) -> Any:
    """A datasets.Dataset of tokenised examples (input_ids, labels, replay flag); those whose answer
    is cut off entirely are left out."""
    from datasets import Dataset

    rows: list[dict[str, Any]] = [
        {**tokenize_example(tokenizer, e["input"], e["output"], max_length), "replay": int(bool(e.get("replay")))}
        for e in examples
    ]
    rows = [r for r in rows if any(label != IGNORE_INDEX for label in r["labels"])]
    return Dataset.from_list(rows) if rows else Dataset.from_dict({"input_ids": [], "labels": [], "replay": []})


def collate(features: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Right-pad a batch. Padding is masked by the attention mask and IGNORE_INDEX labels, never by
    token id: the pad token is also the end-of-answer token, which must stay in the loss."""
    import torch

    width = max(len(f["input_ids"]) for f in features)
    input_ids, labels, attention = [], [], []
    for f in features:
        pad = width - len(f["input_ids"])
        input_ids.append(list(f["input_ids"]) + [pad_token_id] * pad)
        labels.append(list(f["labels"]) + [IGNORE_INDEX] * pad)
        attention.append([1] * len(f["input_ids"]) + [0] * pad)
    batch = {
        "input_ids": torch.tensor(input_ids),
        "labels": torch.tensor(labels),
        "attention_mask": torch.tensor(attention),
    }
    if "replay" in features[0]:
        batch["replay"] = torch.tensor([int(f["replay"]) for f in features])
    return batch


class Collator:
    """collate() bound to a pad id, picklable for DataLoader workers."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: Sequence[dict[str, list[int]]]) -> dict[str, Any]:
        return collate(features, self.pad_token_id)


def shared_prefix_length(features: Sequence[dict[str, list[int]]]) -> int:
    """Tokens at the start that every row has in common and that no row's loss needs.

    Position t predicts token t+1, so the last shared position predicts each row's own next
    token: the prefix stops one token before the first answer token of any row.
    """
    rows = [list(f["input_ids"]) for f in features]
    limit = min(next(i for i, label in enumerate(f["labels"]) if label != IGNORE_INDEX) for f in features) - 1
    shared = 0
    while shared < limit and all(row[shared] == rows[0][shared] for row in rows):
        shared += 1
    return shared


def pack(features: Sequence[dict[str, Any]], *, additive_mask: bool = False) -> dict[str, Any]:
    """One batch as one row with no padding: the prompt prefix every example shares (the system turn)
    computed once, then each example's own tokens, attending only to the prefix and to themselves.

    The attention mask is a 4D block mask (prefix causal; each example causal over its own tokens
    and the whole prefix) and position_ids restart each example where the prefix ends, so every token
    sees exactly what it would in a row of its own: the loss equals the padded batch's. Only the
    positions that predict an answer token are returned (`predict_at`, with `targets`), so the
    output layer runs on those alone.

    `replay_rows` lists the dataset rows of the replay examples in batch order (each example's
    targets are contiguous and in order), for the cached base-model distributions (finetune.py).
    """
    import torch

    shared = shared_prefix_length(features)
    first = list(features[0]["input_ids"])
    input_ids, positions, owner = first[:shared], list(range(shared)), [-1] * shared
    predict_at, targets, target_replay, replay_rows = [], [], [], []
    for index, f in enumerate(features):
        ids, labels, start = list(f["input_ids"]), list(f["labels"]), len(input_ids)
        input_ids += ids[shared:]
        positions += range(shared, len(ids))
        owner += [index] * (len(ids) - shared)
        replay = bool(f.get("replay"))
        for t in range(shared + 1, len(ids)):  # token t is predicted at position t-1, which is this example's own
            if labels[t] != IGNORE_INDEX:
                predict_at.append(start + t - 1 - shared)
                targets.append(labels[t])
                target_replay.append(replay)
        if replay:
            replay_rows.append(int(f["row"]) if "row" in f else index)
    total = len(input_ids)
    owners = torch.tensor(owner)
    causal = torch.ones(total, total, dtype=torch.bool).tril()
    # A token sees the prefix (owner -1) and earlier tokens of its own example.
    visible = causal & ((owners[None, :] == -1) | (owners[:, None] == owners[None, :]))
    mask = visible[None, None]
    if additive_mask:  # eager attention adds the mask to the scores
        mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    return {
        "input_ids": torch.tensor([input_ids]),
        "position_ids": torch.tensor([positions]),
        "attention_mask": mask,
        "predict_at": torch.tensor(predict_at),
        "targets": torch.tensor(targets),
        "target_replay": torch.tensor(target_replay, dtype=torch.bool),
        "replay_rows": torch.tensor(replay_rows, dtype=torch.long),
    }


class PackingCollator:
    """pack() for the Trainer: one row per batch, the shared prompt prefix computed once."""

    def __init__(self, additive_mask: bool = False):
        self.additive_mask = additive_mask

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return pack(features, additive_mask=self.additive_mask)
