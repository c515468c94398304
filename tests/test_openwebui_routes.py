"""The routes a linked front end (Open WebUI) uses, over real HTTP on a real database: its answers are
linked by the message id header, its ratings are stored once per rating id whatever is resent, a rating
deleted there is withdrawn here, a correction keeps the answer it replaces, and the token opens these
routes and nothing else. The real Open WebUI drives them in tests/test_openwebui.py."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from bot.auth import AdminGuard
from storage import Store
from tests.live_app import ADMIN, ADMIN_PASSWORD

TOKEN = "integration-token-0123456789"
BY_TOKEN = {"Authorization": f"Bearer {TOKEN}"}
QUESTION = [{"role": "user", "content": "What is the capital of Australia?"}]


@pytest.fixture
def owui(make_client):
    return make_client(integration=AdminGuard(ADMIN_PASSWORD, also=(TOKEN,), secret_name="integration token"))


def chat(client, message_id: str | None, *, headers=BY_TOKEN, task: str = "", user: str = "user-1") -> dict:
    sent = {**headers, "X-OpenWebUI-Task": task, "X-OpenWebUI-User-Id": user, "X-OpenWebUI-Chat-Id": "chat-1"}
    if message_id is not None:
        sent["X-OpenWebUI-Message-Id"] = message_id
    response = client.post("/v1/chat/completions", json={"messages": QUESTION}, headers=sent)
    assert response.status_code == 200, response.text
    return response.json()


def rating(message_id: str, value: int, updated_at: int, user: str = "user-1", **extra) -> dict:
    return {"message_id": message_id, "user_id": user, "rating": value, "updated_at": updated_at, **extra}


def current(store: Store, message_id: int) -> list[dict]:
    return [f for f in store.list_feedback() if f["message_id"] == message_id]


def test_a_rating_made_there_reaches_the_answer_it_names(owui, store, engine):
    engine.enqueue("Sydney.")
    owui_id = str(uuid.uuid4())
    answer = chat(owui, owui_id)
    sent = rating(owui_id, -1, 100, reason="not_factually_correct", comment="It is Canberra",
                  tags=["geography", "x" * 80, "geography", *[f"t{i}" for i in range(20)]], score=2)
    response = owui.put("/api/openwebui/feedback/fb-1", json=sent, headers=BY_TOKEN)
    assert response.status_code == 200, response.text
    assert response.json()["message_id"] == int(answer["id"])
    [row] = current(store, int(answer["id"]))
    assert (row["rating"], row["reason"], row["comment"], row["score"]) == ("down", "Wrong fact", "It is Canberra", 2)
    assert row["rater"] == "openwebui:user-1"
    assert row["tags"][:2] == ["geography", "x" * 50] and len(row["tags"]) == 10  # kept within the store's bounds

    # The same rating again (an event and a sync both send it) stores nothing new.
    again = owui.put("/api/openwebui/feedback/fb-1", json=sent, headers=BY_TOKEN).json()
    assert again["unchanged"] and len(store.message_feedback(int(answer["id"]))) == 1
    # Changed there (thumb up; Open WebUI resets the reason): the same rating changes here.
    up = owui.put("/api/openwebui/feedback/fb-1", json=rating(owui_id, 1, 101, comment="It is Canberra"),
                  headers=BY_TOKEN).json()
    [row] = current(store, int(answer["id"]))
    assert (row["rating"], row["reason"]) == ("up", None) and up["example_id"] is not None
    # A late copy of the older thumb (sent before the change, arriving after it) changes nothing.
    late = owui.put("/api/openwebui/feedback/fb-1", json=sent, headers=BY_TOKEN).json()
    assert late["unchanged"] and current(store, int(answer["id"]))[0]["rating"] == "up"

    # Deleted there: withdrawn here, and the upvote example with it.
    assert owui.delete("/api/openwebui/feedback/fb-1", headers=BY_TOKEN).json() == {"withdrawn": True}
    assert current(store, int(answer["id"]))[0]["rating"] is None
    assert store.get_example(up["example_id"])["status"] == "rejected"
    assert owui.delete("/api/openwebui/feedback/fb-1", headers=BY_TOKEN).json() == {"withdrawn": False}


def test_only_the_token_holder_links_answers_and_tasks_are_not_stored(owui, store):
    owui_id = str(uuid.uuid4())
    chat(owui, owui_id, headers={"Authorization": "Bearer sk-someone-else"})  # another client's own key
    refused = owui.put("/api/openwebui/feedback/fb-2", json=rating(owui_id, -1, 1), headers=BY_TOKEN)
    assert refused.status_code == 404 and "message id" in refused.json()["error"]

    before = store.count_messages()
    titled = chat(owui, str(uuid.uuid4()), task="title_generation")
    assert titled["exemplar"]["stored"] is False and store.count_messages() == before

    # Without the token, or with a wrong one, no route answers, and the token opens no admin route.
    assert owui.put("/api/openwebui/feedback/fb-3", json=rating(owui_id, -1, 1)).status_code == 401
    wrong = owui.post("/api/openwebui/feedback/sync", json={"feedback": []}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "integration token" in wrong.json()["error"]
    assert owui.get("/api/examples", headers=BY_TOKEN).status_code == 401
    assert owui.post("/api/openwebui/feedback/sync", json={"feedback": []}, headers=ADMIN).status_code == 200


def test_bad_bodies_get_a_clear_4xx_and_store_nothing(owui, store):
    owui_id = str(uuid.uuid4())
    chat(owui, owui_id)
    for body, field in [
        (rating(owui_id, 5, 1), "rating"),
        (rating(owui_id, -1, 1, score=11), "score"),
        (rating(owui_id, -1, "soon"), "updated_at"),
        ({**rating(owui_id, -1, 1), "extra": 1}, "extra"),
        (rating("not an id!", -1, 1), "message_id"),
    ]:
        response = owui.put("/api/openwebui/feedback/fb-4", json=body, headers=BY_TOKEN)
        assert response.status_code == 422 and field in response.json()["error"], (body, response.text)
    empty = owui.post("/api/openwebui/corrections", json={"message_id": owui_id, "user_id": "u", "correction": ""},
                      headers=BY_TOKEN)
    assert empty.status_code == 422 and "correction" in empty.json()["error"]
    assert store.list_feedback() == [] and store.list_examples() == []


def test_sync_sends_what_was_missed_and_withdraws_what_was_deleted(owui, store):
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    first_answer, second_answer = int(chat(owui, first)["id"]), int(chat(owui, second)["id"])
    assert owui.put("/api/openwebui/feedback/a", json=rating(first, -1, 10), headers=BY_TOKEN).status_code == 200
    assert owui.put("/api/openwebui/feedback/b", json=rating(second, 1, 10), headers=BY_TOKEN).status_code == 200
    # One rating of another model's answer: refused, and not asked for again until it changes.
    other = owui.put("/api/openwebui/feedback/other", json=rating("elsewhere", 1, 10), headers=BY_TOKEN)
    assert other.status_code == 404

    # Open WebUI now holds: a changed, b deleted, c new (made while this server was down), other unchanged.
    listed = [{"id": "a", "updated_at": 12}, {"id": "c", "updated_at": 11}, {"id": "other", "updated_at": 10}]
    result = owui.post("/api/openwebui/feedback/sync", json={"feedback": listed}, headers=BY_TOKEN).json()
    assert sorted(result["wanted"]) == ["a", "c"] and result["withdrawn"] == ["b"]
    assert current(store, first_answer)[0]["rating"] == "down"
    assert current(store, second_answer)[0]["rating"] is None  # b's thumb is withdrawn


def test_a_correction_keeps_the_answer_it_replaces_and_the_next_answer_says_so(owui, store, engine):
    engine.enqueue("The capital of Australia is Sydney.")
    owui_id = str(uuid.uuid4())
    answer = chat(owui, owui_id)
    body = {"message_id": owui_id, "user_id": "user-1", "correction": "The capital of Australia is Canberra."}
    response = owui.post("/api/openwebui/corrections", json=body, headers=BY_TOKEN)
    assert response.status_code == 201, response.text
    made = response.json()
    example = store.get_example(made["example_id"])
    assert (example["source"], example["output"], example["rejected"]) == (
        "correction", "The capital of Australia is Canberra.", "The capital of Australia is Sydney.")
    assert example["input"] == QUESTION and made["message_id"] == int(answer["id"])
    assert f"example #{made['example_id']}" in made["note"] and "next answer" in made["note"]

    # The next answer to the question comes from that example, and its note says so.
    next_id = str(uuid.uuid4())
    chat(owui, next_id)
    note = owui.get(f"/api/openwebui/messages/{next_id}", headers=BY_TOKEN).json()
    assert f"example #{made['example_id']}" in note["note"] and note["note"].startswith("Exemplar base")
    assert owui.get(f"/api/openwebui/messages/{owui_id}", headers=BY_TOKEN).json()["corrected"] is True
    assert owui.get("/api/openwebui/messages/unknown", headers=BY_TOKEN).status_code == 404


def test_dozens_of_ratings_at_once_are_each_stored_once(make_server, store, engine):
    url = make_server(integration=AdminGuard(ADMIN_PASSWORD, also=(TOKEN,)))
    ids = [str(uuid.uuid4()) for _ in range(6)]
    with httpx.Client(base_url=url, headers=BY_TOKEN, timeout=60) as http:
        for n, owui_id in enumerate(ids):
            sent = {**BY_TOKEN, "X-OpenWebUI-Message-Id": owui_id}
            question = [{"role": "user", "content": f"What is on page {n} of the manual?"}]
            assert http.post("/v1/chat/completions", json={"messages": question}, headers=sent).status_code == 200

        def send(n: int) -> int:
            # 24 people rate the 6 answers; each rating is sent three times (event, retry, sync), out of order.
            owui_id, user = ids[n % 6], f"user-{n}"
            body = rating(owui_id, 1 if n % 2 else -1, 5, user=user, comment=f"from {user}")
            return http.put(f"/api/openwebui/feedback/fb-{n}", json=body).status_code

        with ThreadPoolExecutor(max_workers=24) as pool:
            codes = list(pool.map(send, [n for n in range(24) for _ in range(3)]))
    assert codes == [200] * 72
    rows = store.list_feedback(current_only=False)
    assert len(rows) == 24 and {r["rater"] for r in rows} == {f"openwebui:user-{n}" for n in range(24)}
    assert all(r["comment"] == f"from {r['rater'].split(':')[1]}" for r in rows)
    # One example per liked answer (the odd ones), however many like it; none of the disliked ones.
    assert len(store.list_examples(source="upvote")) == 3


def test_a_restart_duplicates_nothing(tmp_path):
    path = tmp_path / "exemplar.db"
    store = Store(path)
    conversation = store.create_conversation()
    store.add_message(conversation, "user", "Q?")
    message = store.add_message(conversation, "assistant", "A.", context=[{"role": "user", "content": "Q?"}])
    other = store.add_message(conversation, "assistant", "B.", context=[{"role": "user", "content": "Q?"}])
    store.link_message("openwebui", "m-1", message)
    store.link_message("openwebui", "m-1", other)  # a second link of the same id does not move it
    store.record_linked_feedback("openwebui", "fb", "m-1", updated_at=7, rater="openwebui:u", status="approved",
                                 rating="down", comment="wrong")
    store.close()
    again = Store(path)
    resent = again.record_linked_feedback("openwebui", "fb", "m-1", updated_at=7, rater="openwebui:u",
                                          status="approved", rating="down", comment="wrong")
    assert resent["unchanged"] and len(again.message_feedback(message)) == 1
    assert again.linked_feedback_times("openwebui") == {"fb": 7}
    again.close()
