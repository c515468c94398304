"""Eight people chatting at once in real browsers against a real server with the
bundled model: every answer streams, and all eight stream together (the chat
UI admits as many chats as the engine's batch decodes)."""

import time

import pytest

from tests.browser_steps import open_app

pytestmark = [pytest.mark.slow, pytest.mark.browser]

QUESTIONS = [
    "Write a long essay about the history of bicycles.",
    "Write a long essay about the history of trains.",
    "Write a long essay about the history of ships.",
    "Write a long essay about the history of bridges.",
    "Write a long essay about the history of clocks.",
    "Write a long essay about the history of paper.",
    "Write a long essay about the history of music.",
    "Write a long essay about the history of bread.",
]

ANSWER_JS = """() => {
    const rows = document.querySelectorAll('#chatbot .bot-row');
    const done = document.querySelector('#answer-info').innerText.includes('Message #');
    return [rows.length ? rows[rows.length - 1].innerText.trim().length : 0, done];
}"""


def test_eight_pages_chatting_at_once_all_stream_together(live_server_factory, browser):
    server = live_server_factory()
    pages = []
    for _ in QUESTIONS:
        page = browser.new_context().new_page()
        open_app(page, server.url)
        page.locator("#chat-input textarea").wait_for(timeout=60_000)
        pages.append(page)
    for page, question in zip(pages, QUESTIONS):
        box = page.locator("#chat-input textarea")
        box.fill(question)
        box.press("Enter")

    started = time.monotonic()
    lengths = [[] for _ in pages]  # the answer's length at each look, while not done
    first_text = [None] * len(pages)
    done_at = [None] * len(pages)
    while None in done_at and time.monotonic() - started < 300:
        for i, page in enumerate(pages):
            if done_at[i] is not None:
                continue
            length, done = page.evaluate(ANSWER_JS)
            now = time.monotonic() - started
            if length and first_text[i] is None:
                first_text[i] = now
            if done:
                done_at[i] = now
            elif length:
                lengths[i].append(length)
        time.sleep(0.2)

    assert None not in done_at, f"answers not finished after 300 s: {done_at}"
    for i, seen in enumerate(lengths):
        # Streaming: the answer was seen part-written, and growing, before it was done.
        assert len(set(seen)) >= 2, f"page {i} never showed its answer growing: {seen}"
    # All eight were answering at the same time: the last to start began before the first finished.
    assert max(first_text) < min(done_at), f"first text {first_text}, done {done_at}"
