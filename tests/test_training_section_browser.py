"""A real browser on the Training section while a run writes its log the way a real worker does
(tqdm redraws, a library FutureWarning, many lines): the log pane follows its newest line and shows
clean lines, the loss chart starts at the first step with whole-number step ticks, Stop and Rollback
ask first (and do nothing when the admin cancels), and "New since the last run" drops once a run
has taken the examples in."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from core.config import ServeConfig
from core.datadir import DataDir
from storage import Store
from storage.exchange import seed_examples
from storage.store import now
from tests.live_app import ADMIN_PASSWORD, build_app, serve_in_thread
from tests.test_training_browser import line_points, open_training_tab
from training.manager import TrainingManager

pytestmark = [pytest.mark.slow, pytest.mark.browser]

SEED = Path(__file__).resolve().parent.parent / "examples" / "help_desk.jsonl"
LOSSES = [3.4, 3.0, 2.6, 2.2, 1.9, 1.6, 1.3, 1.1, 0.9, 0.7, 0.5, 0.4]
STEP_SECONDS = 0.6


class LoggingWorkerManager(TrainingManager):
    """Its worker is a thread that reports a falling loss and writes the job's log as the real process
    does: its own lines, progress-bar redraws and a library warning."""

    def _spawn(self, job_id, config):
        path = DataDir(self.data_dir).job_log(job_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.release = threading.Event()  # set by a test to let the run finish

        def write(text):
            with path.open("a") as fh:
                fh.write(text)

        def stamp():
            return time.strftime("%Y-%m-%d %H:%M:%S,000")

        def work():
            store = self.store
            store.update_job(job_id, status="running", started_at=now(), heartbeat_at=now())
            write(f"{stamp()} INFO Phase: loading\n")
            write("".join(f"\rLoading checkpoint shards: {p}%|{'#' * (p // 10)}| {p // 50}/2 [00:01<00:01, 1.2s/it]"
                          for p in (0, 50, 100)) + "\n")
            write("/venv/lib/python3.11/site-packages/transformers/training_args.py:1575: FutureWarning: "
                  "`evaluation_strategy` is deprecated\n  warnings.warn(\n")
            losses = []
            for step, loss in enumerate(LOSSES, 1):
                time.sleep(STEP_SECONDS)
                if store.get_job(job_id).get("cancel_requested"):  # the manager has marked it cancelled
                    return
                for n in range(5):
                    write(f"{stamp()} INFO step {step}/{len(LOSSES)} detail {n}\n")
                write(f"\rMap:  50%|#####     | 5/10 [00:00<00:00, 99.0 examples/s]{stamp()} INFO "
                      f"step {step}/{len(LOSSES)}  loss {loss:.4f}\n")
                losses.append({"step": step, "loss": loss})
                store.update_job(
                    job_id, losses=losses, heartbeat_at=now(),
                    progress={"phase": "training", "step": step, "total_steps": len(LOSSES),
                              "percent": 100 * step / len(LOSSES), "loss": loss, "eta_seconds": 1},
                )
            self.release.wait(60)
            version = store.next_version_name()
            folder = self.data_dir / "adapters" / version
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "adapter_config.json").write_text("{}")
            store.add_model_version(version, path=str(folder), metrics={"compared_with": "base"}, example_ids=[1])
            store.activate_version(version)
            write(f"{stamp()} INFO Promoted {version}\n")
            store.update_job(job_id, status="succeeded", model_version=version, promoted=1, finished_at=now(),
                             heartbeat_at=now())

        self.thread = threading.Thread(target=work, daemon=True)
        self.thread.start()


@pytest.fixture
def live(tmp_path, browser):
    store = Store(tmp_path / "exemplar.db")
    seed_examples(store, SEED)  # 20 approved examples, none trained on yet
    manager = LoggingWorkerManager(store, tmp_path)
    app = build_app(store, config=ServeConfig(data_dir=tmp_path, admin_password=ADMIN_PASSWORD), training=manager,
                    ui=True)
    with serve_in_thread(app) as url:
        page = open_training_tab(browser, url)
        yield page, manager
        page.close()
        if getattr(manager, "thread", None):
            manager.release.set()
            manager.thread.join(timeout=10)
    store.close()


def status_has(page, text, timeout=30_000):
    page.wait_for_function(
        "t => document.querySelector('#training-status').innerText.includes(t)", arg=text, timeout=timeout
    )


def log_state(page):
    return page.evaluate(
        "() => { const t = document.querySelector('#training-log textarea');"
        " return {value: t.value, top: t.scrollTop, height: t.clientHeight, full: t.scrollHeight}; }"
    )


def x_ticks(page):
    """The x axis's tick labels of the loss chart."""
    return page.evaluate(
        "() => [...document.querySelectorAll('#training-loss svg .role-axis')]"
        ".filter(a => (a.getAttribute('aria-label') || '').includes('X-axis'))"
        ".flatMap(a => [...a.querySelectorAll('.role-axis-label text')].map(t => t.textContent))"
    )


