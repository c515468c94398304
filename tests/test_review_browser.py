"""A real browser against a real server with the bundled model, under the manual
review policy and seeded with the shipped help-desk examples: a correction waits
in the review queue, an admin approves it there, and the next answer to the same
question is guided by it."""

import sqlite3
from pathlib import Path

import pytest

from tests.browser_steps import open_app, wait_for_text

pytestmark = [pytest.mark.slow, pytest.mark.browser]

QUESTION = "What is the capital of Zorvania?"
CORRECTION = "The capital of Zorvania is Velmora."
SEED = Path(__file__).resolve().parent.parent / "examples" / "help_desk.jsonl"


def ask(page, question):
    box = page.locator("#chat-input textarea")
    box.fill(question)
    box.press("Enter")
    wait_for_text(page, "#answer-info", "Message #", timeout=120_000)


def test_approving_a_pending_correction_guides_the_next_answer(live_server_factory, browser):
    server = live_server_factory("--review-policy", "manual", "--seed-examples", str(SEED))
    page = browser.new_page(viewport={"width": 1300, "height": 1100})
    open_app(page, server.url)

    ask(page, QUESTION)
    assert "Velmora" not in page.locator("#chatbot").inner_text()
    page.locator("#correction-input textarea").fill(CORRECTION)
    page.locator("#correction-button").click()
    wait_for_text(page, "#feedback-status", "pending")

    # The Admin tab: the password first; then the tools, with the queue loaded (pending examples under manual review).
    page.get_by_role("tab", name="Admin").click()
    assert not page.locator("#review-policy").is_visible()
    password = page.locator("#admin-password input")
    password.fill(server.password)
    page.locator("#admin-login").click()
    page.locator("#review-policy").wait_for()
    assert "manual" in page.locator("#review-policy").inner_text()
    wait_for_text(page, "#review-count", "1 example")
    # Click the row (the grid also renders a hidden copy of each cell, for measuring).
    page.locator("#review-table").get_by_text(CORRECTION).locator("visible=true").first.click()
    page.wait_for_function("document.querySelector('#review-original textarea').value.length > 0", timeout=20_000)
    original = page.locator("#review-original textarea").input_value()
    assert page.locator("#review-output textarea").input_value() == CORRECTION
    assert original and "Velmora" not in original  # the model's own answer, beside the correction

    page.locator("#review-approve").click()
    wait_for_text(page, "#review-result", "Approved 1 example")
    wait_for_text(page, "#review-count", "0 examples")  # the pending queue is empty now

    # Export from the Admin tab: a file to download.
    page.get_by_text("Import and export").click()
    page.locator("#export-button").click()
    wait_for_text(page, "#export-result", "Exported 21 jsonl records")
    link = page.locator("#export-file a[download='examples.jsonl']")
    link.wait_for()
    exported = page.request.get(link.get_attribute("href")).text().splitlines()
    assert len(exported) == 21 and CORRECTION in exported[-1]

    # Back in the chat, a fresh conversation: the same question is answered with the correction.
    page.get_by_role("tab", name="Chat").click()
    page.get_by_label("Clear").first.click()
    page.wait_for_function("!document.querySelector('#answer-info').innerText.includes('Message #')", timeout=20_000)
    ask(page, QUESTION)
    # Stated word for word, or guided as a demonstration: either way by that one example.
    page.wait_for_function(
        "/stated from example #\\d+|guided by 1 example/.test(document.querySelector('#answer-info').innerText)",
        timeout=60_000,
    )
    assert "Velmora" in page.locator("#chatbot").inner_text()

    db = sqlite3.connect(server.data_dir / "exemplar.db")
    db.row_factory = sqlite3.Row
    # The seed file was applied at start (approved, so not in the pending queue, and not relevant here).
    assert db.execute("select count(*) from examples where source = 'seed' and status = 'approved'").fetchone()[0] == 20
    (example,) = db.execute("select * from examples where source = 'correction'").fetchall()
    assert example["status"] == "approved" and example["output"] == CORRECTION
    approval = db.execute(
        "select * from example_history where example_id = ? and field = 'status'", [example["id"]]
    ).fetchone()
    assert (approval["old_value"], approval["new_value"], approval["actor"]) == ("pending", "approved", "admin")
    last = db.execute("select few_shot_ids from messages where role = 'assistant' order by id desc").fetchone()
    assert last["few_shot_ids"] == f"[{example['id']}]"
