"""The one prompt renderer: demonstrations, training pairs, fitting the context window."""

import pytest

from core.errors import ValidationError
from core.prompts import encode, fit_prompt, prompt_messages, render_prompt, render_training_pair

DEMO = {"id": 7, "input": [{"role": "user", "content": "Office hours?"}], "output": "9 to 5."}


def test_demonstrations_go_after_the_system_prompt_and_before_the_conversation():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "When do you open?"}]
    assert prompt_messages(messages, [DEMO]) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Office hours?"},
        {"role": "assistant", "content": "9 to 5."},
        {"role": "user", "content": "When do you open?"},
    ]


def test_the_most_relevant_demonstration_sits_next_to_the_question():
    second = {"id": 8, "input": [{"role": "user", "content": "Parking?"}], "output": "Lot B."}
    laid_out = prompt_messages([{"role": "user", "content": "When do you open?"}], [DEMO, second])
    assert [m["content"] for m in laid_out] == ["Parking?", "Lot B.", "Office hours?", "9 to 5.", "When do you open?"]


def test_training_pair_prompt_is_a_prefix_of_the_full_text(tokenizer):
    messages = [{"role": "user", "content": "Office hours?"}]
    prompt, full = render_training_pair(tokenizer, messages, "9 to 5.")
    assert prompt == render_prompt(tokenizer, messages)
    assert full.startswith(prompt) and full[len(prompt):].startswith("9 to 5.")
    assert encode(tokenizer, full)[: len(encode(tokenizer, prompt))] == encode(tokenizer, prompt)


def test_fit_drops_demonstrations_first_then_old_turns_with_a_notice(tokenizer):
    long_turns = []
    for i in range(12):
        long_turns += [{"role": "user", "content": f"Question {i} " + "word " * 40},
                       {"role": "assistant", "content": f"Answer {i} " + "word " * 40}]
    messages = [{"role": "system", "content": "Be brief."}, *long_turns, {"role": "user", "content": "Last one?"}]
    fitted = fit_prompt(tokenizer, messages, [DEMO], max_prompt_tokens=300)
    assert len(fitted.token_ids) <= 300
    assert fitted.dropped_demonstrations == 1 and fitted.demonstrations == []
    assert fitted.dropped_turns > 0 and fitted.notices
    assert fitted.messages[0]["role"] == "system" and fitted.messages[-1]["content"] == "Last one?"
    assert fitted.messages[1]["role"] == "user"  # never starts on an assistant turn


def test_fit_keeps_everything_when_it_fits(tokenizer):
    messages = [{"role": "user", "content": "Hi"}]
    fitted = fit_prompt(tokenizer, messages, [DEMO], max_prompt_tokens=500)
    assert fitted.demonstrations == [DEMO] and fitted.dropped_turns == 0 and not fitted.notices


def test_a_single_message_too_long_for_the_window_is_a_clear_error(tokenizer):
    with pytest.raises(ValidationError, match="too long"):
        fit_prompt(tokenizer, [{"role": "user", "content": "word " * 500}], [], max_prompt_tokens=100)
