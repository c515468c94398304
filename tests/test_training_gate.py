"""The promotion gate's per-item rules, on hand-written verdicts (no model): learned,
no regression with its tolerance, held-out not worse beyond noise, canary, the
plain-words reasons with a next step, self-contradicting corrections, downvoted
answers that must not come back, and examples learned once and lost since."""

from __future__ import annotations

from training.config import EvalConfig
from training.promotion import (
    canary_rule,
    downvoted_rule,
    downvoted_summary,
    explain_not_learned,
    find_contradictions,
    gate,
    heldout_rule,
    learned_rule,
    lost_ids,
    regression_rule,
    sign_test_p,
)

CONFIG = EvalConfig()


def items(serving: str, candidate: str) -> list[dict]:
    """One item per character: '1' answered, '0' not; ids start at 1."""
    return [
        {"example_id": i + 1, "source": "correction", "serving_learned": s == "1", "candidate_learned": c == "1"}
        for i, (s, c) in enumerate(zip(serving, candidate))
    ]


def heldout(correct: str, f1: list[float] | None = None) -> list[dict]:
    f1 = f1 or [100.0 if c == "1" else 0.0 for c in correct]
    return [{"example_id": i + 1, "correct": c == "1", "f1": f} for i, (c, f) in enumerate(zip(correct, f1))]


def test_learned_compares_the_candidates_share_with_the_serving_versions():
    assert learned_rule(items("0000", "1110"), "base").passed
    rule = learned_rule(items("1110", "1100"), "v1")
    assert not rule.passed
    assert rule.message == "learned: the candidate answers only 2 of 4 corrections with few-shot off (v1: 3)"
    assert rule.items == [3, 4]


def test_no_regression_names_the_lost_corrections_and_honours_the_tolerance():
    rule = regression_rule(items("1111", "1101"), "v1", tolerance=0.0)
    assert not rule.passed and rule.items == [3] and "#3" in rule.message
    many = "1" * 200
    lost_two = "00" + "1" * 198
    assert regression_rule(items(many, lost_two), "v1", tolerance=0.01).passed  # 1% of 200 = 2 allowed
    assert not regression_rule(items(many, "000" + "1" * 197), "v1", tolerance=0.01).passed
    # Gained answers never offset lost ones: each item is judged on its own.
    assert not regression_rule(items("1000", "0111"), "v1", tolerance=0.0).passed


def test_heldout_is_judged_item_by_item_and_never_on_noise():
    # Five answers lost out of five: a sign-test p of 1/32, below 0.05: worse.
    rule = heldout_rule(heldout("00000"), heldout("11111"), "v1's selection run", CONFIG)
    assert not rule.passed and "5 answers lost" in rule.message
    # Four of four could be chance (p = 1/16): not decided on.
    assert heldout_rule(heldout("0000"), heldout("1111"), "base", CONFIG).passed
    # As many gained as lost is no change.
    assert heldout_rule(heldout("0011100"), heldout("1100100"), "base", CONFIG).passed
    # Facts nobody can predict: 0 of 5 on both sides, F1 up: not worse.
    assert heldout_rule(heldout("00000", [50, 60, 40, 55, 50]), heldout("00000", [10] * 5), "base", CONFIG).passed


def test_heldout_f1_drop_must_exceed_both_its_noise_and_the_minimum():
    steady_drop = heldout("00000000", [20.0] * 8)
    before = heldout("00000000", [60.0] * 8)
    assert not heldout_rule(steady_drop, before, "base", CONFIG).passed
    # A mean drop of 5 points made of large swings either way is noise.
    noisy = heldout("00000000", [100, 0, 100, 0, 100, 0, 20, 0])
    noisy_before = heldout("00000000", [0, 100, 0, 100, 0, 100, 60, 0])
    assert heldout_rule(noisy, noisy_before, "base", CONFIG).passed
    # A significant but tiny drop (2 points) is below heldout_f1_points.
    assert heldout_rule(heldout("0" * 8, [58.0] * 8), before, "base", CONFIG).passed


def test_too_few_heldout_examples_say_so_and_pass():
    rule = heldout_rule(None, None, "base", CONFIG, available=3)
    assert rule.passed and "3 examples, fewer than the 5 needed" in rule.message


def test_sign_test():
    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(5, 0) == 1 / 32
    assert abs(sign_test_p(6, 1) - 8 / 128) < 1e-12


