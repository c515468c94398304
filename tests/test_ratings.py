"""One rating per answer per person: the latest wins, a reason refines a
thumbs-down, the same click twice stores nothing, history is kept, and an
answer has one upvote example however many people like it. Checked in the
store, then with dozens of concurrent clients against a real server."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from storage import Store
from storage.errors import ValidationError

A, B = "a" * 32, "b" * 32


def answer(store: Store, text: str = "Paris.") -> int:
    conversation = store.create_conversation()
    store.add_message(conversation, "user", "Capital of France?")
    return store.add_message(
        conversation, "assistant", text, context=[{"role": "user", "content": "Capital of France?"}], model_version="base"
    )


def rate(store, message_id, rating, rater=A, **kw):
    return store.record_feedback(message_id, rating=rating, status="approved", actor="ui", rater=rater, **kw)


def upvotes(store):
    return store.list_examples(source="upvote")


def test_the_same_click_twice_stores_one_row(store):
    m = answer(store)
    first = rate(store, m, "up")
    again = rate(store, m, "up")
    assert again["unchanged"] and again["example_id"] == first["example_id"]
    assert len(store.message_feedback(m)) == 1 and len(upvotes(store)) == 1


def test_a_reason_refines_a_thumbs_down_and_keeps_its_comment(store):
    m = answer(store)
    rate(store, m, "down", comment="It is Paris, not Lyon")
    rate(store, m, "down", reason="wrong fact")
    rate(store, m, "down", reason="wrong fact")  # the browser sent the reason click twice
    current = store.current_rating(m, A)
    assert (current["rating"], current["reason"], current["comment"]) == ("down", "wrong fact", "It is Paris, not Lyon")
    assert len(store.message_feedback(m)) == 2  # history: the thumb, then its reason
    (listed,) = store.list_feedback()
    assert listed["reason"] == "wrong fact" and listed["comment"] == "It is Paris, not Lyon"
    assert len(store.list_feedback(current_only=False)) == 2


def test_tags_and_a_score_refine_the_same_thumb_and_a_new_thumb_starts_afresh(store):
    m = answer(store)
    rate(store, m, "up", tags=["Clear", " to the  point ", "clear"], score=9)
    rate(store, m, "up", comment="Short and right")
    current = store.current_rating(m, A)
    assert (current["tags"], current["score"], current["comment"]) == (["Clear", "to the point"], 9, "Short and right")
    assert rate(store, m, "up", comment="Short and right")["unchanged"]
    rate(store, m, "down")  # changed their mind: the thumbs-down says nothing of the like's details
    current = store.current_rating(m, A)
    assert (current["rating"], current["tags"], current["score"], current["comment"]) == ("down", None, None, None)
    for bad in ({"score": 0}, {"score": True}, {"tags": "clear"}, {"tags": ["x" * 51]}, {"tags": ["a\x00"]}):
        with pytest.raises(ValidationError):
            rate(store, m, "up", **bad)
    assert len(store.message_feedback(m)) == 3


def test_the_api_takes_tags_and_a_score_and_refuses_what_the_ui_would(make_server, tmp_path):
    store = Store(tmp_path / "exemplar.db")
    url = make_server(store=store)
    with httpx.Client(base_url=url, timeout=30) as client:
        message_id = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi?"}]}).json()["id"]
        body = {"message_id": message_id, "rating": "down", "reason": "wrong fact", "tags": ["billing"], "score": 3}
        assert client.post("/api/feedback", json=body).status_code == 201
        for bad, field in (({"score": 11}, "score"), ({"score": 2.5}, "score"), ({"tags": ["x" * 51]}, "tags"),
                           ({"tags": [str(i) for i in range(11)]}, "tags"), ({"tags": "billing"}, "tags")):
            response = client.post("/api/feedback", json=body | bad)
            assert response.status_code in (400, 422) and field in response.json()["error"], response.text
    (row,) = store.message_feedback(int(message_id))
    assert (row["rating"], row["reason"], row["tags"], row["score"]) == ("down", "wrong fact", ["billing"], 3)
    store.close()


def test_like_unrate_like_keeps_one_upvote_example(store):
    m = answer(store)
    example = rate(store, m, "up")["example_id"]
    assert rate(store, m, None)["withdrawn"] == example
    assert store.get_example(example)["status"] == "rejected"
    assert rate(store, m, "up")["example_id"] == example  # restored, not a second example
    assert store.get_example(example)["status"] == "approved" and len(upvotes(store)) == 1
    assert [r["rating"] for r in store.message_feedback(m)] == ["up", None, "up"]


def test_one_person_taking_a_like_back_leaves_another_persons_standing(store):
    m = answer(store)
    example = rate(store, m, "up", rater=A)["example_id"]
    assert rate(store, m, "up", rater=B)["example_id"] == example
    rate(store, m, None, rater=A)
    assert store.get_example(example)["status"] == "approved"  # B still likes it
    rate(store, m, "down", rater=B)
    assert store.get_example(example)["status"] == "rejected"
    assert store.current_ratings([m], A)[m]["rating"] is None and store.current_ratings([m], B)[m]["rating"] == "down"


def test_an_admin_rejection_stands_against_a_new_like(store):
    m = answer(store)
    example = rate(store, m, "up")["example_id"]
    store.update_examples([example], status="rejected", actor="admin")
    assert rate(store, m, "up", rater=B)["example_id"] is None
    assert store.get_example(example)["status"] == "rejected" and len(upvotes(store)) == 1


def test_dozens_of_people_rating_one_answer_at_once(make_server, tmp_path):
    store = Store(tmp_path / "exemplar.db")  # on disk, as served
    url = make_server(store=store)
    with httpx.Client(base_url=url, timeout=30) as client:
        reply = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi?"}]}).json()
    message_id = reply["id"]
    users = [f"user-{i}" for i in range(24)]

    def send(body):
        with httpx.Client(base_url=url, timeout=30) as client:
            response = client.post("/api/feedback", json={"message_id": message_id, **body})
            assert response.status_code == 201, response.text
            return response.json()

    with ThreadPoolExecutor(12) as pool:
        # Everyone likes it, with their own tags and score (the rating panel's details), each click sent twice at once.
        liked = list(pool.map(send, [{"rating": "up", "user": u, "tags": [u], "score": 1 + i % 10}
                                     for i, u in enumerate(users)] * 2))
    examples = {r["example_id"] for r in liked}
    assert len(examples) == 1 and len(upvotes(store)) == 1
    assert len(store.message_feedback(int(message_id))) == len(users)  # the duplicate clicks stored nothing
    assert {(f["rater"], tuple(f["tags"]), f["score"]) for f in store.message_feedback(int(message_id))} == {
        (f"api:{u}", (u,), 1 + i % 10) for i, u in enumerate(users)}  # each person's own details, none mixed
    (example,) = examples
    with ThreadPoolExecutor(12) as pool:
        list(pool.map(send, [{"rating": None, "user": u} for u in users[1:]]))
    assert store.get_example(example)["status"] == "approved"  # user-0 still likes it
    send({"rating": None, "user": users[0]})
    assert store.get_example(example)["status"] == "rejected"
    current = store.list_feedback(rating="up")
    assert current == []
    assert len(store.list_feedback(current_only=False)) == 2 * len(users)
    store.close()


def test_the_admin_feedback_view_lists_filters_and_exports(store):
    import json

    import gradio as gr

    from bot.ui.admin_feedback import FeedbackHandlers

    def check_admin(password):
        if password != "pw":
            raise gr.Error("Wrong admin password")

    handlers = FeedbackHandlers(store, check_admin)
    liked, disliked = answer(store, "Paris."), answer(store, "Lyon.")
    rate(store, liked, "up")
    rate(store, disliked, "down", comment="It is Paris")
    rate(store, disliked, "down", reason="wrong fact", tags=["geography"], score=2)
    everything = ("pw", "any", "any", "", "", "", "", False)
    with pytest.raises(gr.Error):
        handlers.table("guess", *everything[1:])
    frame, line = handlers.table(*everything)
    assert line.startswith("2 ratings") and "1 up, 1 down" in line
    down = frame[frame["rating"] == "thumbs down"].iloc[0]
    assert (down["reason"], down["comment"], down["answer"], down["model"]) == ("wrong fact", "It is Paris", "Lyon.", "base")
    assert (down["tags"], down["score"]) == ("geography", 2)
    assert frame[frame["rating"] == "thumbs up"].iloc[0]["example"].startswith("#")
    frame, _ = handlers.table("pw", "thumbs down", "wrong fact", "base", "", "", "Lyon", False)
    assert list(frame["answer"]) == ["Lyon."]
    frame, line = handlers.table("pw", "any", "any", "", "", "", "", True)
    assert len(frame) == 3 and "every click" in line
    with pytest.raises(gr.Error, match="YYYY-MM-DD"):
        handlers.table("pw", "any", "any", "", "yesterday", "", "", False)
    shown, said = handlers.export(*everything)
    path = shown["value"]
    records = [json.loads(line) for line in open(path, encoding="utf-8")]
    assert said == "Exported 2 ratings to feedback.jsonl." and {r["rating"] for r in records} == {"up", "down"}
    assert next(r for r in records if r["rating"] == "down")["question"] == "Capital of France?"
    assert next(r for r in records if r["rating"] == "down")["tags"] == ["geography"]


def test_the_admin_feedback_details_show_stored_text_as_stored(store):
    """What people wrote and what was answered are shown as typed: no Markdown, no LaTeX, HTML escaped."""
    import html
    import re

    import gradio as gr

    from bot.ui.admin_feedback import FeedbackHandlers, build_feedback_section

    handlers = FeedbackHandlers(store, lambda password: None)
    said = "**Yes**: $$E = mc^2$$, so \\frac{a}{b}\n- <b>bold</b> & done"
    rate(store, answer(store, said), "down", comment="Wrong: $x^2$ is _not_ <i>it</i>")
    frame, _ = handlers.table("pw", "any", "any", "", "", "", "", False)
    event = gr.SelectData(None, {"index": [0, 0], "value": 1, "row_value": frame.iloc[0].tolist()})
    body, _, _ = handlers.details("pw", frame, event)
    assert "<b>bold</b>" not in body and "<i>it</i>" not in body  # escaped, not markup
    text = html.unescape(re.sub(r"<[^>]+>", "", body))
    assert said in text and "Wrong: $x^2$ is _not_ <i>it</i>" in text
    with gr.Blocks() as demo:
        build_feedback_section(store, lambda password: None, gr.Textbox())
    shown = [block for block in demo.blocks.values() if block.elem_id == "feedback-details"]
    assert len(shown) == 1 and isinstance(shown[0], gr.HTML)  # gr.HTML renders neither Markdown nor LaTeX


def test_downvoted_answers_are_the_uncorrected_ones_more_people_turned_down_than_liked(store):
    wrong = answer(store, "Istanbul is the capital of France.")
    rate(store, wrong, "down", reason="Wrong fact")
    rate(store, wrong, "down", rater=B)
    liked_more = answer(store, "Lyon.")
    rate(store, liked_more, "down")
    rate(store, liked_more, "up", rater=B)  # one down, one up: not turned down
    changed_mind = answer(store, "Marseille.")
    rate(store, changed_mind, "down")
    rate(store, changed_mind, "up")  # the same person's latest rating counts
    corrected = answer(store, "Nice.")
    rate(store, corrected, "down")
    store.record_feedback(corrected, rating="down", correction="Paris.", status="approved", actor="ui", rater=B)
    again = answer(store, "istanbul is the capital of France")  # the same answer to the same question
    rate(store, again, "down")
    stated = answer(store, "Toulouse.")  # an approved answer stated word for word: no training changes it
    store.update_message(stated, from_example=1)
    rate(store, stated, "down")

    found = store.downvoted_answers()
    assert [d["message_id"] for d in found] == [again]  # newest first, one per question and answer
    assert found[0]["input"] == [{"role": "user", "content": "Capital of France?"}]
    assert (found[0]["downs"], found[0]["ups"]) == (1, 0)
    everyone = store.downvoted_answers(limit=None)
    assert len(everyone) == 1
    rate(store, again, None)  # its thumb taken back: the older answer is the one left
    [first] = store.downvoted_answers(limit=5)
    assert first["message_id"] == wrong and first["reasons"] == ["wrong fact"] and first["downs"] == 2


def test_liking_the_honest_not_known_yet_reply_makes_no_example(store):
    """A thumbs-up on "I don't have an answer to that yet. A related answer: …" became an upvote example of
    that template, which a retrain would then give as the answer to the question."""
    honest = answer(store, "I don't have an answer to that yet. A related answer I know: Lyon is in France.")
    store.update_message(honest, related_ids=[3])
    liked = rate(store, honest, "up")
    assert liked["example_id"] is None and upvotes(store) == []
    assert store.current_rating(honest, A)["rating"] == "up"  # the rating itself is kept
    # A correction of it is still an example: the user wrote the answer.
    corrected = store.record_feedback(honest, rating="down", correction="Paris.", status="approved", actor="ui", rater=B)
    assert store.get_example(corrected["example_id"])["output"] == "Paris."
