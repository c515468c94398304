"""Whether a candidate may replace the serving version, judged item by item, and the
steps that follow: promote or reject, activate, roll back.

The gate has five rules (docs/training.md says why each is shaped as it is):
- learned: the candidate answers, with few-shot off, at least as many of the
  approved examples (corrections, thumbs-up, imports, each counted apart) as the
  serving version does; the job tops the candidate up on what it missed first
  (TrainConfig.topup_rounds), so what is left was not learnable within that cap;
- no regression: an example the serving version answers stays answered (a
  named, configurable tolerance: EvalConfig.regression_tolerance);
- held-out: on examples neither model trained on, the candidate is not worse
  beyond noise, item by item (a sign test over answers lost and gained, and a
  paired test of token-F1); a loss difference is reported but never decided on;
- canary: at most EvalConfig.canary_max_lost general questions lost;
- downvoted: the candidate gives no more of the answers users downvoted (and
  nobody corrected) than the serving version gives, up to
  EvalConfig.downvoted_tolerance: a retrain never brings one back.

Every rule is a pure function of per-item verdicts, so `launch.py train`,
`POST /api/train`, the Admin tab and the retrain policy (all one worker) decide
the same way, and the rules are unit-tested without a model.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from statistics import NormalDist, mean, median, stdev
from typing import Any

from core.errors import ConflictError, ValidationError
from storage.vocabulary import BASE_VERSION as BASE
from storage.vocabulary import VersionStatus
from training import registry
from training.config import EvalConfig
from training.evaluate import normalise_answer

log = logging.getLogger(__name__)

@dataclass
class Rule:
    """One rule's outcome: passed or not, a sentence for a person, and the items behind it."""

    name: str
    passed: bool
    message: str
    items: list[Any] = field(default_factory=list)


@dataclass
class Decision:
    """The gate's verdict: promote or not, the reasons in plain words, and the next step when rejected."""

    passed: bool
    rules: list[Rule]
    not_learned: list[dict[str, Any]] = field(default_factory=list)  # {"example_id", "reason"}
    next_steps: list[str] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        return [r.message for r in self.rules]

    def summary(self) -> str:
        """One paragraph: the verdict, the failed rules first, then the next step."""
        failed = [r.message for r in self.rules if not r.passed]
        if self.passed:
            text = "Promoted: " + "; ".join(self.reasons)
        else:
            text = "Not promoted: " + "; ".join(failed)
        if self.next_steps:
            text += ". Next: " + " ".join(self.next_steps)
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reasons": self.reasons,
            "rules": [asdict(r) for r in self.rules],
            "not_learned": self.not_learned,
            "next_steps": self.next_steps,
            "summary": self.summary(),
        }


# -- self-contradicting corrections -------------------------------------------


def question_key(messages: Sequence[dict[str, str]]) -> str:
    """A conversation with case, punctuation and articles ignored: two inputs that ask the same thing."""
    return " | ".join(f"{m['role']}:{normalise_answer(m['content'])}" for m in messages if m["role"] != "system")


def find_contradictions(examples: Sequence[dict[str, Any]]) -> dict[int, list[int]]:
    """Approved examples that ask the same question with different answers: {id: [the ids it contradicts]}.

    The store keeps one approved answer per exact input (a newer one supersedes
    the older), so these differ in ways the store keeps apart (punctuation, a
    system prompt) while no model can give both answers.
    """
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in examples:
        groups[question_key(e["input"])].append(e)
    clashes: dict[int, list[int]] = {}
    for group in groups.values():
        answers = {normalise_answer(e["output"]) for e in group}
        if len(answers) > 1:
            for e in group:
                clashes[e["id"]] = sorted(
                    o["id"] for o in group if normalise_answer(o["output"]) != normalise_answer(e["output"])
                )
    return clashes


def _ids(ids: Sequence[int], most: int = 8) -> str:
    shown = ", ".join(f"#{i}" for i in list(ids)[:most])
    return shown + (f" and {len(ids) - most} more" if len(ids) > most else "")


SOURCE_NAMES = {
    "correction": ("correction", "corrections"),
    "upvote": ("thumbs-up", "thumbs-up"),
    "import": ("import", "imports"),
    "admin": ("admin example", "admin examples"),
    "seed": ("seed example", "seed examples"),
}


def examples_word(n: int, source: str | None = None) -> str:
    """'1 correction', '3 thumbs-up', '15 imports', '19 examples': what a count of approved examples counts."""
    singular, plural = SOURCE_NAMES.get(source or "", ("example", "examples"))
    return f"{n} {singular if n == 1 else plural}"