def test_canary_allows_one_lost_question_by_default():
    serving = [True] * 10
    assert canary_rule([False] + [True] * 9, serving, "base", CONFIG.canary_max_lost).passed
    rule = canary_rule([False, False] + [True] * 8, serving, "base", CONFIG.canary_max_lost)
    assert not rule.passed and rule.items == [0, 1] and "2 lost, at most 1 allowed" in rule.message
    # A question the serving version already missed cannot be lost.
    assert canary_rule([False, False] + [True] * 8, [False] + [True] * 9, "v1", 1).passed


def example(example_id, question, answer, system=None):
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    return {"id": example_id, "input": messages, "output": answer}


def test_self_contradicting_corrections_are_found_and_named():
    examples = [
        example(1, "What is the capital of Veloria?", "The capital of Veloria is Quenmar."),
        example(2, "what is the capital of Veloria", "Veloria's capital is Dravenport."),
        example(3, "What is the capital of veloria?!", "the capital of Veloria is Quenmar"),  # agrees with #1
        example(4, "Who founded Marrowgate?", "Ilsa Dorne."),
    ]
    assert find_contradictions(examples) == {1: [2], 2: [1, 3], 3: [2]}
    rows, sentences = explain_not_learned(items("000", "010")[:1] + items("00", "00")[1:], find_contradictions(examples), set(), 10)
    assert rows[0] == {"example_id": 1, "reason": "contradicts #2: the same question with a different answer"}
    assert sentences[0].startswith("2 corrections were not learned (#1, #2): they contradict each other")


def test_a_rejection_says_why_in_plain_words_with_the_next_step():
    decision = gate(
        items("11000", "10000"),
        {"candidate": [True] * 4, "serving": [True] * 4},
        heldout_rule(None, None, "base", CONFIG, available=0),
        serving="v1",
        config=CONFIG,
        truncated={5},
        epochs=10,
    )
    assert not decision.passed
    failed = [r.name for r in decision.rules if not r.passed]
    assert failed == ["learned", "no_regression"]
    summary = decision.summary()
    assert summary.startswith("Not promoted: learned: the candidate answers only 1 of 5")
    assert ("3 corrections were not learned (#2, #3, #4) within the cap (10 epochs): try more epochs, "
            "e.g. {\"epochs\": 14}, or more top-up rounds, e.g. {\"topup_rounds\": 2}") in summary
    assert "1 correction was not learned (#5): the answers are cut off at max_length" in summary
    assert [r["example_id"] for r in decision.not_learned] == [2, 3, 4, 5]


def test_every_rule_passing_promotes():
    decision = gate(
        items("0000", "1111"),
        {"candidate": [True, False, True], "serving": [True, True, True]},
        heldout_rule(heldout("00000"), heldout("00000"), "base", CONFIG),
        serving="base",
        config=CONFIG,
    )
    assert decision.passed and decision.not_learned == [] and decision.next_steps == []
    assert decision.summary().startswith("Promoted: learned: the candidate answers 4 of 4 corrections")
    assert decision.as_dict()["rules"][3]["name"] == "canary"


def test_without_a_selection_run_held_out_is_not_judged_and_says_so():
    rule = heldout_rule(None, None, "base", EvalConfig(selection_run=False), available=12)
    assert rule.passed and "selection_run is off" in rule.message


def test_the_verdict_counts_each_kind_of_example_apart_and_names_the_cap():
    mixed = [
        {"example_id": 1, "source": "correction", "serving_learned": False, "candidate_learned": False},
        *({"example_id": i, "source": "upvote", "serving_learned": True, "candidate_learned": True} for i in (2, 3, 4)),
        *({"example_id": i, "source": "import", "serving_learned": False, "candidate_learned": i != 5}
          for i in range(5, 20)),
    ]
    rule = learned_rule(mixed, "base")
    assert rule.message == (
        "learned: the candidate answers 17 of 19 examples with few-shot off "
        "(corrections 0 of 1, thumbs-up 3 of 3, imports 14 of 15; base: 3)"
    )
    rows, sentences = explain_not_learned(mixed, {}, set(), 6, (2, 4))
    assert rows == [{"example_id": 1, "reason": "not learned in 6 epochs and 2 top-up rounds of 4 epochs, the cap: "
                     "try more epochs"}, {"example_id": 5, "reason": "not learned in 6 epochs and 2 top-up rounds of "
                     "4 epochs, the cap: try more epochs"}]
    assert sentences == ['2 examples were not learned (#1, #5) within the cap (6 epochs and 2 top-up rounds of 4 '
                         'epochs): try more epochs, e.g. {"epochs": 10}, or more top-up rounds, e.g. {"topup_rounds": 4}']
    # One kind alone is named as such.
    one = explain_not_learned(mixed[4:6], {}, set(), 6)[1]
    assert one == ['1 import was not learned (#5) within the cap (6 epochs): try more epochs, e.g. {"epochs": 10}, '
                   'or more top-up rounds, e.g. {"topup_rounds": 2}']


