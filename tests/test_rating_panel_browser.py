"""A real browser on the Chat tab, served in-process with a fake engine: rating goes thumb, then
reason, then comment, in a panel attached to the answer rated (as Open WebUI's), and what was said
stays on that answer after the next message and after a reload; a message sent while an answer
streams says that it waits its turn; at 400 px the input box keeps the whole width."""

from __future__ import annotations

import pytest

from tests.browser_steps import open_app, send_and_wait, settle, wait_for_text
from tests.fakes import FakeEngine
from tests.live_app import chat_ui

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def rows(page):
    return page.locator("#chatbot .message-row.bot-row")


def test_thumb_then_reason_then_comment_in_a_panel_under_the_answer_that_stays(tmp_path, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    with chat_ui(tmp_path) as (store, url):
        open_app(page, url)
        chat = page.locator("#chatbot")
        send_and_wait(page, "Who wrote Hamlet? " + "Tell me everything. " * 30, "You said: Who wrote Hamlet?")
        assert page.locator("#feedback-comment").count() == 0  # no comment box to fill before the thumb

        # 1. The thumb, first: stored at once, and the panel opens under that answer, in sight.
        chat.get_by_label("Dislike", exact=True).last.click()
        wait_for_text(page, "#feedback-status", "Disliked message #2")
        panel = rows(page).last.locator(".rating-panel")
        panel.wait_for(state="visible", timeout=10_000)
        answer_box = rows(page).last.locator("[data-testid=bot]").bounding_box()
        panel_box, chat_box = panel.bounding_box(), chat.bounding_box()
        assert panel_box["y"] >= answer_box["y"] + answer_box["height"] - 1  # under the answer's text
        assert chat_box["y"] <= panel_box["y"] and panel_box["y"] + 40 <= chat_box["y"] + chat_box["height"]
        assert "What was wrong?" in panel.inner_text()
        (rating,) = store.message_feedback(2)
        assert (rating["rating"], rating["reason"], rating["comment"]) == ("down", None, None)

        # 2. The reason, 3. the comment, then tags and a score; Save.
        panel.get_by_role("button", name="Too long").click()
        panel.get_by_label("Comment").fill("It should name the year too")
        panel.get_by_label("Tags").fill("literature, dates")
        panel.get_by_role("button", name="3", exact=True).click()
        panel.get_by_role("button", name="Save details").click()
        wait_for_text(page, "#feedback-status", "(too long · #literature, #dates · 3/10 · “It should name the year too”)")
        assert rows(page).last.locator(".rating-panel").count() == 0
        said = "👎 disliked · too long · #literature, #dates · 3/10 · “It should name the year too”"
        wait_for_text(page, "#chatbot .answer-rating", said)
        current = store.current_rating(2, store.message_feedback(2)[-1]["rater"])
        assert (current["rating"], current["reason"], current["comment"], current["tags"], current["score"]) == (
            "down", "too long", "It should name the year too", ["literature", "dates"], 3)

        # Still shown on that answer after the next message, and after a reload.
        send_and_wait(page, "And Macbeth?", "You said: And Macbeth?")
        page.wait_for_function("document.querySelectorAll('#chatbot .message-row.bot-row').length === 2")
        settle(page)
        assert said in rows(page).first.locator(".answer-rating").inner_text()
        assert rows(page).last.locator(".answer-rating").count() == 0
        open_app(page, url)
        wait_for_text(page, "#chatbot", "You said: And Macbeth?")
        page.wait_for_function(
            "t => { const r = document.querySelector('#chatbot .message-row.bot-row .answer-rating');"
            " return r && r.innerText.includes(t); }", arg=said, timeout=20_000,
        )

        # "Edit rating details" opens the panel again, filled in with what was saved.
        rows(page).first.get_by_role("button", name="Edit rating details").click()
        panel = rows(page).first.locator(".rating-panel")
        panel.wait_for(state="visible", timeout=10_000)
        assert panel.get_by_label("Comment").input_value() == "It should name the year too"
        assert panel.get_by_role("button", name="Too long").get_attribute("aria-pressed") == "true"
        panel.get_by_role("button", name="Close").click()
        assert rows(page).first.locator(".rating-panel").count() == 0

        # A thumbs-up opens the panel too (no reasons); its comment is kept with the upvote example.
        chat.get_by_label("Like", exact=True).last.click()
        panel = rows(page).last.locator(".rating-panel")
        panel.wait_for(state="visible", timeout=10_000)
        assert "What was good?" in panel.inner_text() and panel.locator(".rating-reason").count() == 0
        wait_for_text(page, "#feedback-status", "Liked message #4")
        panel.get_by_label("Comment").fill("Short and right")
        panel.get_by_role("button", name="Save details").click()
        wait_for_text(page, "#chatbot", "👍 liked · “Short and right”")
        assert store.current_rating(4, store.message_feedback(4)[-1]["rater"])["comment"] == "Short and right"
        assert [e["message_id"] for e in store.list_examples(source="upvote")] == [4]

        # Clicking the raised thumb takes the rating back and the badge forgets it.
        chat.get_by_label("Liked", exact=True).last.click()
        wait_for_text(page, "#feedback-status", "Rating removed")
        page.wait_for_function(
            "() => { const r = [...document.querySelectorAll('#chatbot .message-row.bot-row')];"
            " return r.length === 2 && !r[1].querySelector('.answer-rating'); }", timeout=20_000,
        )
    page.close()


def test_a_message_sent_while_an_answer_streams_says_it_waits_and_a_narrow_screen_keeps_the_box_wide(
    tmp_path, browser
):
    page = browser.new_page(viewport={"width": 400, "height": 800})
    with chat_ui(tmp_path, FakeEngine(piece_delay=0.1)) as (store, url):
        open_app(page, url)
        box = page.locator("#chat-input textarea")
        # At 400 px the input box takes the width of the chat, not a narrow column beside the buttons.
        assert box.bounding_box()["width"] >= 0.8 * page.locator("#chatbot").bounding_box()["width"]
        # The chat comes before the list of past chats.
        assert page.locator("#chatbot").bounding_box()["y"] < page.locator("#chat-history").bounding_box()["y"]
        box.fill("Tell me a long story " + "and more " * 30)
        box.press("Enter")
        page.locator("#stop-button").wait_for(state="visible", timeout=20_000)
        note = page.locator("#queued-note")
        assert note.is_hidden()
        box.fill("And a second one?")
        box.press("Enter")
        note.wait_for(state="visible", timeout=5_000)
        assert "waits its turn" in note.inner_text()
        # Both are answered, in order, and the sign goes once nothing waits.
        page.wait_for_function(
            "() => [...document.querySelectorAll('#chatbot [data-testid=bot]')].some("
            "b => b.innerText.includes('You said: And a second one?'))", timeout=60_000,
        )
        page.locator("#send-button").wait_for(state="visible", timeout=60_000)
        note.wait_for(state="hidden", timeout=10_000)
        settle(page)
        users = [r[0] for r in store.db.execute("select content from messages where role = 'user' order by id")]
        assert len(users) == 2 and users[1] == "And a second one?"
    page.close()
