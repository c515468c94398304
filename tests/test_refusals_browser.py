"""A real browser on a served app with a fake engine: a refusal (an empty box, no chat chosen,
an admin action with bad input) says why in a toast and leaves nothing over the page that takes
clicks. Gradio 6 covers each output of a failed event with an "Error" box that blocks the
component until its × is pressed; bot/ui/errors.py hides it (NO_ERROR_COVER). And "Delete the
chosen chat" is usable only while a chat is chosen in the list."""

from __future__ import annotations

import pytest

from tests.browser_steps import open_app, send_and_wait, settle, wait_for_text
from tests.live_app import ADMIN_PASSWORD, chat_ui

pytestmark = [pytest.mark.slow, pytest.mark.browser]

# Each click that must go through after a refusal: a cover over its element would make Playwright
# wait for it (the cover "intercepts pointer events") until this many milliseconds have passed.
CLICK_MS = 5_000

# The status trackers now in their failed state that show on the page: each one is a cover.
VISIBLE_COVERS = """() => [...document.querySelectorAll('[data-testid=status-tracker]')]
    .filter(e => e.querySelector(':scope > span.error'))
    .filter(e => { const r = e.getBoundingClientRect(), s = getComputedStyle(e);
                   return r.width > 0 && r.height > 0 && s.display !== 'none' && s.visibility !== 'hidden'
                          && s.opacity !== '0'; })
    .map(e => e.parentElement.id || e.parentElement.className)"""


def refused(page, words):
    """The refusal's toast says `words`; no failed output is left covered. The toast is then closed
    (it sits over the top right of the page for 10 s, which has nothing to do with covers)."""
    toast = page.locator(".toast-body", has_text=words)
    toast.wait_for(timeout=30_000)
    settle(page)
    assert page.evaluate(VISIBLE_COVERS) == []
    toast.locator(".toast-close").click()
    toast.wait_for(state="detached")


def wait_until(page, selector, *, enabled):
    page.wait_for_function(
        "([s, on]) => document.querySelector(s).disabled === !on", arg=[selector, enabled], timeout=30_000
    )
    settle(page)


def test_refusals_say_why_and_leave_the_page_usable(tmp_path, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    with chat_ui(tmp_path) as (store, url):
        open_app(page, url)
        chat = page.locator("#chatbot")
        # No chat is chosen as the page opens: nothing to delete.
        assert page.locator("#delete-chat").is_disabled()

        # Send with an empty box: refused; the chat area still takes clicks and answers.
        page.locator("#send-button").click()
        refused(page, "Type a message first")
        page.locator("#chat-input textarea").click(timeout=CLICK_MS)
        send_and_wait(page, "What is the capital of Zorvania?", "You said: What is the capital", timeout=30_000)
        # The answered chat is saved and chosen in the list: it can be deleted now.
        wait_for_text(page, "#chat-history", "1 answer")
        wait_until(page, "#delete-chat", enabled=True)

        # Save correction with an empty box: refused, nothing stored; the answer's thumbs still work.
        page.locator("#correction-button").click()
        refused(page, "Write the corrected answer first")
        assert store.list_examples(limit=None) == []
        chat.get_by_label("Like", exact=True).first.click(timeout=CLICK_MS)
        wait_for_text(page, "#feedback-status", "Liked")

        # A reload reopens the chat one was in, chosen in the list: Delete is on. New chat empties the choice: off.
        open_app(page, url)
        wait_for_text(page, "#chat-history-note", "Reopened")
        wait_until(page, "#delete-chat", enabled=True)
        page.locator("#new-chat").click(timeout=CLICK_MS)
        wait_until(page, "#delete-chat", enabled=False)
        # Choosing a chat turns it on; deleting that chat turns it off.
        page.locator("#chat-history label").first.click()
        wait_for_text(page, "#chat-history-note", "Reopened")
        wait_until(page, "#delete-chat", enabled=True)
        page.locator("#delete-chat").click()
        wait_for_text(page, "#chat-history-note", "Deleted")
        wait_until(page, "#delete-chat", enabled=False)

        # The Admin tab: a wrong password, then an example with no question, are refused the same way.
        page.get_by_role("tab", name="Admin").click()
        page.locator("#admin-password input").fill("not-the-password")
        page.locator("#admin-login").click()
        refused(page, "wrong")
        page.locator("#admin-password input").fill(ADMIN_PASSWORD)
        page.locator("#admin-login").click(timeout=CLICK_MS)
        page.locator("#review-policy").wait_for()
        settle(page)
        page.get_by_text("Add an example by hand").click()
        page.locator("#add-answer textarea").fill("Velmora.")
        before = store.list_examples(limit=None)  # the liked answer's
        page.locator("#add-example").click()
        refused(page, "empty")
        assert store.list_examples(limit=None) == before
        # The boxes the refusal left alone take clicks and text; the example is added.
        page.locator("#add-question textarea").click(timeout=CLICK_MS)
        page.keyboard.type("What is the capital of Zorvania?")
        page.locator("#add-example").click(timeout=CLICK_MS)
        wait_for_text(page, "#add-result", "Added example #")
        added = [e for e in store.list_examples(limit=None) if e["id"] not in {b["id"] for b in before}]
        assert [e["output"] for e in added] == ["Velmora."]
    page.close()
