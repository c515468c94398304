"""A real browser against a real server with the bundled model: ask, dislike,
edit the answer, and find the correction stored as an example."""

import sqlite3

import pytest

from tests.browser_steps import open_app

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def test_dislike_and_edit_an_answer_stores_the_correction(live_server_factory, browser):
    server = live_server_factory()
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    open_app(page, server.url)
    box = page.locator("#chat-input textarea")
    box.fill("What is the capital of France?")
    box.press("Enter")
    page.wait_for_function("document.querySelector('#answer-info').innerText.includes('Message #')", timeout=90_000)
    original = page.locator("#chatbot").inner_text()
    assert "Paris" in original  # the bundled model knows this one

    page.get_by_label("Dislike").last.click()
    page.wait_for_function("document.querySelector('#feedback-status').innerText.includes('Disliked')", timeout=20_000)

    page.get_by_label("Edit").last.click()
    page.locator("textarea.edit-textarea").fill("Paris. It has been the capital of France since 987.")
    page.get_by_label("Submit").last.click()
    page.wait_for_function("document.querySelector('#feedback-status').innerText.includes('Correction')", timeout=20_000)
    assert "Paris. It has been the capital of France since 987." in page.locator("#chatbot").inner_text()

    db = sqlite3.connect(server.data_dir / "exemplar.db")
    db.row_factory = sqlite3.Row
    (example,) = db.execute("select * from examples where source = 'correction'").fetchall()
    assert example["output"] == "Paris. It has been the capital of France since 987."
    assert "Paris" in example["rejected"] and example["rejected"] != example["output"]
    assert example["status"] == "approved"  # loopback bind: auto review policy
    assert '"What is the capital of France?"' in example["input"]
    ratings = [r["rating"] for r in db.execute("select rating from feedback order by id")]
    assert ratings[0] == "down"
    answer = db.execute("select * from messages where id = ?", [example["message_id"]]).fetchone()
    assert answer["role"] == "assistant" and answer["model_version"] == "base"