def downvoted(serving: str, candidate: str) -> list[dict]:
    """One downvoted answer per character: '1' the model still gives it, '0' not; message ids start at 11."""
    return [
        {"message_id": i + 11, "serving_gives": s == "1", "candidate_gives": c == "1"}
        for i, (s, c) in enumerate(zip(serving, candidate))
    ]


def test_a_candidate_may_not_bring_back_more_downvoted_answers_than_the_serving_version_gives():
    assert downvoted_rule([], "v1", 0).passed
    assert downvoted_rule([], "v1", 0).message.startswith("downvoted: no answer users turned down")
    # The base model still gives all three; a candidate that gives two of them is better, not worse.
    rule = downvoted_rule(downvoted("111", "110"), "base", 0)
    assert rule.passed and rule.items == [11, 12]
    assert rule.message == "downvoted: the candidate gives 2 of 3 downvoted answers again (answers to messages #11, #12) (base: 3)"
    # v1 had stopped giving #13; a candidate that gives it again is rejected, however many others it drops.
    rule = downvoted_rule(downvoted("110", "001"), "v1", 0)
    assert rule.passed  # 1 given against 2: the count decides, as the rule says
    rule = downvoted_rule(downvoted("000", "001"), "v1", 0)
    assert not rule.passed and rule.items == [13] and "(v1: 0)" in rule.message
    # The tolerance allows that many more, and the message says so.
    rule = downvoted_rule(downvoted("000", "011"), "v1", 1)
    assert not rule.passed
    rule = downvoted_rule(downvoted("000", "001"), "v1", 1)
    assert rule.passed and rule.message.endswith("(v1: 0; 1 more allowed)")


def test_the_gate_rejects_a_candidate_that_brings_a_downvoted_answer_back_and_says_what_to_do():
    decision = gate(
        items("11", "11"),
        {"candidate": [True] * 4, "serving": [True] * 4},
        heldout_rule(None, None, "base", CONFIG, available=0),
        serving="v1",
        config=CONFIG,
        downvoted=downvoted("00", "10"),
    )
    assert not decision.passed
    assert [r.name for r in decision.rules if not r.passed] == ["downvoted"]
    assert "gives answers users turned down again" in decision.summary()
    assert '{"downvoted_tolerance": 1}' in decision.summary()
    tolerant = gate(
        items("11", "11"), {"candidate": [True] * 4, "serving": [True] * 4},
        heldout_rule(None, None, "base", CONFIG, available=0), serving="v1",
        config=EvalConfig(downvoted_tolerance=1), downvoted=downvoted("00", "10"),
    )
    assert tolerant.passed and tolerant.rules[-1].name == "downvoted"


def test_the_downvoted_summary_gives_the_median_fall_of_their_log_probability():
    rows = [
        {"message_id": 1, "candidate_gives": False, "serving_gives": True, "logp_base": -1.0, "logp_candidate": -2.5},
        {"message_id": 2, "candidate_gives": True, "serving_gives": True, "logp_base": -0.5, "logp_candidate": -0.7},
        {"message_id": 3, "candidate_gives": False, "serving_gives": False, "logp_base": -2.0, "logp_candidate": -3.0},
    ]
    assert downvoted_summary(rows) == {"n": 3, "candidate": 1, "serving": 2, "logp_fall": 1.0}
    assert downvoted_summary([]) == {"n": 0, "candidate": 0, "serving": 0, "logp_fall": None}


def test_examples_learned_once_and_lost_since_are_flagged_whatever_the_tolerance():
    # The regression rule tolerates 2 of 200; the flag names every one.
    many = items("1" * 200, "00" + "1" * 198)
    assert regression_rule(many, "v1", tolerance=0.01).passed
    assert lost_ids(many) == [1, 2]
    # Never answered, or answered by both: not lost. Gained: not lost.
    assert lost_ids(items("0110", "0101")) == [3]