def learned_by_source(items: Sequence[dict[str, Any]]) -> str:
    """'corrections 1 of 1, thumbs-up 3 of 3, imports 14 of 15': the candidate's count for each kind apart."""
    kinds: dict[str, list[bool]] = defaultdict(list)
    for item in items:
        kinds[item.get("source") or "other"].append(bool(item["candidate_learned"]))
    order = [*SOURCE_NAMES, "other"]
    return ", ".join(
        f"{SOURCE_NAMES.get(kind, ('other', 'other'))[1]} {sum(hits)} of {len(hits)}"
        for kind, hits in sorted(kinds.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))
    )


def explain_not_learned(
    items: Sequence[dict[str, Any]],
    contradictions: dict[int, list[int]],
    truncated: set[int],
    epochs: float,
    topup: tuple[int, float] = (0, 0.0),
) -> tuple[list[dict[str, Any]], list[str]]:
    """Why each approved example the candidate does not answer was not learned, and one sentence per cause.
    `topup`: the top-up rounds run after the first training run, and the epochs of each.

    Returns ([{"example_id", "reason"}], [sentences]).
    """
    rounds, topup_epochs = topup

    def passes(n: float) -> str:
        return f"{n:g} epoch{'' if n == 1 else 's'}"

    trained = passes(epochs) + (f" and {rounds} top-up round{'s' if rounds != 1 else ''} of {passes(topup_epochs)}"
                                if rounds else "")
    causes: dict[str, list[int]] = defaultdict(list)
    rows = []
    for item in items:
        if item["candidate_learned"]:
            continue
        example_id = item["example_id"]
        if example_id in contradictions:
            others = contradictions[example_id]
            reason = f"contradicts {_ids(others)}: the same question with a different answer"
            causes["contradict"].append(example_id)
        elif example_id in truncated:
            reason = "the answer does not fit in max_length tokens: raise max_length or shorten it"
            causes["truncated"].append(example_id)
        else:
            reason = f"not learned in {trained}, the cap: try more epochs"
            causes["epochs"].append(example_id)
        rows.append({"example_id": example_id, "reason": reason})
    sentences = []
    more = max(epochs + 4, math.ceil(epochs * 1.4))
    source_of = {i["example_id"]: i.get("source") for i in items}
    for cause, ids in causes.items():
        kinds = {source_of[i] for i in ids}
        counted = examples_word(len(ids), kinds.pop() if len(kinds) == 1 else None)
        head = f"{counted} {'were' if len(ids) > 1 else 'was'} not learned ({_ids(ids)})"
        if cause == "contradict":
            sentences.append(
                f"{head}: they contradict each other (the same question with different answers); "
                "keep one answer and reject the others in the Admin tab's Examples"
            )
        elif cause == "truncated":
            sentences.append(f"{head}: the answers are cut off at max_length; raise it, e.g. {{\"max_length\": 1024}}")
        else:
            sentences.append(
                f"{head} within the cap ({trained}): try more epochs, e.g. {{\"epochs\": {more:g}}}, "
                f"or more top-up rounds, e.g. {{\"topup_rounds\": {rounds + 2}}}"
            )
    return rows, sentences


# -- the rules ----------------------------------------------------------------


def learned_rule(items: Sequence[dict[str, Any]], serving: str) -> Rule:
    """The candidate answers at least as many approved examples as the serving version."""
    n = len(items)
    cand = sum(bool(i["candidate_learned"]) for i in items)
    serv = sum(bool(i["serving_learned"]) for i in items)
    passed = cand >= serv
    verb = "answers" if passed else "answers only"
    sources = {i.get("source") for i in items}
    if len(sources) == 1:  # one kind: name it ("3 of 4 corrections")
        counted, apart = examples_word(n, next(iter(sources))), ""
    else:  # each kind apart: "3 of 19 examples (corrections 1 of 1, thumbs-up 2 of 3, imports 0 of 15; ..."
        counted, apart = examples_word(n), learned_by_source(items) + "; "
    message = f"learned: the candidate {verb} {cand} of {counted} with few-shot off ({apart}{serving}: {serv})"
    return Rule("learned", passed, message, [i["example_id"] for i in items if not i["candidate_learned"]])


def regression_rule(items: Sequence[dict[str, Any]], serving: str, tolerance: float) -> Rule:
    """An example the serving version answers stays answered (up to `tolerance`, a share, rounded down)."""
    answered = [i for i in items if i["serving_learned"]]
    lost = [i["example_id"] for i in answered if not i["candidate_learned"]]
    allowed = math.floor(tolerance * len(answered) + 1e-9)
    passed = len(lost) <= allowed
    if not lost:
        message = f"no regression: every approved example {serving} answers ({len(answered)}) is still answered"
    else:
        message = (
            f"{'regression' if not passed else 'tolerated regression'}: {len(lost)} of the {len(answered)} examples "
            f"{serving} answers are lost ({_ids(lost)}; {allowed} allowed)"
        )
    return Rule("no_regression", passed, message, lost)


