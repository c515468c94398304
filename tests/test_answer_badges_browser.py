"""A real browser on the Chat tab, served in-process with a fake engine: every answer carries a
badge saying what made it, and it stays through an undo, a correction and reopening the chat; a
corrected answer is marked so, with the original a click away; the inline editor is sized to the
answer and its buttons are labelled."""

from __future__ import annotations

import pytest

from tests.browser_steps import open_app, send_and_wait, settle, wait_for_text
from tests.live_app import chat_ui

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def badges(page):
    """Each answer's badge text, in order ('' for an answer without one)."""
    return page.evaluate(
        "() => [...document.querySelectorAll('#chatbot .message-row.bot-row')].map(row => {"
        " const mark = row.querySelector('.answer-mark'); return mark ? mark.innerText : ''; })"
    )


def wait_for_badges(page, count):
    """Wait until the chat shows `count` answers, each with its badge; return the badges."""
    page.wait_for_function(
        "n => { const rows = [...document.querySelectorAll('#chatbot .message-row.bot-row')];"
        " return rows.length === n && rows.every(r => r.querySelector('.answer-mark .answer-badge')); }",
        arg=count, timeout=30_000,
    )
    return badges(page)


def test_every_answer_keeps_its_badge_and_a_correction_keeps_the_original(tmp_path, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    with chat_ui(tmp_path) as (store, url):
        open_app(page, url)
        chat = page.locator("#chatbot")
        send_and_wait(page, "What is the capital of Zorvania?", "You said: What is the capital of Zorvania?")
        send_and_wait(page, "And its river? " + "Tell me everything. " * 40, "You said: And its river?")
        send_and_wait(page, "And its flag?", "You said: And its flag?")
        first, second, third = wait_for_badges(page, 3)
        assert all(" · by model base" in b for b in (first, second, third))
        assert first.startswith("message #2") and second.startswith("message #4") and third.startswith("message #6")

        # Undo the last exchange: the answers left keep their badges.
        chat.get_by_label("Undo", exact=True).click()
        page.wait_for_function("document.querySelector('#chat-input textarea').value === 'And its flag?'")
        settle(page)
        assert wait_for_badges(page, 2) == [first, second]

        # Correct the long answer in place: the editor is as wide as the chat and as tall as the
        # answer, its buttons say what they do.
        chat.get_by_label("Edit", exact=True).last.click()
        editor = page.locator("#chatbot textarea.edit-textarea")
        box, whole = editor.bounding_box(), chat.bounding_box()
        assert box["width"] > 0.8 * whole["width"] and box["height"] > 100
        labels = page.evaluate(
            "() => ['Submit', 'Cancel'].map(l => getComputedStyle("
            "document.querySelector(`#chatbot button[aria-label=${l}]`), '::before').content)"
        )
        assert labels == ['"Save"', '"Cancel"']
        editor.fill("Zorvania's river is the Quell.")
        chat.get_by_label("Submit", exact=True).click()
        wait_for_text(page, "#feedback-status", "Correction of message #4")
        page.wait_for_function(
            "() => document.querySelectorAll('#chatbot .answer-corrected').length === 1", timeout=30_000
        )
        marked = wait_for_badges(page, 2)
        assert marked[0] == first and marked[1].startswith(second) and "corrected" in marked[1]
        corrected = chat.locator(".message-row.bot-row").nth(1)
        assert corrected.locator(".answer-corrected").count() == 1
        original = corrected.locator(".answer-original")
        assert not original.locator(".answer-original-text").is_visible()  # a click away, not in the way
        original.locator("summary", has_text="Original answer").click()
        assert original.locator(".answer-original-text").inner_text().startswith("You said: And its river?")

        # Reopen the chat from the list after a new one: the same badges, the corrected mark, the original.
        wait_for_text(page, "#chat-history", "2 answers")
        page.locator("#new-chat").click()
        page.wait_for_function("document.querySelectorAll('#chatbot [data-testid=bot]').length === 0")
        settle(page)
        page.locator("#chat-history label", has_text="capital of Zorvania").click()
        wait_for_text(page, "#chatbot", "the Quell")
        assert wait_for_badges(page, 2) == marked
        reopened = chat.locator(".message-row.bot-row").nth(1).locator(".answer-original")
        reopened.locator("summary").click()
        assert reopened.locator(".answer-original-text").inner_text().startswith("You said: And its river?")
    page.close()
