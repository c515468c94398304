"""The training job as a recipe: prepare → train → evaluate → top up → decide → record.

Select on held-out, then refit on everything (docs/training.md has the
measurements behind this design):

1. prepare: every approved example is in the plan; the test-split ones are
   held out of the *selection run* only.
2. train the selection run without them and judge it on them against a
   reference that did not train on them either (the serving version's own
   selection run, or the base model): does this recipe on this data harm
   answers to questions it never saw? Skipped below EvalConfig.heldout_min_items
   held-out examples, where no count of lost items is distinguishable from noise.
3. train the version to serve on *every* approved example with the same
   recipe, and evaluate it item by item: every approved example (answered
   with few-shot off? margin?) and the canary, beside the serving version and
   the base model.
4. top up: train the same adapter again on the examples it missed, and check
   again, up to TrainConfig.topup_rounds times; the best round is kept.
   Every evaluation also asks, of each answer users downvoted and nobody
   corrected, whether the candidate still gives it (and how likely it finds it).
5. decide with training/promotion.gate; 6. record the version and promote or
   reject it.

Each step is a function of its inputs: the worker (training/worker.py) runs
them in order and reports progress; only `prepare` reads the store and only
`record` writes it, so a multi-process launcher can run train/evaluate on
every process and record on the main one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage.examples import input_key, normalise_text
from storage.vocabulary import JobStatus, Split
from training import augment, promotion, registry
from training.config import EvalConfig, TrainConfig
from training.dataset import is_truncated, load_replay, training_examples
from training.evaluate import (
    answer_logprobs_per_token,
    canary_answers,
    heldout_loss,
    judge_answers,
    judge_downvoted,
    load_canary,
    margins,
)
from training.promotion import BASE, Decision

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """What one job trains on and judges with, fixed before any model loads."""

    config: TrainConfig
    eval_config: EvalConfig
    base_model: str | None
    examples: list[dict[str, Any]]  # every approved example: the version that serves trains on all of them
    heldout: list[dict[str, Any]]  # the test-split ones: held out of the selection run
    replay: list[dict[str, Any]]
    canary: list[dict[str, Any]]
    active_name: str  # the version serving when the job started
    serving: dict[str, Any] | None  # its record when its adapter is on disk (None: compare with the base model)
    contradictions: dict[int, list[int]]
    heldout_reference: dict[int, dict[str, Any]] = field(default_factory=dict)  # serving's selection verdicts
    # Answers users turned down and nobody corrected (Store.downvoted_answers): none may come back.
    downvoted: list[dict[str, Any]] = field(default_factory=list)

    @property
    def serving_name(self) -> str:
        return self.serving["version"] if self.serving else BASE

    @property
    def selection_run(self) -> bool:
        """Whether a selection run is made: enough held-out examples to decide on, and something else to train on."""
        return (
            self.eval_config.selection_run
            and len(self.heldout) >= self.eval_config.heldout_min_items
            and len(self.examples) > len(self.heldout)
        )


def prepare(store: Any, params: dict[str, Any]) -> Plan:
    """Read the job's settings and the approved examples; raise ValueError when there is nothing to train on."""
    config = TrainConfig(**params.get("config", {}))  # checked as it is made (a ConfigError names each problem)
    eval_config = EvalConfig(**params.get("eval", {}))
    examples = training_examples(store)
    if not examples:
        raise ValueError("No approved examples to train on: correct or approve some answers first")
    heldout = [e for e in examples if e["split"] == Split.TEST][-eval_config.max_heldout :]
    active = store.active_version()
    serving = active if active is not None and registry.adapter_exists(active) else None
    if active is not None and serving is None:
        log.warning("The active version %s has no adapter on disk; comparing with the base model", active["version"])
    reference = {}
    if serving is not None:
        # Verdicts of the serving version's selection run, which did not train on its held-out examples;
        # valid for an example whose reference answer has not changed since.
        stored = ((serving.get("metrics") or {}).get("heldout_selection") or {}).get("items") or []
        outputs = {e["id"]: e["output"] for e in heldout}
        reference = {r["example_id"]: r for r in stored if outputs.get(r["example_id"]) == r.get("reference")}
    return Plan(
        config=config,
        eval_config=eval_config,
        base_model=params.get("base_model"),
        examples=examples,
        heldout=heldout,
        replay=load_replay(config.replay_examples),
        canary=load_canary(),
        active_name=active["version"] if active else BASE,
        serving=serving,
        contradictions=promotion.find_contradictions(examples),
        heldout_reference=reference,
        downvoted=downvoted_answers(store, examples, eval_config.max_downvoted),
    )


