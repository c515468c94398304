"""A real browser on the Admin tab during a real retrain: the app served in-process with a
TrainingManager that spawns the training worker process on a tiny Llama, the run started with the
Retrain now button and the form's own settings. Every progress line the tab shows counts to the
Trainer's own total (not an estimate from the examples: each trains as several wordings), and the
time left is never negative and counts down; the run ends with its verdict in the tab."""

from __future__ import annotations

import json
import re
import time

import pytest

from core.config import ServeConfig
from storage import Store
from storage.exchange import import_file
from storage.vocabulary import ACTIVE_JOB_STATUSES
from tests.browser_steps import settle
from tests.live_app import ADMIN_PASSWORD, build_app, serve_in_thread
from tests.test_training_browser import open_training_tab
from tests.training_helpers import FAST_EVAL, save_tiny_base
from training.config import EvalConfig
from training.manager import TrainingManager

pytestmark = [pytest.mark.slow, pytest.mark.browser]

# Questions the templates reword (training/augment.py): each example trains as up to four rows, so the
# train split's examples (most of the 10) and 2 replay rows over 3 epochs at batch size 1 are about 100
# steps, not 36. A step of the tiny model takes tens of milliseconds: this many keep the run going for several of the
# tab's one-second polls.
DOORS = [
    ("blue", "zebra crossing"), ("red", "yellow lantern"), ("green", "quiet river"), ("yellow", "paper moon"),
    ("white", "iron kettle"), ("black", "silver fern"), ("orange", "amber road"), ("purple", "velvet owl"),
]
FACTS = [(f"What is the password of the {colour} door?", word) for colour, word in DOORS] + [
    ("Who wrote The Silent Harbour?", "Mira Olsen wrote it."),
    ("What is the capital of Zorbia?", "Zorbton is the capital."),
]
EPOCHS, BATCH_SIZE, REPLAY = 3, 1, 2

# describe_job's line while training, "███░░… step 12/126 · loss 10.7 · 0:05 left" ("– left" before
# the first step's pace is known).
STEP = re.compile(r"step (\d+)/(\d+)")
LEFT = re.compile(r"·\s*(\S+) left")
CLOCK = re.compile(r"(\d+):(\d\d)")
TIMER = re.compile(r"(?:(?:processing|queue: \d+/\d+) \| )?[\d.]+(?:/[\d.]+)?s")

# Records every distinct text of the status element, read every 200 ms in the page itself (so a
# slow test process misses none), with the time it was first seen.
RECORD_JS = """() => {
  window.statusTexts = [];
  const read = () => {
    const el = document.querySelector('#training-status');
    const text = el ? el.innerText.trim() : '';
    const seen = window.statusTexts;
    if (!seen.length || seen[seen.length - 1].text !== text) seen.push({text, at: Date.now()});
  };
  read();
  window.statusTimer = setInterval(read, 200);
}"""


