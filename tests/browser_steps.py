"""Steps that browser tests share: waiting for text in an element, and sending a
chat message and waiting until its answer has streamed in and Send is back."""

from __future__ import annotations


def wait_for_text(page, selector, text, timeout=60_000):
    page.wait_for_function(
        "([s, t]) => { const el = document.querySelector(s); return el && el.innerText.includes(t); }",
        arg=[selector, text], timeout=timeout,
    )


def send_and_wait(page, text, expect, timeout=60_000):
    """Send `text` from the chat box and wait until the last answer contains `expect` and Send is back."""
    box = page.locator("#chat-input textarea")
    box.fill(text)
    box.press("Enter")
    page.wait_for_function(
        "r => { const bots = document.querySelectorAll('#chatbot [data-testid=bot]');"
        " return bots.length && bots[bots.length - 1].innerText.includes(r); }",
        arg=expect, timeout=timeout,
    )
    page.locator("#send-button").wait_for(state="visible")
