"""A real browser on the Admin tab at 1280 px, served in-process with a fake engine
(the page's layout is under test, not the model): a user chats and corrects an
answer, then the admin finds the wide tables wrapped inside the screen, trims the
chat the correction stored as its context, and reads each confirmation next to the
button that caused it.

Set EXEMPLAR_SCREENSHOTS to a folder to keep a screenshot of the Examples table."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.config import ServeConfig
from storage import Store
from storage.exchange import seed_examples
from tests.browser_steps import open_app, send_and_wait, wait_for_text
from tests.fakes import FakeEngine
from tests.live_app import ADMIN_PASSWORD, build_app, serve_in_thread

pytestmark = [pytest.mark.slow, pytest.mark.browser]

WIDTH = 1280
SEED = Path(__file__).resolve().parent.parent / "examples" / "help_desk.jsonl"
QUESTION = "How do I export all of my data from the app, including my old invoices and the chat history?"
WRONG = ("To export your data, write to the support team and wait for a reply within thirty working days, "
         "then download the archive they send you by post.")
GREETING = "Hello! I am the help desk assistant: ask me about your account, billing or the app."
TYPESET_QUESTION = "Can I pay **by bank transfer**, $$x^2$$ or $y$ a month, \\frac{a}{b}?"
CORRECTION = ("Open Settings › Privacy and press Export data: a zip with your invoices and chat history is ready "
              "to download within a few minutes, and you get an email when it is.")


def ask(page, question, reply):
    """Send `question` and wait until `reply` has streamed in full and Send is back."""
    send_and_wait(page, question, reply[-30:])


def header_edges(page, table):
    """{column name: right edge in px} of the table's visible header cells."""
    return page.evaluate(
        """s => Object.fromEntries([...document.querySelectorAll(s + ' th')]
             .filter(th => th.offsetParent !== null && th.innerText.trim())
             .map(th => [th.innerText.trim(), th.getBoundingClientRect().right]))""",
        table,
    )


def below(page, first, second):
    """How far (px) the top of `second` is below the bottom of `first` (measured together, in one frame)."""
    return page.evaluate(
        "([a, b]) => document.querySelector(b).getBoundingClientRect().top"
        " - document.querySelector(a).getBoundingClientRect().bottom",
        [first, second],
    )


@pytest.fixture
def page(tmp_path, browser):
    store = Store(tmp_path / "exemplar.db")
    seed_examples(store, SEED)
    engine = FakeEngine()
    engine.enqueue(GREETING, WRONG)
    app = build_app(store, engine, config=ServeConfig(data_dir=tmp_path, admin_password=ADMIN_PASSWORD), ui=True)
    with serve_in_thread(app) as url:
        page = browser.new_page(viewport={"width": WIDTH, "height": 1000})
        open_app(page, url)
        yield page
        page.close()
    store.close()


def test_wide_tables_wrap_and_confirmations_show_by_their_buttons(page, capfd, caplog):
    # A user chats two turns and corrects the second answer: the correction stores the whole chat.
    ask(page, "Hi", GREETING)
    ask(page, QUESTION, WRONG)
    page.locator("#correction-input textarea").fill(CORRECTION)
    page.locator("#correction-button").click()
    wait_for_text(page, "#feedback-status", "stored as example")

    page.get_by_role("tab", name="Admin").click()
    # A mistyped password is refused with a message, and the server logs one line for it, no traceback.
    capfd.readouterr()
    page.locator("#admin-password input").fill(ADMIN_PASSWORD + "x")
    page.locator("#admin-login").click()
    page.get_by_text("The admin password is wrong").first.wait_for()
    refused = [r.getMessage() for r in caplog.records if r.name == "exemplar.ui"]
    assert refused == ["refused in the UI: The admin password is wrong"]
    assert "Traceback" not in capfd.readouterr().err
    page.locator("#admin-password input").fill(ADMIN_PASSWORD)
    page.locator("#admin-login").click()
    wait_for_text(page, "#review-count", "21 examples")
    page.locator("#review-table").get_by_text(CORRECTION[:40]).locator("visible=true").first.wait_for()

    # Every column, the output one included, ends inside the window; nothing scrolls sideways.
    edges = header_edges(page, "#review-table")
    assert {"question", "original answer", "output", "updated"} <= set(edges), edges
    assert max(edges.values()) <= WIDTH, edges
    assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH
    cell = page.locator("#review-table").get_by_text(CORRECTION[:40]).locator("visible=true").first.bounding_box()
    assert cell["x"] + cell["width"] <= WIDTH  # the output wraps inside its column
    if os.environ.get("EXEMPLAR_SCREENSHOTS"):
        page.screenshot(path=str(Path(os.environ["EXEMPLAR_SCREENSHOTS"]) / "after-admin-examples.png"), full_page=True)

    # The admin trims the correction's input to its last turn; the confirmation is by the Trim button.
    page.locator("#review-table").get_by_text(CORRECTION[:40]).locator("visible=true").first.click()
    wait_for_text(page, "#review-details", "input of 2 turns")
    assert "Hello! I am the help desk assistant" in page.locator("#review-details").inner_text()
    page.locator("#review-keep-turns input").fill("1")
    page.locator("#review-trim").click()
    wait_for_text(page, "#review-result", "Trimmed the input of 1 example to the last 1 turn")
    wait_for_text(page, "#review-details", "input of 1 turn")  # the page has refreshed
    assert 0 <= below(page, "#review-trim", "#review-result") < 120
    assert "Hello! I am the help desk assistant" not in page.locator("#review-details").inner_text()
    assert QUESTION in page.locator("#review-details").inner_text()
    page.get_by_text("Edit the input (chat messages as JSON)").click()  # or edit it by hand, as JSON
    wait_for_text(page, "#review-input", QUESTION[:30])
    assert "Hello! I am the help desk assistant" not in page.locator("#review-input").inner_text()

    # Adding an example by hand confirms under the Add button, not in the queue's line above.
    page.get_by_text("Add an example by hand").click()
    page.locator("#add-question textarea").fill(TYPESET_QUESTION)
    page.locator("#add-answer textarea").fill("Yes: choose Bank transfer under Settings › Billing.")
    page.locator("#add-example").click()
    wait_for_text(page, "#add-result", "Added example #22")
    assert 0 <= below(page, "#add-example", "#add-result") < 120
    assert "Added example" not in page.locator("#review-result").inner_text()
    # Its details show the characters the model will learn: no Markdown and no LaTeX rendered.
    page.locator("#review-ids textarea").fill("22")
    page.locator("#review-ids textarea").press("Enter")
    wait_for_text(page, "#review-details", "Example #22")
    assert TYPESET_QUESTION in page.locator("#review-details").inner_text()
    assert page.locator("#review-details .katex, #review-details strong").count() == 0

    # Trimming with no example chosen: a message by the button, one log line, no traceback.
    page.locator("#review-ids textarea").fill("")
    page.locator("#review-trim").click()
    page.get_by_text("Give one or more example ids").first.wait_for()
    assert "Traceback" not in capfd.readouterr().err
    assert sum("Give one or more example ids" in r.getMessage() for r in caplog.records) == 1

    # The Feedback view's table fits the window too.
    page.get_by_role("tab", name="Feedback").click()
    wait_for_text(page, "#feedback-count", "rating")
    page.locator("#feedback-table th").locator("visible=true").first.wait_for()
    edges = header_edges(page, "#feedback-table")
    assert {"comment", "answer", "message id"} <= set(edges) and max(edges.values()) <= WIDTH, edges