def sign_test_p(lost: int, gained: int) -> float:
    """One-sided p-value of losing `lost` or more of `lost + gained` changed items if changes went either way."""
    n = lost + gained
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(lost, n + 1)) / 2**n


def heldout_rule(
    candidate: Sequence[dict[str, Any]] | None,
    reference: Sequence[dict[str, Any]] | None,
    reference_name: str,
    config: EvalConfig,
    *,
    available: int = 0,
) -> Rule:
    """Not worse than the reference on held-out examples beyond noise, item by item.

    Both lists hold {"example_id", "correct", "f1"} for examples neither model
    trained on. Worse means: more answers lost than gained with a one-sided
    sign-test p below heldout_alpha, or a mean token-F1 drop larger than
    heldout_f1_points and than its paired noise (z(alpha) standard errors).
    """
    if candidate is not None and reference is not None:
        known = {r["example_id"] for r in reference}
        available = sum(c["example_id"] in known for c in candidate)
    if not config.selection_run:
        return Rule("heldout", True, "held-out: not judged (selection_run is off); judged on corrections and canary only")
    if candidate is None or reference is None or available < config.heldout_min_items:
        return Rule(
            "heldout",
            True,
            f"held-out: {available} example{'s' if available != 1 else ''}, fewer than the "
            f"{config.heldout_min_items} needed to tell harm from noise; judged on corrections and canary only",
        )
    ref = {r["example_id"]: r for r in reference}
    pairs = [(c, ref[c["example_id"]]) for c in candidate if c["example_id"] in ref]
    n = len(pairs)
    lost = [c["example_id"] for c, r in pairs if r["correct"] and not c["correct"]]
    gained = [c["example_id"] for c, r in pairs if c["correct"] and not r["correct"]]
    p = sign_test_p(len(lost), len(gained))
    worse_answers = len(lost) > len(gained) and p < config.heldout_alpha
    diffs = [c["f1"] - r["f1"] for c, r in pairs]
    mean_diff = mean(diffs) if diffs else 0.0
    se = stdev(diffs) / math.sqrt(n) if n > 1 else math.inf
    z = NormalDist().inv_cdf(1 - config.heldout_alpha)
    worse_f1 = mean_diff < -config.heldout_f1_points and -mean_diff > z * se
    cand_right = sum(bool(c["correct"]) for c, _ in pairs)
    ref_right = sum(bool(r["correct"]) for _, r in pairs)
    f1_c = mean(c["f1"] for c, _ in pairs) if pairs else 0.0
    f1_r = mean(r["f1"] for _, r in pairs) if pairs else 0.0
    stats = (
        f"{cand_right} of {n} answered ({reference_name} without them: {ref_right}), "
        f"token-F1 {f1_r:.1f} → {f1_c:.1f}"
    )
    if worse_answers:
        message = (
            f"held-out: worse beyond noise, {len(lost)} answers lost ({_ids(lost)}) against {len(gained)} gained "
            f"(sign test p={p:.3f}); {stats}"
        )
    elif worse_f1:
        message = f"held-out: token-F1 fell by {-mean_diff:.1f} points (noise ±{z * se:.1f}); {stats}"
    else:
        message = f"held-out: not worse beyond noise; {stats}"
    return Rule("heldout", not (worse_answers or worse_f1), message, lost)


def canary_rule(candidate_hits: Sequence[bool], serving_hits: Sequence[bool], serving: str, max_lost: int) -> Rule:
    """At most `max_lost` general questions that the serving version answers are lost."""
    lost = [i for i, (c, s) in enumerate(zip(candidate_hits, serving_hits)) if s and not c]
    passed = len(lost) <= max_lost
    n, kept = len(serving_hits), sum(candidate_hits)
    message = (
        f"canary: {kept} of {n} general questions answered ({serving}: {sum(serving_hits)}); "
        f"{len(lost)} lost, at most {max_lost} allowed"
    )
    return Rule("canary", passed, message, lost)


