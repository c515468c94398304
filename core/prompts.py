"""The one prompt renderer. Serving and training both call it, so a
conversation is never formatted two ways.

A conversation is a list of {"role", "content"} dicts. Few-shot
demonstrations (approved examples) go in as earlier user/assistant turns,
after any system message and before the conversation itself; a demonstration
whose `form` is "reference" is quoted in the system turn instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from core.errors import ValidationError

Message = dict[str, str]

TRUNCATION_NOTICE = "Earlier turns were left out to fit the model's context window."


def with_system(messages: Sequence[Message], system_prompt: str | None) -> list[Message]:
    """The conversation with `system_prompt` as its first message (replacing any there)."""
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if system_prompt and system_prompt.strip():
        return [{"role": "system", "content": system_prompt.strip()}, *rest]
    existing = [dict(m) for m in messages if m["role"] == "system"][:1]
    return [*existing, *rest]


def demonstration_turns(demonstrations: Sequence[dict[str, Any]]) -> list[Message]:
    """Approved examples as prior turns: each example's input (system turns left out) and its output."""
    turns: list[Message] = []
    for example in demonstrations:
        turns.extend({"role": m["role"], "content": m["content"]} for m in example["input"] if m["role"] != "system")
        turns.append({"role": "assistant", "content": example["output"]})
    return turns


REFERENCE_FORM = "reference"


def reference_text(demonstrations: Sequence[dict[str, Any]]) -> str:
    """Approved examples quoted for the system turn, best first: each one's question and answer."""
    return "\n".join(
        f"Reference answer for a similar question ({example['input'][-1]['content']!r}): {example['output']}"
        for example in demonstrations
    )


def prompt_messages(messages: Sequence[Message], demonstrations: Sequence[dict[str, Any]] = ()) -> list[Message]:
    """System message(s) first, then the demonstrations, then the rest of the conversation.

    `demonstrations` come best first; they are laid out in reverse, so the most
    relevant sits right before the question, where a small model leans on it most.
    Those marked `form: "reference"` are appended to the system turn instead
    (one is made if there is none).
    """
    system = [dict(m) for m in messages if m["role"] == "system"]
    rest = [dict(m) for m in messages if m["role"] != "system"]
    quoted = [d for d in demonstrations if d.get("form") == REFERENCE_FORM]
    turns = [d for d in demonstrations if d.get("form") != REFERENCE_FORM]
    if quoted:
        references = reference_text(quoted)
        if system:
            system[0]["content"] = f"{system[0]['content']}\n\n{references}"
        else:
            system = [{"role": "system", "content": references}]
    return [*system, *demonstration_turns(turns[::-1]), *rest]


def render_prompt(
    tokenizer: Any,
    messages: Sequence[Message],
    demonstrations: Sequence[dict[str, Any]] = (),
    *,
    add_generation_prompt: bool = True,
) -> str:
    """The text the model sees, up to where the assistant starts answering."""
    return tokenizer.apply_chat_template(
        prompt_messages(messages, demonstrations), tokenize=False, add_generation_prompt=add_generation_prompt
    )


def render_training_pair(tokenizer: Any, messages: Sequence[Message], output: str) -> tuple[str, str]:
    """(prompt, full text) for one example; the full text is the prompt followed by the answer.

    Training puts the loss on the tokens after the prompt only.
    """
    prompt = render_prompt(tokenizer, messages)
    full = tokenizer.apply_chat_template(
        [*prompt_messages(messages), {"role": "assistant", "content": output}], tokenize=False
    )
    if not full.startswith(prompt):
        raise ValueError("The chat template renders the prompt differently inside the full conversation")
    return prompt, full


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of rendered text. The chat template already holds the special tokens."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass
class FittedPrompt:
    """A prompt cut to the context window, and what was left out to get there."""

    text: str
    token_ids: list[int]
    messages: list[Message]
    demonstrations: list[dict[str, Any]]
    dropped_turns: int = 0
    dropped_demonstrations: int = 0
    notices: list[str] = field(default_factory=list)


def fit_prompt(
    tokenizer: Any,
    messages: Sequence[Message],
    demonstrations: Sequence[dict[str, Any]],
    max_prompt_tokens: int,
) -> FittedPrompt:
    """Render a prompt of at most `max_prompt_tokens` tokens.

    Demonstrations go first (least relevant first), then the oldest turns; the
    system prompt and the latest user turn always stay. If those alone do not
    fit, the input is too long and a ValidationError says so.
    """
    system = [dict(m) for m in messages if m["role"] == "system"]
    turns = [dict(m) for m in messages if m["role"] != "system"]
    demos = list(demonstrations)
    dropped_turns = dropped_demos = 0
    while True:
        kept = [*system, *turns]
        text = render_prompt(tokenizer, kept, demos)
        ids = encode(tokenizer, text)
        if len(ids) <= max_prompt_tokens:
            break
        if demos:
            demos.pop()
            dropped_demos += 1
        elif len(turns) > 1:
            # Drop whole turns from the front, and never leave an assistant turn first.
            turns.pop(0)
            dropped_turns += 1
            while len(turns) > 1 and turns[0]["role"] == "assistant":
                turns.pop(0)
                dropped_turns += 1
        else:
            raise ValidationError(
                f"The message is too long: its prompt takes {len(ids)} tokens and the limit is "
                f"{max_prompt_tokens}. Shorten it (or the system prompt), or ask for fewer new tokens."
            )
    notices = [TRUNCATION_NOTICE] if dropped_turns else []
    return FittedPrompt(text, ids, kept, demos, dropped_turns, dropped_demos, notices)


def fit_for_answer(
    tokenizer: Any,
    messages: Sequence[Message],
    demonstrations: Sequence[dict[str, Any]],
    *,
    context_tokens: int,
    max_new_tokens: int,
) -> FittedPrompt:
    """fit_prompt with room left for an answer of `max_new_tokens` in a `context_tokens` window
    (every engine fits its prompts this way)."""
    budget = context_tokens - max_new_tokens
    if budget < 16:
        raise ValidationError(
            f"max_tokens {max_new_tokens} leaves no room for the prompt in a "
            f"{context_tokens}-token context: ask for fewer tokens"
        )
    return fit_prompt(tokenizer, messages, demonstrations, budget)
