"""A real browser on the Admin tab's training section, served in-process with
a fake engine and a training manager whose worker is a thread that reports a
falling loss (the section's rendering is under test, not training itself):
the live loss chart plots numeric values that fall as the loss falls, and the
comparison shows each version's answer and verdict side by side."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from core.config import ServeConfig
from storage import Store
from storage.exchange import seed_examples
from storage.store import now
from tests.browser_steps import open_app, settle
from tests.live_app import ADMIN_PASSWORD, build_app, serve_in_thread
from training.manager import TrainingManager

pytestmark = [pytest.mark.slow, pytest.mark.browser]

SEED = Path(__file__).resolve().parent.parent / "examples" / "help_desk.jsonl"
LOSSES = [3.4, 2.9, 2.2, 1.6, 1.1, 0.7, 0.45, 0.27]
SAMPLE = {
    "example_id": 3, "question": "Where do I change my billing address?",
    "reference": "Open Settings › Billing and press Edit address.",
    "candidate": "Open Settings › Billing, then Edit address.", "candidate_correct": True,
    "current": "Call the support line on weekdays.", "current_correct": False,
}


class ThreadWorkerManager(TrainingManager):
    """Starts a thread that writes progress the way the training worker does, one loss a step."""

    def _spawn(self, job_id, config):
        def work():
            store = self.store
            store.update_job(job_id, status="running", started_at=now(), heartbeat_at=now())
            losses = []
            for step, loss in enumerate(LOSSES, 1):
                time.sleep(1.0)
                losses.append({"step": step, "loss": loss})
                store.update_job(
                    job_id, losses=losses, heartbeat_at=now(),
                    progress={"phase": "training", "step": step, "total_steps": len(LOSSES),
                              "percent": 100 * step / len(LOSSES), "loss": loss, "eta_seconds": 1},
                )
            folder = self.data_dir / "adapters" / "v1"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "adapter_config.json").write_text("{}")
            metrics = {"heldout": {"n": 1, "accuracy": 100.0, "loss": 0.3}, "canary": {"n": 40, "score": 100.0},
                       "compared_with": "base", "samples": [SAMPLE]}
            store.add_model_version("v1", path=str(folder), metrics=metrics, example_ids=[1])
            store.update_job(job_id, status="succeeded", model_version="v1", finished_at=now(), heartbeat_at=now())

        threading.Thread(target=work, daemon=True).start()


def open_training_tab(browser, url):
    """A 1280 px page logged in on the Admin tab with the Training section open, as an admin gets there."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    open_app(page, url)
    page.get_by_role("tab", name="Admin").click()
    password = page.locator("#admin-password input")
    password.fill(ADMIN_PASSWORD)
    password.press("Enter")
    page.get_by_role("tab", name="Training").click()
    settle(page)  # the login event, which also fills in every section, has finished
    return page


@pytest.fixture
def admin_page(tmp_path, browser):
    store = Store(tmp_path / "exemplar.db")
    seed_examples(store, SEED)
    config = ServeConfig(data_dir=tmp_path, admin_password=ADMIN_PASSWORD)
    manager = ThreadWorkerManager(store, tmp_path)
    app = build_app(store, config=config, training=manager, ui=True)
    with serve_in_thread(app) as url:
        page = open_training_tab(browser, url)
        yield page
        page.close()
    store.close()


def line_points(page):
    """The (x, y) screen points of the plotted loss line (SVG: y grows downwards)."""
    d = page.locator("#training-loss svg .mark-line path").first.get_attribute("d") or ""
    numbers = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", d)]
    return list(zip(numbers[0::2], numbers[1::2]))