def downvoted_answers(store: Any, examples: Sequence[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """The downvoted answers a candidate is checked against, less any an approved example gives to the same
    question (an admin approved it: the examples decide)."""
    if limit <= 0:
        return []
    approved = {(e["input_key"], normalise_text(e["output"]).casefold()) for e in examples if e.get("input_key")}
    return [
        d for d in store.downvoted_answers(limit=limit)
        if (input_key(d["input"]), normalise_text(d["answer"]).casefold()) not in approved
    ]


def train(model: Any, tokenizer: Any, plan: Plan, examples: Sequence[dict[str, Any]], callbacks: Sequence[Any] = ()) -> tuple[Any, Any]:
    """A fresh LoRA adapter on `examples` plus the replay rows, with the plan's recipe: (peft model, TrainResult)."""
    from training.finetune import train_adapter

    return train_adapter(model, tokenizer, training_rows(plan, examples), plan.config, callbacks=callbacks)


def unlearned_ids(plan: Plan, evaluation: dict[str, Any], truncated: set[int]) -> list[int]:
    """The approved examples the candidate does not answer yet that more training can teach: neither
    contradicted by another example nor cut off at max_length (no number of epochs fixes those)."""
    return [
        i["example_id"] for i in evaluation["items"]
        if not i["candidate_learned"] and i["example_id"] not in plan.contradictions and i["example_id"] not in truncated
    ]


def topup(peft_model: Any, tokenizer: Any, plan: Plan, ids: Sequence[int], callbacks: Sequence[Any] = ()) -> tuple[Any, Any]:
    """Train the candidate's adapter further, for TrainConfig.topup_epochs, on the examples `ids` with all their
    wordings, every other approved example once as asked (so that what it learned stays), and the replay rows:
    (peft model, TrainResult). A second pass on what the first missed costs a fraction of training everything
    for more epochs."""
    from training.finetune import train_adapter

    wanted = set(ids)
    rows = training_rows(plan, [e for e in plan.examples if e["id"] in wanted]) + [
        {"input": e["input"], "output": e["output"], "id": e.get("id"), "split": e.get("split")}
        for e in plan.examples if e["id"] not in wanted
    ]
    c = plan.config
    # max_steps (smoke tests, benchmarks) caps each round as it caps the first run.
    config = c.model_copy(update={"epochs": c.topup_epochs, "learning_rate": c.topup_learning_rate})
    return train_adapter(peft_model, tokenizer, rows, config, callbacks=callbacks, adapter=peft_model)


def training_rows(plan: Plan, examples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows one run trains on: `examples` with their extra wordings (training/augment.py), the rows that
    answer "not known" for an uncorrected attribute of a corrected entity (TrainConfig.unknown_attributes;
    every example of the plan counts as covering), then the replay rows with their wordings. Only the
    examples handed in are reworded, so the selection run, handed the train split alone, never sees a
    wording of a held-out example."""
    c = plan.config
    own = [{"input": e["input"], "output": e["output"], "id": e.get("id"), "split": e.get("split")} for e in examples]
    return (
        augment.expand(own, rewordings_per_example=c.rewordings, statements_per_example=c.statement_prompts)
        + augment.unknown_rows(own, c.unknown_attributes, also_covered_by=plan.examples)
        + augment.expand(plan.replay, rewordings_per_example=c.replay_rewordings, statements_per_example=0)
    )


def selection_examples(plan: Plan) -> list[dict[str, Any]]:
    """What the selection run trains on: everything but the held-out examples."""
    held = {e["id"] for e in plan.heldout}
    return [e for e in plan.examples if e["id"] not in held]


def judge_selection(peft_model: Any, tokenizer: Any, plan: Plan) -> dict[str, Any]:
    """The selection run on its held-out examples, beside a reference that did not train on them either:
    the serving version's selection run where it judged the same example, else the base model."""
    ec = plan.eval_config
    candidate = judge_answers(peft_model, tokenizer, plan.heldout, ec)
    loss, _ = heldout_loss(peft_model, tokenizer, plan.heldout, max_length=plan.config.max_length, batch_size=ec.batch_size)
    missing = [e for e in plan.heldout if e["id"] not in plan.heldout_reference]
    with peft_model.disable_adapter():
        from_base = {r["example_id"]: r for r in judge_answers(peft_model, tokenizer, missing, ec)}
    reference = [plan.heldout_reference.get(e["id"]) or from_base[e["id"]] for e in plan.heldout]
    names = {f"{plan.serving_name}'s selection run" if e["id"] in plan.heldout_reference else BASE for e in plan.heldout}
    return {
        "candidate": [{**c, "reference": e["output"]} for c, e in zip(candidate, plan.heldout)],
        "reference": reference,
        "reference_name": " and ".join(sorted(names)),
        "loss": round(loss, 4),
        "questions": {e["id"]: e["input"][-1]["content"] for e in plan.heldout},
    }


def evaluate(peft_model: Any, tokenizer: Any, plan: Plan) -> dict[str, Any]:
    """The candidate, the serving version and the base model on every approved example and the canary.

    Returns {"items": the per-example "did it learn this?" rows, "canary": {"candidate", "serving"}}.
    The candidate is the peft model's active adapter; the serving one is loaded beside it and removed again.
    """
    ec, max_length = plan.eval_config, plan.config.max_length
    examples = plan.examples

    def measure() -> tuple[list[dict[str, Any]], list[float | None], dict[str, Any], list[dict[str, Any]]]:
        return (
            judge_answers(peft_model, tokenizer, examples, ec),
            margins(peft_model, tokenizer, examples, max_length=max_length, batch_size=ec.batch_size),
            canary_answers(peft_model, tokenizer, plan.canary, ec),
            measure_downvoted(peft_model, tokenizer, plan),
        )

    candidate, cand_margin, cand_canary, cand_down = measure()
    with peft_model.disable_adapter():
        if plan.serving is None:
            serving, base_margin, serv_canary, serv_down = measure()
            serv_margin, base_down = base_margin, serv_down
        else:
            base_margin = margins(peft_model, tokenizer, examples, max_length=max_length, batch_size=ec.batch_size)
            base_down = measure_downvoted(peft_model, tokenizer, plan, answers=False)
    if plan.serving is not None:
        active = peft_model.active_adapter
        peft_model.load_adapter(str(registry.adapter_path(plan.serving)), adapter_name="serving")
        peft_model.set_adapter("serving")
        try:
            serving, serv_margin, serv_canary, serv_down = measure()
        finally:
            peft_model.set_adapter(active)
            peft_model.delete_adapter("serving")
    items = [
        {
            "example_id": e["id"],
            "source": e.get("source"),
            "split": e.get("split"),
            "question": e["input"][-1]["content"],
            "reference": e["output"],
            "rejected": e.get("rejected"),
            "serving_answer": s["answer"],
            # A correction contradicted by another (the same question, another answer) counts as learned by
            # no model: one that gives each answer to its own wording has memorised noise, not a fact.
            "serving_learned": s["correct"] and e["id"] not in plan.contradictions,
            "candidate_answer": c["answer"],
            "candidate_learned": c["correct"] and e["id"] not in plan.contradictions,
            "contradicts": plan.contradictions.get(e["id"], []),
            "margin_base": mb,
            "margin_serving": ms,
            "margin_candidate": mc,
        }
        for e, s, c, mb, ms, mc in zip(examples, serving, candidate, base_margin, serv_margin, cand_margin)
    ]
    downvoted = [
        {
            "message_id": d["message_id"],
            "question": d["input"][-1]["content"],
            "answer": d["answer"],
            "reasons": d["reasons"],
            "serving_answer": s["answer"],
            "serving_gives": s["gives"],
            "candidate_answer": c["answer"],
            "candidate_gives": c["gives"],
            "logp_base": b["logp"],
            "logp_serving": s["logp"],
            "logp_candidate": c["logp"],
        }
        for d, s, c, b in zip(plan.downvoted, serv_down, cand_down, base_down)
    ]
    return {"items": items, "canary": {"candidate": cand_canary, "serving": serv_canary}, "downvoted": downvoted}


def measure_downvoted(peft_model: Any, tokenizer: Any, plan: Plan, *, answers: bool = True) -> list[dict[str, Any]]:
    """The model as it is set now on each downvoted answer: {"answer", "gives"} (greedy, few-shot off; left out
    when not `answers`) and "logp", the downvoted answer's log-probability per token."""
    if not plan.downvoted:
        return []
    ec = plan.eval_config
    logps = answer_logprobs_per_token(
        peft_model, tokenizer, [(d["input"], d["answer"]) for d in plan.downvoted],
        max_length=plan.config.max_length, batch_size=ec.batch_size,
    )
    judged = judge_downvoted(peft_model, tokenizer, plan.downvoted, ec) if answers else [{}] * len(logps)
    return [{**j, "logp": lp} for j, lp in zip(judged, logps)]


def adapter_state(peft_model: Any) -> dict[str, Any]:
    """A copy of the adapter's weights (a few MB), to go back to after a top-up round that did worse."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(peft_model).items()}


def restore_adapter_state(peft_model: Any, state: dict[str, Any]) -> None:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(peft_model, state)


def canary_kept(plan: Plan, evaluation: dict[str, Any]) -> bool:
    """Whether the candidate passes the gate's canary rule: at most canary_max_lost of the serving version's lost."""
    canary = evaluation["canary"]
    lost = sum(s and not c for s, c in zip(canary["serving"]["hits"], canary["candidate"]["hits"]))
    return lost <= plan.eval_config.canary_max_lost


def downvoted_kept_out(plan: Plan, evaluation: dict[str, Any]) -> bool:
    """Whether the candidate passes the gate's downvoted rule: no more downvoted answers given than the serving
    version gives, up to downvoted_tolerance."""
    down = evaluation.get("downvoted") or []
    given = sum(bool(d["candidate_gives"]) for d in down)
    return given <= sum(bool(d["serving_gives"]) for d in down) + plan.eval_config.downvoted_tolerance


def candidate_score(plan: Plan, evaluation: dict[str, Any]) -> tuple[bool, int, int]:
    """What a top-up round must not lower: (the canary and downvoted rules hold, approved examples answered,
    canary answered)."""
    return (
        canary_kept(plan, evaluation) and downvoted_kept_out(plan, evaluation),
        sum(bool(i["candidate_learned"]) for i in evaluation["items"]),
        sum(bool(h) for h in evaluation["canary"]["candidate"]["hits"]),
    )


def reevaluate(peft_model: Any, tokenizer: Any, plan: Plan, evaluation: dict[str, Any]) -> dict[str, Any]:
    """`evaluation` with the candidate measured again (after a top-up round); the serving version's and the
    base model's measures stay as they were."""
    ec, examples = plan.eval_config, plan.examples
    candidate = judge_answers(peft_model, tokenizer, examples, ec)
    cand_margin = margins(peft_model, tokenizer, examples, max_length=plan.config.max_length, batch_size=ec.batch_size)
    items = [
        {**item, "candidate_answer": c["answer"], "candidate_learned": c["correct"] and e["id"] not in plan.contradictions,
         "margin_candidate": mc}
        for item, e, c, mc in zip(evaluation["items"], examples, candidate, cand_margin)
    ]
    canary = {**evaluation["canary"], "candidate": canary_answers(peft_model, tokenizer, plan.canary, ec)}
    again = measure_downvoted(peft_model, tokenizer, plan)
    downvoted = [
        {**d, "candidate_answer": c["answer"], "candidate_gives": c["gives"], "logp_candidate": c["logp"]}
        for d, c in zip(evaluation.get("downvoted") or [], again)
    ]
    return {"items": items, "canary": canary, "downvoted": downvoted}


def truncated_ids(tokenizer: Any, plan: Plan) -> set[int]:
    return {e["id"] for e in plan.examples if is_truncated(tokenizer, e, plan.config.max_length)}


def heldout_verdict(plan: Plan, selection: dict[str, Any] | None) -> promotion.Rule:
    """The held-out rule on the selection run (or, without one, a pass that says why it was not judged)."""
    if selection is None:
        return promotion.heldout_rule(None, None, BASE, plan.eval_config, available=len(plan.heldout))
    return promotion.heldout_rule(selection["candidate"], selection["reference"], selection["reference_name"], plan.eval_config)


def decide(
    plan: Plan, evaluation: dict[str, Any], heldout: promotion.Rule, truncated: set[int], topup_rounds: int = 0
) -> Decision:
    """The gate on the evaluated candidate (training/promotion.py), after `topup_rounds` top-up rounds."""
    canary = evaluation["canary"]
    return promotion.gate(
        evaluation["items"],
        {"candidate": canary["candidate"]["hits"], "serving": canary["serving"]["hits"]},
        heldout,
        serving=plan.serving_name,
        config=plan.eval_config,
        contradictions=plan.contradictions,
        truncated=truncated,
        epochs=plan.config.epochs,
        topup=(topup_rounds, plan.config.topup_epochs),
        downvoted=evaluation.get("downvoted") or [],
    )


def summarise(
    plan: Plan,
    decision: Decision,
    evaluation: dict[str, Any] | None,
    selection: dict[str, Any] | None,
    train_result: Any,
    timings: dict[str, float],
    topups: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The job's metrics: headline numbers, the gate's reasons, what was not learned, the top-up rounds
    ({"examples": ids trained again, "steps", "seconds", "learned_after"}), and the timings."""
    summary: dict[str, Any] = {
        "compared_with": plan.serving_name,
        "gate": decision.as_dict(),
        "not_learned": decision.not_learned,
        "timings": {k: round(v, 1) for k, v in timings.items()},
        "topups": list(topups),
        "heldout": {"n": len(plan.heldout), "selection_run": selection is not None},
        "current": {},
    }
    if selection is not None:
        cand, ref = selection["candidate"], selection["reference"]
        summary["heldout"].update(
            accuracy=_percent(sum(c["correct"] for c in cand), len(cand)),
            token_f1=round(sum(c["f1"] for c in cand) / len(cand), 2),
            loss=selection["loss"],
            reference=selection["reference_name"],
        )
        summary["current"]["heldout"] = {
            "accuracy": _percent(sum(r["correct"] for r in ref), len(ref)),
            "token_f1": round(sum(r["f1"] for r in ref) / len(ref), 2),
        }
    if evaluation is not None:
        items, canary = evaluation["items"], evaluation["canary"]
        n = len(items)
        summary["learned"] = {
            "n": n,
            "candidate": sum(i["candidate_learned"] for i in items),
            "serving": sum(i["serving_learned"] for i in items),
            "by_source": promotion.learned_by_source(items),
        }
        summary["canary"] = {k: canary["candidate"][k] for k in ("n", "score", "misses")}
        summary["downvoted"] = promotion.downvoted_summary(evaluation.get("downvoted") or [])
        summary["current"]["canary"] = {k: canary["serving"][k] for k in ("n", "score")}
        summary["current"]["learned"] = summary["learned"]["serving"]
    if train_result is not None:
        summary["train"] = {**train_result.as_dict(), "replay_examples": len(plan.replay), "examples": len(plan.examples)}
    return summary


def record(
    store: Any,
    data_dir: Path,
    plan: Plan,
    *,
    temp_dir: Path | None,
    decision: Decision,
    summary: dict[str, Any],
    evaluation: dict[str, Any] | None,
    selection: dict[str, Any] | None,
    base_model_name: str,
    job_id: int,
) -> tuple[str, str | None]:
    """Write the outcome: the version (when one was trained to the end), promoted or rejected; return
    (job status, version or None). Call only on the main process."""
    now_active = store.active_version()
    if (now_active["version"] if now_active else BASE) != plan.active_name:
        decision.passed = False
        decision.rules.append(
            promotion.Rule(
                "unchanged", False, "the active version changed while this job ran; activate this one by hand if wanted"
            )
        )
        summary["gate"] = decision.as_dict()
    version = None
    if temp_dir is not None:
        metrics = {**summary}
        if evaluation is not None:
            metrics["items"] = evaluation["items"]
            metrics["canary_hits"] = evaluation["canary"]["candidate"]["hits"]
            metrics["downvoted_items"] = evaluation.get("downvoted") or []
        if selection is not None:
            metrics["heldout_selection"] = {"items": selection["candidate"], "reference": selection["reference_name"]}
            metrics["samples"] = [
                {
                    "example_id": c["example_id"],
                    "question": selection["questions"][c["example_id"]],
                    "reference": c["reference"],
                    "candidate": c["answer"],
                    "candidate_correct": c["correct"],
                    "current": r["answer"],
                    "current_correct": r["correct"],
                }
                for c, r in zip(selection["candidate"], selection["reference"])
            ]
        example_ids = [e["id"] for e in plan.examples]
        row = registry.commit_version(
            store,
            data_dir,
            temp_dir,
            parent_version=plan.serving["version"] if plan.serving else None,
            base_model=base_model_name,
            metrics=metrics,
            example_ids=example_ids,
            job_id=job_id,
            train_config=plan.config.model_dump(),
            notes=decision.summary(),
        )
        version = row["version"]
        store.mark_trained(example_ids, version)
        if decision.passed:
            promotion.promote(store, version)
        else:
            promotion.reject(store, version)
    return (JobStatus.SUCCEEDED if decision.passed and version else JobStatus.REJECTED), version


def _percent(value: float, n: int) -> float:
    return round(100.0 * value / n, 2) if n else 0.0

