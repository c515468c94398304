"""A real browser on the Chat tab, served in-process with a fake engine (the page's
behaviour is under test, not the model): past chats are kept per browser. A user
chats and likes an answer, starts a new chat, reopens the first one and finds its
messages and its rating, takes the rating back, goes on with it, and deletes a chat;
the list survives a reload of the page and a restart of the server."""

from __future__ import annotations

import re

import pytest

from core.config import ServeConfig
from storage import Store
from tests.browser_steps import open_app, send_and_wait, wait_for_text
from tests.fakes import FakeEngine
from tests.live_app import ADMIN_PASSWORD, build_app, serve_in_thread

pytestmark = [pytest.mark.slow, pytest.mark.browser]



def send(page, text, reply):
    send_and_wait(page, text, reply, timeout=30_000)


DATE = re.compile(r" · \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d UTC")


def past_chats(page, dated=False):
    """The labels of the list of past chats, top first (without the date each has, unless `dated`)."""
    labels = [t.strip() for t in page.locator("#chat-history label").all_inner_texts() if t.strip()]
    return labels if dated else [DATE.sub("", label) for label in labels]


def wait_for_list(page, count):
    page.wait_for_function(
        "n => document.querySelectorAll('#chat-history label').length === n", arg=count, timeout=30_000
    )


def serve(tmp_path, store, port=0):
    config = ServeConfig(data_dir=tmp_path, admin_password=ADMIN_PASSWORD)
    return serve_in_thread(build_app(store, FakeEngine(), config=config, ui=True), port=port)


def test_a_past_chat_reopens_with_its_messages_and_ratings(tmp_path, browser):
    store = Store(tmp_path / "exemplar.db")
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    with serve(tmp_path, store) as url:
        open_app(page, url)
        chat = page.locator("#chatbot")
        send(page, "What is the capital of Zorvania?", "You said: What is the capital of Zorvania?")
        chat.get_by_label("Like", exact=True).first.click()
        wait_for_text(page, "#feedback-status", "Liked")
        send(page, "And its river?", "You said: And its river?")
        wait_for_text(page, "#chat-history", "2 answers")
        assert past_chats(page) == ["What is the capital of Zorvania? · 2 answers"]

        # A new chat: the view empties, and its first answer puts it at the top of the list.
        page.locator("#new-chat").click()
        page.wait_for_function("document.querySelectorAll('#chatbot [data-testid=bot]').length === 0")
        send(page, "How tall is Mount Orrin?", "You said: How tall is Mount Orrin?")
        wait_for_list(page, 2)
        assert past_chats(page) == ["How tall is Mount Orrin? · 1 answer", "What is the capital of Zorvania? · 2 answers"]

        # Reopen the first chat: its messages, and its answer still liked (from the store).
        page.locator("#chat-history label", has_text="capital of Zorvania").click()
        wait_for_text(page, "#chat-history-note", "Reopened")
        button, note = page.locator("#delete-chat").bounding_box(), page.locator("#chat-history-note").bounding_box()
        assert 0 <= note["y"] - (button["y"] + button["height"]) < 80 and abs(note["x"] - button["x"]) < 20  # by the list
        wait_for_text(page, "#chatbot", "And its river?")
        assert "Mount Orrin" not in chat.inner_text()
        assert chat.get_by_label("Liked", exact=True).count() == 1
        # Its ratings still work: a second click takes the like back, stored for that answer.
        chat.get_by_label("Liked", exact=True).first.click()
        wait_for_text(page, "#feedback-status", "Rating removed")
        first_answer = store.list_feedback(limit=10)[0]["message_id"]
        assert [f["rating"] for f in store.message_feedback(first_answer)] == ["up", None]
        # It goes on: a third answer, with the earlier turns as its context.
        send(page, "And its flag?", "You said: And its flag?")
        wait_for_text(page, "#chat-history", "3 answers")
        assert past_chats(page)[0].startswith("What is the capital of Zorvania?")
        latest = [m for m in _messages(store) if m["role"] == "assistant"][-1]
        assert [m["content"] for m in latest["context"]][:2] == [
            "What is the capital of Zorvania?", "You said: What is the capital of Zorvania?"]

        # Delete the other chat.
        page.locator("#chat-history label", has_text="Mount Orrin").click()
        wait_for_text(page, "#chatbot", "How tall is Mount Orrin?")
        page.locator("#delete-chat").click()
        wait_for_text(page, "#chat-history-note", "Deleted")  # by the list, not under the chat
        wait_for_list(page, 1)
        assert chat.locator("[data-testid=bot]").count() == 0  # it was open: the view emptied

    # The list is this browser's: it is there after a reload against a restarted server
    # (on the same port: local storage belongs to an origin).
    with serve(tmp_path, store, port=int(url.rsplit(":", 1)[1])) as url:
        open_app(page, url)
        wait_for_list(page, 1)
        assert past_chats(page)[0].startswith("What is the capital of Zorvania? · 3 answers")
    context.close()
    store.close()