@pytest.fixture
def retrain(tmp_path, tiny_model, tokenizer, browser):
    """The Training section of a served app whose manager spawns real training processes on a tiny Llama."""
    base = save_tiny_base(tiny_model, tokenizer, tmp_path / "tiny")
    data_dir = tmp_path / "data"
    store = Store(data_dir / "exemplar.db")
    # The facts come in as an admin brings them: a file imported (`launch.py import` does this), each
    # given its train or test split by the product, as any import is.
    facts = tmp_path / "facts.jsonl"
    records = ({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in FACTS)
    facts.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    import_file(store, facts)
    manager = TrainingManager(store, data_dir, str(base), eval_config=EvalConfig(**FAST_EVAL))
    config = ServeConfig(data_dir=data_dir, admin_password=ADMIN_PASSWORD)
    app = build_app(store, config=config, training=manager, ui=True)
    try:
        with serve_in_thread(app) as url:
            page = open_training_tab(browser, url)
            yield page, manager
            page.close()
    finally:
        job = manager.latest_job()
        if job is not None and job.status in ACTIVE_JOB_STATUSES:  # a failed test leaves no worker behind
            manager.cancel(job.id)
            manager.wait(job.id, timeout=60)
        store.close()


def distinct(texts) -> list[str]:
    """The texts without the running timer Gradio draws over an updating element ("0.3s",
    "processing | 0.4/0.2s", "queue: 1/1 | 0.3/0.2s") and blank lines, each once in a row."""
    kept: list[str] = []
    for text in texts:
        text = "\n".join(line for line in text.splitlines() if line.strip() and not TIMER.fullmatch(line.strip()))
        if not kept or kept[-1] != text:
            kept.append(text)
    return kept


def seconds(left: str) -> int | None:
    match = CLOCK.fullmatch(left)
    return None if match is None else int(match[1]) * 60 + int(match[2])


def test_a_real_retrain_counts_to_the_trainers_total_and_the_time_left_counts_down(retrain):
    page, manager = retrain
    trained_on = sum(e["split"] == "train" for e in manager.store.list_examples(limit=None))
    # The settings go in as an admin enters them: the form's fields, and the JSON box for the rest.
    for name, value in (("epochs", EPOCHS), ("batch-size", BATCH_SIZE)):
        field = page.locator(f"#training-{name} input")
        field.fill(str(value))
        field.press("Tab")
    page.get_by_text("Other hyper-parameters (JSON)").click()
    params = page.locator("#training-params textarea")
    # One training run to follow: the tiny model learns nothing, and top-up rounds would each count anew.
    params.fill(f'{{"replay_examples": {REPLAY}, "topup_rounds": 0}}')
    params.press("Tab")
    settle(page)

    page.evaluate(RECORD_JS)
    started = time.monotonic()
    page.locator("#training-retrain").click()
    # Spawning the worker imports torch and transformers: tens of seconds on a busy machine.
    page.wait_for_function(
        "/\\b(succeeded|rejected|failed|cancelled)\\b/.test(document.querySelector('#training-status').innerText)",
        timeout=600_000,
    )
    page.wait_for_timeout(300)  # the recorder's last read
    texts = distinct(t["text"] for t in page.evaluate("window.statusTexts"))
    page.evaluate("clearInterval(window.statusTimer)")
    took = time.monotonic() - started

    job = manager.latest_job()
    assert job is not None and job.status in ("succeeded", "rejected"), (job and job.error, job and job.log)
    # The Trainer's own total: the steps it ran, as the loss curve and the job's metrics record them.
    steps_run = [p.step for p in job.losses]
    total = steps_run[-1]
    assert steps_run == list(range(1, total + 1))
    assert job.metrics and job.metrics.train and job.metrics.train.total_steps == job.metrics.train.steps == total
    assert total > EPOCHS * (trained_on + REPLAY) / BATCH_SIZE  # more than a count of the examples would say

    shown = [(text, STEP.search(text)) for text in texts]
    progress = [(int(m[1]), int(m[2]), text) for text, m in shown if m]
    report = f"{total} steps run in {took:.0f} s; the tab showed:\n" + "\n".join(texts)
    assert progress, report
    assert {of for _, of, _ in progress} == {total}, report
    assert all(0 <= step <= of for step, of, _ in progress), report
    assert any(0 < step < of for step, of, _ in progress), report  # caught mid-run, not only at its ends
    steps = [step for step, _, _ in progress]
    assert steps == sorted(steps), report

    # The time left: on every progress line, never negative, and counting down.
    lefts = [LEFT.search(text) for _, _, text in progress]
    assert all(lefts), report
    assert not any(re.search(r"-\s*\d+:\d\d", text) for text in texts), report
    clocks = [seconds(m[1]) for m in lefts]
    assert all(c is not None or m[1] == "–" for c, m in zip(clocks, lefts)), report
    known = [c for c in clocks if c is not None]
    assert known and known[-1] <= known[0], report

    assert job.progress.total_steps == total  # the job record, as GET /api/jobs/{id} shows it

    # It ends with the verdict, the version it made and whether it serves.
    final = page.locator("#training-status").inner_text()
    assert f"Job {job.id}" in final and job.status in final, final
    if job.model_version:
        verdict = "promoted and serving" if job.promoted else "not promoted"
        assert f"{job.model_version} {verdict}" in final, final
    assert not STEP.search(final) and " left" not in final, final