def test_the_log_follows_its_newest_clean_line_and_the_chart_starts_at_step_one(live):
    page, manager = live
    assert "New since the last run: 20" in page.locator("#training-policy").inner_text()
    page.locator("#training-retrain").click()
    # Early in the run, with two or three losses drawn: the steps on the axis are whole numbers.
    page.wait_for_function(
        "/step [2-4]\\//.test(document.querySelector('#training-status').innerText)", timeout=30_000
    )
    page.wait_for_timeout(300)
    assert x_ticks(page) and all(re.fullmatch(r"\d+", t) for t in x_ticks(page)), x_ticks(page)
    assert min(x for x, _ in line_points(page)) > 0  # the first loss clear of the plot's clipped left edge
    status_has(page, f"step 10/{len(LOSSES)}")
    page.wait_for_timeout(1500)  # a few polls more, each replacing the whole log
    state = log_state(page)
    assert state["full"] > state["height"] + 100  # more lines than the pane shows
    assert state["top"] + state["height"] >= state["full"] - 4, state  # scrolled to the newest line
    text = state["value"]
    assert "step 1" in text and "Phase: loading" in text
    assert "%|" not in text and "FutureWarning" not in text and "warnings.warn" not in text
    assert "\r" not in text and "examples/s" not in text
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO ", line) for line in text.splitlines()), text

    manager.release.set()
    status_has(page, "succeeded")
    page.wait_for_timeout(500)
    state = log_state(page)
    assert "Promoted v1" in state["value"] and state["top"] + state["height"] >= state["full"] - 4
    # The run took all 20 in: the count says so without pressing Refresh.
    page.wait_for_function(
        "document.querySelector('#training-policy').innerText.includes('New since the last run: 0')", timeout=10_000
    )

    points = line_points(page)
    assert len(points) == len(LOSSES)  # every loss drawn, the first one too
    box = page.locator("#training-loss svg .mark-line").first.bounding_box()
    plot = page.locator("#training-loss svg").first.bounding_box()
    assert box and plot and box["x"] > plot["x"]
    ticks = x_ticks(page)
    assert ticks and all(re.fullmatch(r"\d+", t) for t in ticks), ticks
    first_x = min(x for x, _ in points)
    assert first_x > 0  # clear of the plot's left edge, where the line is clipped


def test_stop_and_rollback_ask_first_and_cancelling_does_nothing(live):
    page, manager = live
    page.locator("#training-retrain").click()
    status_has(page, f"/{len(LOSSES)} · loss")  # training, at whichever step the poll caught
    asked = []

    def answer(accept):
        def handle(dialog):
            asked.append(dialog.message)
            dialog.accept() if accept else dialog.dismiss()
        page.once("dialog", handle)

    answer(False)
    page.locator("#training-stop").click()
    page.wait_for_timeout(1500)
    assert asked and "Stop" in asked[-1]
    job = manager.store.list_jobs()[0]
    assert job["status"] == "running" and not job.get("cancel_requested")

    manager.release.set()
    status_has(page, "succeeded")
    page.locator("#training-refresh").click()
    page.wait_for_function(
        "document.querySelector('#training-versions').innerText.includes('v1')", timeout=10_000
    )
    assert manager.store.active_version()["version"] == "v1"
    answer(False)
    page.locator("#training-rollback").click()
    page.wait_for_timeout(1500)
    assert len(asked) == 2 and "oll" in asked[-1]
    assert manager.store.active_version()["version"] == "v1"
    assert "Rolled back" not in page.locator("#training-result").inner_text()
    answer(True)
    page.locator("#training-rollback").click()
    page.wait_for_function(
        "document.querySelector('#training-result').innerText.includes('Rolled back')", timeout=10_000
    )
    assert manager.store.active_version() is None

    # A confirmed Stop stops the next run.
    page.locator("#training-retrain").click()
    status_has(page, f"/{len(LOSSES)} · loss")
    answer(True)
    page.locator("#training-stop").click()
    status_has(page, "cancelled")
    assert len(asked) == 4