def fill(page, selector, text):
    page.locator(f"{selector} input, {selector} textarea").first.fill(text)


def test_the_last_chat_reopens_and_chats_can_be_renamed_searched_and_undeleted(tmp_path, browser):
    """Two chats that begin with the same question are told apart and dated; a reload reopens the chat
    one was in (not the one saved last); a rename, a search, and a delete taken back by Undo delete."""
    store = Store(tmp_path / "exemplar.db")
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    question = "What is the capital of Zorvania?"
    with serve(tmp_path, store) as url:
        open_app(page, url)
        send(page, question, f"You said: {question}")
        wait_for_list(page, 1)
        page.locator("#new-chat").click()
        page.wait_for_function("document.querySelectorAll('#chatbot [data-testid=bot]').length === 0")
        send(page, question, f"You said: {question}")
        send(page, "And its river?", "You said: And its river?")
        wait_for_text(page, "#chat-history", "2 answers")
        newer, older = past_chats(page, dated=True)
        assert newer != older and all(DATE.search(label) for label in (newer, older))
        assert older == DATE.search(older).expand(f"{question}\\g<0> · 1 answer")
        if DATE.search(newer).group() == DATE.search(older).group():  # begun in the same minute: numbered
            assert newer.startswith(f"{question} (2) · ")

        # Open the older chat, then reload: the chat one was in opens again, chosen in the list.
        page.locator("#chat-history label", has_text="1 answer").click()
        wait_for_text(page, "#chat-history-note", "Reopened")
        open_app(page, url)
        wait_for_list(page, 2)
        wait_for_text(page, "#chatbot", question)
        assert page.locator("#chatbot [data-testid=bot]").count() == 1
        assert page.locator("#chat-history label", has=page.locator("input:checked")).inner_text().endswith("1 answer")

        # Rename it; the search finds chats by title and by what was said.
        fill(page, "#rename-chat-name", "Trip planning")
        page.locator("#rename-chat").click()
        wait_for_text(page, "#chat-history", "Trip planning")
        assert past_chats(page) == [f"{question} · 2 answers", "Trip planning · 1 answer"]
        fill(page, "#chat-search", "trip")
        wait_for_list(page, 1)
        assert past_chats(page) == ["Trip planning · 1 answer"]
        fill(page, "#chat-search", "RIVER")
        page.wait_for_function("document.querySelector('#chat-history').innerText.includes('2 answers')")
        assert past_chats(page) == [f"{question} · 2 answers"]
        fill(page, "#chat-search", "")
        wait_for_list(page, 2)

        # Delete one, then take the delete back.
        undo = page.locator("#undo-delete")
        assert undo.count() == 0 or not undo.is_visible()
        page.locator("#chat-history label", has_text="2 answers").click()
        wait_for_text(page, "#chatbot", "And its river?")
        page.locator("#delete-chat").click()
        wait_for_list(page, 1)
        assert past_chats(page) == ["Trip planning · 1 answer"]
        undo.click()
        wait_for_text(page, "#chat-history-note", "Brought back")
        wait_for_list(page, 2)
        assert past_chats(page) == [f"{question} · 2 answers", "Trip planning · 1 answer"]
        page.locator("#undo-delete").wait_for(state="hidden")

        # All of it is kept in the browser: a reload shows it again.
        open_app(page, url)
        wait_for_list(page, 2)
        assert past_chats(page) == [f"{question} · 2 answers", "Trip planning · 1 answer"]
    context.close()
    store.close()


def _messages(store):
    conversations = store.count_conversations()
    return [m for c in range(1, conversations + 1) for m in store.conversation_messages(c)]