def gate(
    items: Sequence[dict[str, Any]],
    canary: dict[str, Sequence[bool]],
    heldout: Rule,
    *,
    serving: str,
    config: EvalConfig,
    contradictions: dict[int, list[int]] | None = None,
    truncated: set[int] | None = None,
    epochs: float = 10,
    topup: tuple[int, float] = (0, 0.0),
    downvoted: Sequence[dict[str, Any]] = (),
) -> Decision:
    """Apply the five rules to per-item verdicts; the candidate is promoted only if all pass.

    `items`: one per approved example, with candidate_learned / serving_learned (and its `source`);
    `topup`: (top-up rounds run, epochs each), for the reasons given for what was not learned;
    `canary`: {"candidate": hits, "serving": hits}; `heldout`: heldout_rule's outcome;
    `downvoted`: one per downvoted answer, with candidate_gives / serving_gives.
    """
    rules = [
        learned_rule(items, serving),
        regression_rule(items, serving, config.regression_tolerance),
        heldout,
        canary_rule(canary["candidate"], canary["serving"], serving, config.canary_max_lost),
        downvoted_rule(downvoted, serving, config.downvoted_tolerance),
    ]
    not_learned, sentences = explain_not_learned(items, contradictions or {}, truncated or set(), epochs, topup)
    passed = all(r.passed for r in rules)
    steps = list(sentences)
    failed = {r.name for r in rules if not r.passed}
    if "heldout" in failed:
        steps.append(
            "The new examples change answers to questions they do not cover: review the newest examples "
            "(the held-out items named above show which answers changed)."
        )
    if "canary" in failed:
        steps.append(
            "The candidate forgot general knowledge: try fewer epochs or a lower learning rate, "
            'e.g. {"learning_rate": 0.0005}, or more replay, e.g. {"replay_kl_weight": 5}.'
        )
    if "downvoted" in failed:
        steps.append(
            "The candidate gives answers users turned down again: correct them in the chat or the Admin tab's "
            'Feedback (a correction teaches what to say instead), or allow some, e.g. {"downvoted_tolerance": 1}.'
        )
    return Decision(passed, rules, not_learned, steps)


def downvoted_rule(items: Sequence[dict[str, Any]], serving: str, tolerance: int) -> Rule:
    """The candidate gives no more downvoted answers (first sentence unchanged, greedy, few-shot off) than the
    serving version, plus `tolerance`. `items`: one per downvoted answer, with candidate_gives / serving_gives."""
    if not items:
        return Rule("downvoted", True, "downvoted: no answer users turned down (and nobody corrected) to check")
    given = [i["message_id"] for i in items if i["candidate_gives"]]
    serv = sum(bool(i["serving_gives"]) for i in items)
    passed = len(given) <= serv + tolerance
    shown = f" (answers to messages {_ids(given)})" if given else ""
    allowed = f"; {tolerance} more allowed" if tolerance else ""
    message = (
        f"downvoted: the candidate gives {len(given)} of {len(items)} downvoted answers again{shown} "
        f"({serving}: {serv}{allowed})"
    )
    return Rule("downvoted", passed, message, given)


def downvoted_summary(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Headline numbers of the downvoted answers: how many, given again by the candidate and by the serving
    version, and the median fall of their log-probability per token from the base model to the candidate."""
    falls = [i["logp_base"] - i["logp_candidate"] for i in items
             if i.get("logp_base") is not None and i.get("logp_candidate") is not None]
    return {
        "n": len(items),
        "candidate": sum(bool(i["candidate_gives"]) for i in items),
        "serving": sum(bool(i["serving_gives"]) for i in items),
        "logp_fall": round(median(falls), 3) if falls else None,
    }


def lost_ids(items: Sequence[dict[str, Any]]) -> list[int]:
    """The approved examples the version judged against answered and the candidate does not: learned once, lost
    since. The regression rule decides on them (with its tolerance); reports flag every one, whatever the
    objective that trained the candidate, so none is lost quietly."""
    return [i["example_id"] for i in items if i.get("serving_learned") and not i.get("candidate_learned")]


# -- promote, reject, activate, roll back ---------------------------------------


def promote(store: Any, version: str) -> None:
    """Serve `version` now (the server's watcher swaps its adapter in)."""
    store.activate_version(version)
    log.info("Promoted %s", version)


def reject(store: Any, version: str) -> None:
    """Keep `version` on disk as rejected; an admin may still activate it."""
    store.update_model_version(version, status=VersionStatus.REJECTED)
    log.info("Rejected %s", version)


def activate(store: Any, version: str | None) -> dict[str, Any]:
    """Serve `version` ('base' or None: the base model). Any version may be activated, rejected ones too."""
    previous = store.active_version()
    if version in (None, "", BASE):
        store.activate_version(None)
        version = BASE
    else:
        row = store.get_model_version(version)
        if not registry.adapter_exists(row):
            raise ValidationError(f"The adapter files of {version} are missing from {row['path']}: retrain instead")
        store.activate_version(version)
    log.info("Activated %s", version)
    return {"active": version, "previous": previous["version"] if previous else BASE}


def rollback(store: Any) -> dict[str, Any]:
    """Serve the version the active one was trained to replace (its parent; the base model if none)."""
    current = store.active_version()
    if current is None:
        raise ConflictError("The base model is serving already; there is nothing to roll back to")
    target = current.get("parent_version")
    while target:  # skip ancestors whose files are gone
        row = store.get_model_version(target)
        if registry.adapter_exists(row):
            break
        target = row.get("parent_version")
    return activate(store, target or BASE)
