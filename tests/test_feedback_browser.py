"""A real browser against a real server with the bundled model: ratings stay
on every answer as the chat goes on, a second click takes a rating back without
storing a second upvote, a thumbs-down's reason and comment show in the Admin
Feedback view, Stop ends a long answer, and a message sent while an answer
streams is answered next rather than dropped."""

from __future__ import annotations

import sqlite3

import pytest

from tests.browser_steps import open_app
from tests.live_app import LiveServer

pytestmark = [pytest.mark.slow, pytest.mark.browser]


@pytest.fixture(scope="module")
def live_server(tmp_path_factory, bundled_checkpoint):
    """One `launch.py serve` with the bundled model for the tests here (starting one takes tens of seconds)."""
    server = LiveServer(tmp_path_factory.mktemp("feedback-data"), bundled_checkpoint, "--max-new-tokens", "160")
    yield server.wait_ready()
    server.stop()


@pytest.fixture
def page(live_server, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    open_app(page, live_server.url)
    yield page
    page.close()


def db(live_server):
    connection = sqlite3.connect(live_server.data_dir / "exemplar.db")
    connection.row_factory = sqlite3.Row
    return connection


def send(page, text, *, wait=True):
    box = page.locator("#chat-input textarea")
    box.fill(text)
    box.press("Enter")
    page.locator("#stop-button").wait_for(state="visible", timeout=20_000)
    if wait:
        page.locator("#send-button").wait_for(state="visible", timeout=120_000)


def status_says(page, text):
    page.wait_for_function(
        "t => document.querySelector('#feedback-status').innerText.includes(t)", arg=text, timeout=20_000
    )


def test_ratings_stay_visible_and_a_second_click_takes_them_back(page, live_server):
    chat = page.locator("#chatbot")
    send(page, "What is the capital of France? Answer in one sentence.")
    chat.get_by_label("Like", exact=True).first.click()
    status_says(page, "Liked")
    send(page, "And the capital of Spain? One sentence.")
    # The first answer's thumb is still up after another answer.
    assert chat.get_by_label("Liked", exact=True).count() == 1
    chat.get_by_label("Dislike", exact=True).last.click()
    status_says(page, "Disliked")
    # A second click on the raised thumb takes the rating back: no second upvote.
    chat.get_by_label("Liked", exact=True).first.click()
    status_says(page, "Rating removed")
    send(page, "And of Italy? One sentence.")
    assert chat.get_by_label("Liked", exact=True).count() == 0
    assert chat.get_by_label("Disliked", exact=True).count() == 1

    rows = db(live_server).execute("select * from examples where source = 'upvote'").fetchall()
    assert len(rows) == 1 and rows[0]["status"] == "rejected"  # liked once, then withdrawn
    first_answer = rows[0]["message_id"]
    ratings = [r["rating"] for r in db(live_server).execute(
        "select rating from feedback where message_id = ? order by id", [first_answer])]
    assert ratings == ["up", None]


def test_a_thumbs_down_reason_and_comment_show_in_the_feedback_view(page, live_server):
    chat = page.locator("#chatbot")
    send(page, "Who wrote Hamlet? One sentence.")
    chat.get_by_label("Dislike", exact=True).last.click()
    status_says(page, "Disliked")
    panel = chat.locator(".rating-panel")  # the thumb opens it under the answer
    panel.get_by_role("button", name="Too long").click()
    panel.get_by_label("Comment").fill("It should name the year too")
    panel.get_by_role("button", name="Save details").click()
    status_says(page, "(too long")
    answer_id = db(live_server).execute("select max(id) from messages where role = 'assistant'").fetchone()[0]
    rows = db(live_server).execute("select rating, reason, comment from feedback where message_id = ?", [answer_id]).fetchall()
    assert [tuple(r) for r in rows][-1][:2] == ("down", "too long")

    page.get_by_role("tab", name="Admin").click()
    password = page.locator("#admin-password input")
    password.fill(live_server.password)
    password.press("Enter")
    page.get_by_role("tab", name="Feedback").click()
    search = page.locator("#feedback-filter-text textarea")
    search.fill("Hamlet")
    search.press("Enter")
    page.wait_for_function("document.querySelector('#feedback-count').innerText.includes('1 down')", timeout=20_000)
    table = page.locator("#feedback-table")
    table.get_by_text("Who wrote Hamlet?").locator("visible=true").first.wait_for(timeout=20_000)
    text = table.inner_text()
    assert "too long" in text and "It should name the year too" in text and "base" in text
    # The reason refined the rating: one current row for this answer, not two.
    assert text.count("Who wrote Hamlet?") == 1
    table.get_by_text("Who wrote Hamlet?").locator("visible=true").first.click()
    page.wait_for_function("document.querySelector('#feedback-details').innerText.includes('Comment')", timeout=20_000)
    details = page.locator("#feedback-details").inner_text()
    assert "It should name the year too" in details and "too long" in details and "made no example" in details

    page.locator("#feedback-export").click()
    link = page.locator("#feedback-file a[download='feedback.jsonl']")
    link.wait_for(timeout=20_000)
    exported = page.request.get(link.get_attribute("href")).text()
    assert '"reason": "too long"' in exported and "It should name the year too" in exported


def test_stop_ends_a_long_answer_and_a_message_sent_meanwhile_is_answered(page, live_server):
    send(page, "Write a very long story about a dragon who learns to cook.", wait=False)
    page.wait_for_function(
        "document.querySelectorAll('#chatbot [data-testid=bot]').length > 0"
        " && document.querySelector('#chatbot [data-testid=bot]').innerText.length > 20",
        timeout=60_000,
    )
    page.locator("#stop-button").click()
    page.locator("#send-button").wait_for(state="visible", timeout=15_000)
    page.wait_for_function("document.querySelector('#answer-info').innerText.includes('Stopped')", timeout=15_000)
    stopped = db(live_server).execute("select * from messages where role = 'assistant' order by id desc").fetchone()
    assert 20 < len(stopped["content"]) and len(stopped["content"]) < 1000
    assert page.locator(".toast-body").count() == 0  # no red error

    # A message typed and sent while an answer streams is queued and answered next.
    send(page, "Name three colours.", wait=False)
    box = page.locator("#chat-input textarea")
    box.fill("Name three fruits.")
    box.press("Enter")
    page.wait_for_function(
        "[...document.querySelectorAll('#chatbot [data-testid=user]')].some(e => e.innerText.includes('three fruits'))",
        timeout=120_000,
    )
    page.locator("#send-button").wait_for(state="visible", timeout=120_000)
    page.wait_for_timeout(500)
    page.locator("#send-button").wait_for(state="visible", timeout=120_000)
    users = [m["content"] for m in db(live_server).execute("select content from messages where role = 'user' order by id")]
    assert users[-2:] == ["Name three colours.", "Name three fruits."]


def test_the_server_exits_on_sigterm_with_a_browser_tab_open(live_server_factory, browser):
    import signal
    import time

    other = live_server_factory()
    page = browser.new_page()
    open_app(page, other.url)
    page.locator("#chat-input textarea").wait_for()
    started = time.monotonic()
    other.process.send_signal(signal.SIGTERM)
    other.process.wait(timeout=30)
    assert time.monotonic() - started < 15
    page.close()