def test_the_live_loss_chart_falls_as_the_loss_falls(admin_page):
    page = admin_page
    page.locator("#training-retrain").click()
    # Read the chart while the job runs, then once it has ended.
    page.wait_for_function(
        "/step [3-7]\\//.test(document.querySelector('#training-status').innerText)", timeout=60_000
    )
    running = line_points(page)  # drawn while the job runs, not only at the end
    assert 2 <= len(running) < len(LOSSES)
    page.wait_for_function(
        "document.querySelector('#training-status').innerText.includes('succeeded')", timeout=30_000
    )
    page.wait_for_timeout(500)
    points = line_points(page)
    assert len(points) == len(LOSSES)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    assert xs == sorted(xs) and len(set(xs)) == len(xs)  # steps left to right
    assert ys == sorted(ys) and ys[-1] - ys[0] > 50  # a falling loss is drawn going down the screen
    # A numeric axis: the drawn heights are proportional to the losses (a category axis spaces them evenly).
    bottom = max(ys)
    ratio = (ys[-2] - ys[0]) / (ys[-1] - ys[0])
    assert ratio == pytest.approx((LOSSES[0] - LOSSES[-2]) / (LOSSES[0] - LOSSES[-1]), abs=0.03)
    labels = [t.text_content() or "" for t in page.locator("#training-loss svg .role-axis-label text").all()]
    assert any(re.fullmatch(r"[0-9.]+", t) for t in labels) and bottom > 0


@pytest.mark.parametrize("width", [1280, 1920])
def test_the_comparison_shows_both_answers_side_by_side(admin_page, width):
    page = admin_page
    page.set_viewport_size({"width": width, "height": 1000})
    page.locator("#training-retrain").click()
    page.wait_for_function(
        "document.querySelector('#training-status').innerText.includes('succeeded')", timeout=30_000
    )
    # The finished job's version is offered for comparison at once.
    page.wait_for_function("document.querySelector('#training-compare-version input').value == 'v1'", timeout=20_000)
    page.locator("#training-compare").click()
    card = page.locator("#training-comparison .cmp-card").first
    card.wait_for(timeout=20_000)
    text = card.inner_text()
    for part in (SAMPLE["question"], SAMPLE["reference"], SAMPLE["candidate"], SAMPLE["current"], "✓ right", "✗ wrong"):
        assert part in text
    candidate, current = page.locator("#training-comparison .cmp-answer").all()[:2]
    a, b = candidate.bounding_box(), current.bounding_box()
    assert abs(a["y"] - b["y"]) < 2 and b["x"] > a["x"] + a["width"] - 1  # side by side
    assert b["x"] + b["width"] <= width  # nothing off-screen to the right
    assert page.evaluate("document.documentElement.scrollWidth") <= width


def test_an_automatic_run_shows_at_login_with_the_counts_that_started_it(tmp_path, browser):
    """The Training tab fills itself in once the password is entered (no Refresh pressed), and a run
    the policy started says why: the count of new examples against the policy's threshold."""
    store = Store(tmp_path / "exemplar.db")
    seed_examples(store, SEED)  # 20 approved examples: the default policy retrains at 20
    manager = ThreadWorkerManager(store, tmp_path)
    stop = manager.start_background(interval=0.2)
    app = build_app(store, config=ServeConfig(data_dir=tmp_path, admin_password=ADMIN_PASSWORD), training=manager,
                    ui=True)
    try:
        with serve_in_thread(app) as url:
            page = open_training_tab(browser, url)
            page.wait_for_function(
                "document.querySelector('#training-status').innerText.includes('Job 1')", timeout=30_000
            )
            status = page.locator("#training-status").inner_text()
            assert "schedule: 20 approved examples, and no run yet; the policy retrains at 20" in status
            assert "Retrains when 20 new approved examples" in page.locator("#training-policy").inner_text()
            # Once it ends, the versions and past-runs tables (long reasons included) fit the window.
            page.wait_for_function(
                "document.querySelector('#training-status').innerText.includes('succeeded')", timeout=60_000
            )
            page.get_by_text("Past runs").click()
            page.locator("#training-runs").get_by_text("the policy retrains at 20").locator("visible=true").first.wait_for()
            for table in ("#training-versions", "#training-runs"):
                edges = page.evaluate(
                    "s => [...document.querySelectorAll(s + ' th')].filter(th => th.offsetParent !== null)"
                    ".map(th => th.getBoundingClientRect().right)", table)
                assert edges and max(edges) <= 1280, (table, edges)
            page.close()
    finally:
        stop.set()
        store.close()
