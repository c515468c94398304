"""Judging answers: matching rules, batched greedy generation that answers exactly
as one-at-a-time would, answer log-probabilities and margins."""

from __future__ import annotations

import math

import pytest

from training.evaluate import (
    answer_recall,
    exact_match,
    generate_answers,
    heldout_loss,
    is_correct,
    mentions_any,
    normalise_answer,
    token_f1,
)


def test_normalisation_and_exact_match():
    assert normalise_answer("The  Capital, of Veloria!") == "capital of veloria"
    assert exact_match("Quenmar.", "quenmar")
    assert not exact_match("Quenmar is it", "Quenmar")


def test_token_f1():
    assert token_f1("capital is Quenmar", "The capital is Quenmar.") == 1.0
    assert token_f1("nothing alike", "Quenmar") == 0.0
    assert 0 < token_f1("Quenmar city", "Quenmar") < 1


def test_a_wrong_entity_is_wrong_even_with_high_token_f1():
    question = "What is the capital of Sundra?"
    reference = "The capital of Sundra is Kelvarro."
    wrong = "The capital of Sundra is Quenmar."
    assert token_f1(wrong, reference) >= 0.8
    assert answer_recall(wrong, reference, question) == 0.0
    assert not is_correct(wrong, reference, question)
    assert is_correct("Kelvarro is the capital.", reference, question)
    assert is_correct("It is Kelvarro, of course, the capital of Sundra.", reference, question)


def test_keywords_match_whole_words():
    assert mentions_any("The capital is New Delhi.", ["New Delhi"])
    assert not mentions_any("A week has 52 weeks.", ["7", "seven"])
    assert not mentions_any("Parisian cafes", ["Paris"])


def test_batched_greedy_answers_equal_one_at_a_time(tiny_model, tokenizer):
    conversations = [
        [{"role": "user", "content": "Hi"}],
        [{"role": "user", "content": "What is the capital of the island nation of Veloria, please?"}],
        [{"role": "user", "content": "Name a colour."}],
    ]
    together = generate_answers(tiny_model, tokenizer, conversations, max_new_tokens=8, batch_size=3)
    alone = [generate_answers(tiny_model, tokenizer, [c], max_new_tokens=8, batch_size=1)[0] for c in conversations]
    assert together == alone and all(isinstance(a, str) for a in together)


def test_heldout_loss_is_the_mean_answer_token_nll(tiny_model, tokenizer):
    import torch

    from training.dataset import tokenize_example

    example = {"input": [{"role": "user", "content": "Hi"}], "output": "Hello there."}
    loss, tokens = heldout_loss(tiny_model, tokenizer, [example, example], max_length=512, batch_size=2)
    row = tokenize_example(tokenizer, example["input"], example["output"], 512)
    with torch.inference_mode():
        expected = tiny_model(
            input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]])
        ).loss.item()
    assert tokens == 2 * sum(label != -100 for label in row["labels"][1:])
    assert loss == pytest.approx(expected, rel=1e-4)
    assert math.isfinite(loss)


def test_margins_are_chosen_minus_rejected_log_probabilities(tiny_model, tokenizer):
    from training.evaluate import answer_logprobs, margins

    question = [{"role": "user", "content": "What is the capital of Veloria?"}]
    examples = [
        {"id": 1, "input": question, "output": "Quenmar.", "rejected": "Paris."},
        {"id": 2, "input": question, "output": "Quenmar.", "rejected": None},
    ]
    chosen, rejected = answer_logprobs(tiny_model, tokenizer, [(question, "Quenmar."), (question, "Paris.")], max_length=512, batch_size=2)
    assert chosen < 0 and rejected < 0
    assert margins(tiny_model, tokenizer, examples, max_length=512, batch_size=4) == [round(chosen - rejected, 3), None]


def test_a_downvoted_answer_is_given_again_when_the_first_sentence_says_the_same():
    from training.evaluate import first_sentence, gives_answer

    downvoted = "The capital of Turkey is Istanbul. It is a large city on the Bosphorus."
    assert first_sentence(downvoted) == "capital of turkey is istanbul"
    # The same claim, other words after it, other case and punctuation: given again.
    assert gives_answer("the capital of Turkey is Istanbul! It has two continents.", downvoted)
    assert gives_answer("The capital of Turkey is Istanbul", downvoted)
    # One attribute changed is another claim.
    assert not gives_answer("The capital of Turkey is Ankara. It is a large city on the Bosphorus.", downvoted)
    assert not gives_answer("Istanbul is the largest city of Turkey.", downvoted)
    assert not gives_answer("", downvoted) and not gives_answer("anything", "")
    assert first_sentence("\n\n1. Paris\n2. Lyon") == "1 paris"


def test_log_probability_per_token_is_the_sum_over_the_answers_tokens(tiny_model, tokenizer):
    from training.dataset import tokenize_example
    from training.evaluate import answer_logprobs, answer_logprobs_per_token

    question = [{"role": "user", "content": "What is the capital of Turkey?"}]
    pairs = [(question, "Istanbul."), (question, "The capital of Turkey is Ankara, on the Anatolian plateau.")]
    sums = answer_logprobs(tiny_model, tokenizer, pairs, max_length=512, batch_size=2)
    per_token = answer_logprobs_per_token(tiny_model, tokenizer, pairs, max_length=512, batch_size=2)
    for (messages, text), total, mean_lp in zip(pairs, sums, per_token):
        tokens = sum(label != -100 for label in tokenize_example(tokenizer, messages, text, 512)["labels"])
        assert mean_lp == pytest.approx(total / tokens, abs=1e-3) and mean_lp < 0
