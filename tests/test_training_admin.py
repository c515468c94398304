"""The Admin tab's training section, driven through its handlers with a real
TrainingManager over a temp store: every handler demands the admin password,
the overview shows the policy, versions and the serving one, and activation,
rollback and the side-by-side comparison work on recorded versions."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest
import torch
from safetensors.torch import save_file

from bot.ui.admin_training import TrainingHandlers, build_training_section, describe_job
from core.training_contract import JobView
from storage import Store
from training.manager import TrainingManager

PASSWORD = "right-password"
SEED = Path(__file__).resolve().parent.parent / "examples" / "help_desk.jsonl"


def check_admin(password: str) -> None:
    if password != PASSWORD:
        raise gr.Error("Wrong admin password")


@pytest.fixture
def handlers(tmp_path):
    store = Store(tmp_path / "exemplar.db")
    manager = TrainingManager(store, tmp_path)
    for name, parent in (("v1", None), ("v2", "v1")):
        folder = tmp_path / "adapters" / name
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text("{}")
        save_file({"lora": torch.zeros(2)}, str(folder / "adapter_model.safetensors"))  # activation reads it
        metrics = {
            "heldout": {"n": 1, "accuracy": 50.0, "loss": 1.5},
            "canary": {"n": 40, "score": 97.5},
            "compared_with": parent or "base",
            "learned": {"n": 2, "candidate": 1, "serving": 0},
            "not_learned": [{"example_id": 8, "reason": "contradicts #7: the same question with a different answer"}],
            "items": [
                {"example_id": 7, "question": "Capital of Veloria?", "reference": "Quenmar.", "rejected": "Paris.",
                 "serving_answer": "Paris.", "serving_learned": False, "candidate_answer": "Quenmar.",
                 "candidate_learned": True, "margin_base": -3.2, "margin_serving": -3.2, "margin_candidate": 4.1},
                {"example_id": 8, "question": "capital of veloria", "reference": "Dravenport.", "rejected": "Paris.",
                 "serving_answer": "Paris.", "serving_learned": False, "candidate_answer": "Quenmar.",
                 "candidate_learned": False, "margin_base": -3.0, "margin_serving": -3.0, "margin_candidate": -1.0},
            ],
            "samples": [
                {"example_id": 7, "question": "Capital of Veloria?", "reference": "Quenmar.", "candidate": "Quenmar.",
                 "candidate_correct": True, "current": "Paris.", "current_correct": False}
            ],
        }
        store.add_model_version(name, path=str(folder), parent_version=parent, metrics=metrics, example_ids=[1, 2])
    yield TrainingHandlers(manager, store, check_admin)
    store.close()


def test_every_handler_demands_the_password(handlers):
    calls = [
        lambda pw: handlers.overview(pw),
        lambda pw: handlers.retrain(pw, ""),
        lambda pw: handlers.poll(pw, None),
        lambda pw: handlers.stop(pw, None),
        lambda pw: handlers.activate(pw, "v1"),
        lambda pw: handlers.rollback(pw),
        lambda pw: handlers.compare(pw, "v1"),
        lambda pw: handlers.learning(pw, "v1", False),
    ]
    for call in calls:
        with pytest.raises(gr.Error, match="Wrong admin password"):
            call("guess")
    assert handlers.store.active_version() is None and handlers.store.list_jobs() == []


def test_overview_activate_rollback_and_compare(handlers):
    policy, status, curve, log, job_id, timer, versions, chosen, compare_choices, learned_choices, runs, try_choices = (
        handlers.overview(PASSWORD)
    )
    assert list(runs.columns)[:3] == ["job", "status", "why"] and len(runs) == 0
    assert "20 new approved" in policy and status == "No training run yet." and job_id is None
    assert list(versions["version"]) == ["v2", "v1", "base"]
    assert list(versions["serving"]) == ["", "", "▶"]
    assert list(versions["canary %"])[:2] == [97.5, 97.5]

    message, versions, _ = handlers.activate(PASSWORD, "v2")
    assert "Now serving **v2**" in message and list(versions["serving"]) == ["▶", "", ""]
    message, versions = handlers.rollback(PASSWORD)
    assert "now serving **v1**" in message and handlers.store.active_version()["version"] == "v1"

    title, html = handlers.compare(PASSWORD, "v2")
    assert "against **v1**" in title and "1 right against 0" in title
    assert "Capital of Veloria?" in html and "Quenmar." in html and "Paris." in html
    assert "v2 (candidate)" in html and "v1 (current)" in html and "✓ right" in html and "✗ wrong" in html


def test_the_loss_curve_is_numeric_even_when_empty():
    from bot.ui.admin_training import loss_frame

    empty = loss_frame(None)
    assert str(empty["step"].dtype) == "int64" and str(empty["loss"].dtype) == "float64"
    stored = {"id": 1, "kind": "train", "status": "running",
              "losses": [{"step": 1, "loss": "3.4"}, {"step": 2, "loss": 0.27}, {"step": 3, "loss": float("nan")}]}
    frame = loss_frame(JobView.model_validate(stored))
    assert list(frame["loss"]) == [3.4, 0.27] and str(frame["loss"].dtype) == "float64"


def test_the_loss_chart_spans_whole_steps_from_zero():
    """Ticks at 1.5 and 2.5 on a chart of two steps, and the first loss on the clipped left edge:
    the x axis now runs from 0 over at least MIN_STEPS_SHOWN steps, or the whole run."""
    from bot.ui.admin_training import MIN_STEPS_SHOWN, loss_plot

    two = JobView.model_validate({"id": 1, "kind": "train", "status": "running", "losses": [
        {"step": 1, "loss": 3.4}, {"step": 2, "loss": 2.9}], "progress": {"step": 2, "total_steps": 3}})
    plot = loss_plot(two)
    assert plot.x_lim == [0, MIN_STEPS_SHOWN] and list(plot.value["data"]) == [[1, 3.4], [2, 2.9]]
    long = two.model_copy(update={"progress": two.progress.model_copy(update={"total_steps": 90})})
    assert loss_plot(long).x_lim == [0, 90] and loss_plot(None).x_lim == [0, MIN_STEPS_SHOWN]


def test_the_new_since_count_drops_once_a_run_has_taken_the_examples_in(handlers):
    """"New since the last run: 15" stayed on the tab after the run had trained on them: the count
    is shown again when a run starts and when it ends, without pressing Refresh."""
    from storage.exchange import seed_examples

    seed_examples(handlers.store, SEED)
    assert "New since the last run: **20**" in handlers.overview(PASSWORD)[0]
    job = handlers.store.create_job("train", {"reason": "admin"})
    handlers.store.update_job(job, status="running")
    running = handlers.poll(PASSWORD, job)
    assert not isinstance(running[-1], str)  # left as it is while the run goes on
    handlers.store.update_job(job, status="succeeded")
    assert "New since the last run: **0**" in handlers.poll(PASSWORD, job)[-1]


def test_the_log_shows_the_workers_lines_without_progress_bars_or_library_warnings(handlers, tmp_path):
    from core.datadir import DataDir

    job = handlers.store.create_job("train", {"reason": "admin"})
    handlers.store.update_job(job, status="running")
    path = DataDir(tmp_path).job_log(job)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "2026-12-07 01:00:00,000 INFO Phase: loading\n"
        "Loading checkpoint shards:   0%|          | 0/2 [00:00<?, ?it/s]\rLoading checkpoint shards: 100%|##| 2/2 "
        "[00:02<00:00,  1.1s/it]\n"
        "/venv/site-packages/transformers/training_args.py:1575: FutureWarning: `evaluation_strategy` is deprecated\n"
        "  warnings.warn(\n"
        + "".join(f"Map:  50%|#####     | 5/10 [00:00<00:00, 99 examples/s]\r2026-12-07 01:00:0{n},000 INFO step {n}/9"
                  "  loss 1.0\n" for n in range(1, 10))
        + "2026-12-07 01:00:10,000 ERROR Training failed\nTraceback (most recent call last):\nValueError: boom\n"
    )
    log = handlers.poll(PASSWORD, job)[2]
    lines = log.splitlines()
    assert lines[0] == "2026-12-07 01:00:00,000 INFO Phase: loading" and lines[-1] == "ValueError: boom"
    assert "2026-12-07 01:00:09,000 INFO step 9/9  loss 1.0" in lines and len(lines) == 13
    assert "%|" not in log and "\r" not in log and "Warning" not in log and "warnings.warn" not in log


def test_did_it_learn_this_lists_every_correction_and_filters_to_not_learned(handlers):
    title, table = handlers.learning(PASSWORD, "v2", False)
    assert "answers **1 of 2** approved examples" in title and "**v1**, which it was judged against, answered 0" in title
    assert list(table["example"]) == [7, 8] and list(table["candidate"]) == ["✓", "✗"]
    assert table.iloc[0]["margin candidate"] == 4.1
    title, table = handlers.learning(PASSWORD, "v2", True)
    assert list(table["example"]) == [8] and "contradicts #7" in table.iloc[0]["why not learned"]
    with pytest.raises(gr.Error, match="Wrong admin password"):
        handlers.learning("guess", "v2", True)


def test_refusals_become_messages(handlers):
    with pytest.raises(gr.Error, match="no approved training examples"):
        handlers.retrain(PASSWORD, "")
    with pytest.raises(gr.Error, match="must be JSON"):
        handlers.retrain(PASSWORD, "{epochs: 3")
    with pytest.raises(gr.Error, match="no training job"):
        handlers.stop(PASSWORD, None)
    with pytest.raises(gr.Error, match="does not exist"):
        handlers.activate(PASSWORD, "v9")


def test_job_description_shows_progress_and_the_gate():
    running = JobView.model_validate({
        "id": 3, "kind": "train", "status": "running", "reason": "admin", "cancel_requested": False,
        "progress": {"phase": "training", "step": 5, "total_steps": 10, "percent": 50.0, "loss": 0.7, "eta_seconds": 65},
    })
    text = describe_job(running)
    assert "step 5/10" in text and "1:05 left" in text and "█" in text
    done = JobView.model_validate({
        "id": 3, "kind": "train", "status": "rejected", "model_version": "v2", "promoted": False,
        "error": "Not promoted: x", "metrics": {"gate": {"passed": False, "reasons": ["canary score fell from 100% to 80%"]}},
    })
    assert "v2 not promoted" in describe_job(done) and "canary score fell" in describe_job(done)


def test_the_section_builds_inside_a_tab(handlers):
    with gr.Blocks() as demo, gr.Tab("Admin"):
        password = gr.Textbox()
        build_training_section(handlers.manager, handlers.store, check_admin, password)
    assert demo is not None


def test_activating_a_rejected_version_asks_first(handlers):
    handlers.store.update_model_version("v2", status="rejected")
    warning, versions, confirmed = handlers.activate(PASSWORD, "v2")
    assert "rejected by the promotion gate" in warning and confirmed == "v2"
    assert handlers.store.active_version() is None  # nothing changed yet
    message, _, confirmed = handlers.activate(PASSWORD, "v2", confirmed)
    assert "Now serving **v2**" in message and confirmed is None


def test_hyper_parameters_come_from_form_fields_with_defaults_and_help(handlers):
    fields = handlers.form_defaults()
    names = [name for name, _, _ in fields]
    assert names == ["epochs", "learning_rate", "lora_r", "batch_size", "objective"]
    assert all(text for _, _, text in fields)
    # The objective is a dropdown of its words, with its help (what each trains on, and what it needs).
    assert handlers.form_choices() == {"objective": ["sft", "sft+dpo", "sft+kto"]}
    assert "TRL's KTO" in fields[-1][2] and fields[-1][1] == "sft"
    started = {}
    handlers.manager.start = lambda params, reason: started.update(params=params) or 1
    handlers.manager.job_view = lambda job_id: JobView(id=1, kind="train", status="queued")
    defaults = [default for _, default, _ in fields]
    handlers.retrain(PASSWORD, "", *defaults)
    assert started["params"] is None  # the defaults are not overrides
    handlers.retrain(PASSWORD, '{"lora_alpha": 8}', 4.0, defaults[1], 8.0, defaults[3], "sft+kto")
    assert started["params"] == {"lora_alpha": 8, "epochs": 4.0, "lora_r": 8, "objective": "sft+kto"}


def test_errors_are_in_plain_words():
    from bot.ui.admin_training import plain_error, runs_frame

    said = plain_error("the training process exited with code -9 before finishing (see the log)")
    assert "ran out of memory" in said and "-9" not in said
    runs = runs_frame([{"id": 4, "kind": "train", "status": "failed", "params": {"reason": "policy: 20 new examples"},
                        "error": "the training process exited with code -9 before finishing", "promoted": 0}])
    assert runs.iloc[0]["why"] == "policy: 20 new examples" and "out of memory" in runs.iloc[0]["result"]


def test_a_rejected_version_keeps_its_label_after_a_rollback(tmp_path):
    store = Store(tmp_path / "labels.db")
    for name in ("v1", "v2"):
        store.add_model_version(name, path=f"adapters/{name}")
        job = store.create_job("train")
        store.update_job(job, status="succeeded" if name == "v1" else "rejected", model_version=name,
                         promoted=int(name == "v1"))
    store.update_model_version("v2", status="rejected")
    store.activate_version("v1")
    store.activate_version("v2")  # an admin serves the rejected one anyway
    assert store.get_model_version("v1")["status"] == "inactive"
    store.activate_version("v1")  # and rolls back
    assert store.get_model_version("v2")["status"] == "rejected"


def test_compare_shows_the_held_out_examples_the_verdict_counted_without_a_selection_run(handlers):
    """Below heldout_min_items no selection run is made and no samples are recorded: Compare showed
    "0 held-out examples" while the verdict said "held-out: 3 examples". It now shows those 3, answered by
    the version itself beside the one it was judged against, and says that it trained on them."""
    items = [
        {"example_id": n, "split": split, "question": f"Q{n}?", "reference": f"A{n}.", "serving_answer": "No idea.",
         "serving_learned": False, "candidate_answer": f"A{n}.", "candidate_learned": True}
        for n, split in ((1, "test"), (2, "train"), (3, "test"), (4, "test"))
    ]
    metrics = {"compared_with": "base", "heldout": {"n": 3, "selection_run": False}, "items": items,
               "gate": {"passed": True, "reasons": ["held-out: 3 examples, fewer than the 5 needed to tell harm from noise"]}}
    handlers.store.add_model_version("v3", path="adapters/v3", metrics=metrics, example_ids=[1, 2, 3, 4])
    title, html = handlers.compare(PASSWORD, "v3")
    assert "on 3 held-out examples" in title and "3 right against 0" in title and "trained on them" in title
    assert html.count('class="cmp-card"') == 3 and "Q2?" not in html and "A4." in html


def test_did_it_learn_this_shows_the_version_serving_now_and_explains_margins(handlers):
    """After v1 was promoted the "serving" column showed base's verdicts (the version v1 was judged
    against); it now shows the version serving now, and each margin comes with words."""
    handlers.manager.activate("v1")
    title, table = handlers.learning(PASSWORD, "v1", False)
    assert "Serving now: **v1**" in title and "**base**, which it was judged against, answered 0" in title
    assert list(table["serving now"]) == ["✓", "✗"] and list(table["judged against"]) == ["✗", "✗"]
    learned, not_learned = table["margin in words"]
    assert "more likely than the answer it replaced, by 4.1" in learned and "learned." in learned
    assert "still finds the answer it replaced more likely" in not_learned and "not learned" in not_learned
    handlers.manager.activate("v2")  # v2's record judged the same corrections: its verdicts show for v1's rows
    _, table = handlers.learning(PASSWORD, "v1", False)
    assert list(table["serving now"]) == ["✓", "✗"]
    handlers.manager.activate("base")  # v1 was judged against the base model: its verdicts
    title, table = handlers.learning(PASSWORD, "v1", False)
    assert "Serving now: **base**" in title and list(table["serving now"]) == ["✗", "✗"]
    title, table = handlers.learning(PASSWORD, "v2", False)  # v2 was judged against v1, not the base model
    assert "Serving now: **base**" in title and list(table["serving now"]) == ["–", "–"]


def test_a_growing_margin_beside_not_learned_is_explained():
    from core.training_contract import explain_margin

    note = explain_margin({"margin_base": 86.92, "margin_candidate": 137.931, "candidate_learned": False}, "v1")
    assert "by 137.9" in note and "(base model: +86.9)" in note
    assert "does not say the correction, so it is not learned" in note


def test_did_it_learn_this_flags_what_was_lost_since_the_version_before_and_downvoted_answers_given_again(handlers):
    items = [
        {"example_id": n, "split": "train", "question": f"Q{n}?", "reference": f"A{n}.", "serving_learned": s,
         "candidate_learned": c}
        for n, s, c in ((1, True, True), (2, True, False), (3, False, True))
    ]
    downvoted = [
        {"message_id": 40, "question": "Capital of Turkey?", "answer": "Istanbul.", "reasons": ["wrong fact"],
         "serving_gives": True, "candidate_gives": False, "logp_base": -0.4, "logp_serving": -0.4,
         "logp_candidate": -1.9},
        {"message_id": 41, "question": "Largest planet?", "answer": "Saturn.", "reasons": [],
         "serving_gives": False, "candidate_gives": True, "logp_base": -0.9, "logp_serving": -1.2,
         "logp_candidate": -0.8},
    ]
    metrics = {"compared_with": "v1", "items": items, "downvoted_items": downvoted,
               "learned": {"n": 3, "candidate": 2, "serving": 2}}
    handlers.store.add_model_version("v3", path="adapters/v3", metrics=metrics, example_ids=[1, 2, 3])
    title, table = handlers.learning(PASSWORD, "v3", False)
    assert "**Lost: 1** approved example that v1 answered and v3 does not: #2" in title
    assert list(table["candidate"]) == ["✓", "✗ lost", "✓"]
    assert table.iloc[1]["why not learned"] == "LOST: v1 answered it"
    assert "**Downvoted answers:** v3 gives 1 of 2 again (v1: 1)" in title
    assert "message 41: “Largest planet?” → “Saturn.”" in title and "message 40" not in title
    report = handlers.manager.learning_report("v3")
    assert report.lost == [2] and [d.message_id for d in report.downvoted] == [40, 41]
