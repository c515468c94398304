"""A real browser against a real server with the bundled model: a question that is a near miss of
an approved answer (an adult ticket, where the bot was taught the child ticket) is not answered
with that answer. The bot says it has no answer yet and shows the taught one as related; once the
user corrects that reply, the same question is answered with the correction, word for word."""

from __future__ import annotations

import re
import sqlite3

import pytest

from tests.browser_steps import open_app, wait_for_text

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHILD_QUESTION = "How much is a child ticket on Ashvane Coaches?"
CHILD_ANSWER = "A child ticket on Ashvane Coaches costs 4.60 euros."
ADULT_QUESTION = "How much is an adult ticket on Ashvane Coaches?"
ADULT_ANSWER = "An adult ticket on Ashvane Coaches costs 7.90 euros."


def ask(page, question):
    """Type a question, send it, and wait until its answer is in and the line under the chat describes it."""
    box = page.locator("#chat-input textarea")
    box.fill(question)
    box.press("Enter")
    wait_for_text(page, "#answer-info", "Message #", timeout=90_000)
    page.locator("#send-button").wait_for(state="visible", timeout=30_000)


def new_chat(page):
    page.locator("#new-chat").click()
    page.wait_for_function(
        "document.querySelectorAll('#chatbot [data-testid=bot]').length === 0"
        " && !document.querySelector('#answer-info').innerText.includes('Message #')",
        timeout=20_000,
    )


def correct(page, text):
    """Write the right answer in "Correct this answer" and save it, as a user does."""
    page.locator("#correction-input textarea").fill(text)
    page.locator("#correction-button").click()
    wait_for_text(page, "#feedback-status", "Correction of message #")
    wait_for_text(page, "#chatbot", text)


def last_answer(page) -> str:
    return page.locator("#chatbot [data-testid=bot]").last.inner_text()


def corrections(server) -> list[sqlite3.Row]:
    db = sqlite3.connect(server.data_dir / "exemplar.db")
    db.row_factory = sqlite3.Row
    try:
        return db.execute("select * from examples where source = 'correction' order by id").fetchall()
    finally:
        db.close()


def test_a_near_miss_is_shown_as_related_and_its_correction_then_answers(live_server_factory, browser):
    server = live_server_factory("--max-new-tokens", "48")
    page = browser.new_page(viewport={"width": 1280, "height": 1100})
    open_app(page, server.url)

    # 1. Teach the child fare: ask, and correct the model's answer in "Correct this answer".
    ask(page, CHILD_QUESTION)
    assert "by model" in page.locator("#answer-info").inner_text()  # nothing approved yet: the model answered
    correct(page, CHILD_ANSWER)
    wait_for_text(page, "#feedback-status", "(approved)")  # loopback bind: auto review policy
    (child,) = corrections(server)
    assert child["output"] == CHILD_ANSWER and child["status"] == "approved"
    assert '"How much is a child ticket on Ashvane Coaches?"' in child["input"]

    # 2. A new chat, and the adult fare: a near miss. The bot says it has none, and shows the child fare as related.
    new_chat(page)
    ask(page, ADULT_QUESTION)
    reply = last_answer(page)
    assert reply.startswith("I don't have an answer to that yet."), reply
    related = f"A related answer I was given, to “{CHILD_QUESTION}”: “{CHILD_ANSWER}”"
    assert related in reply, reply
    assert "If you know the answer, correct this reply and I will use it from now on." in reply, reply
    # The fare appears only inside the quoted related answer: nothing outside the quotes states it.
    outside_quotes = re.sub(r"“[^”]*”", "", reply)
    assert "4.60" not in outside_quotes and "euro" not in outside_quotes, reply
    assert reply.count("4.60") == 1, reply
    info = page.locator("#answer-info").inner_text()
    assert (
        f"no example answers this question yet; example #{child['id']} "
        "shown as related, not as the answer"
    ) in info, info
    assert 'Know the answer? Write it in "Correct this answer" below (or edit the reply)' in info, info
    assert "by model" not in info and "word for word" not in info, info

    # 3. Correct that reply with the adult fare.
    correct(page, ADULT_ANSWER)
    wait_for_text(page, "#feedback-status", "(approved)")
    child_again, adult = corrections(server)
    assert child_again["output"] == CHILD_ANSWER
    assert adult["output"] == ADULT_ANSWER and adult["status"] == "approved"
    assert adult["rejected"].startswith("I don't have an answer to that yet.")  # the honest reply it replaced

    # 4. A new chat, the same question: the correction, word for word.
    new_chat(page)
    ask(page, ADULT_QUESTION)
    assert last_answer(page).strip() == ADULT_ANSWER
    info = page.locator("#answer-info").inner_text()
    assert f"stated from example #{adult['id']}, word for word" in info, info
    assert "shown as related" not in info, info
    page.close()
