"""A full disk, for real: SQLite's PRAGMA max_page_count makes the store's own database answer
SQLITE_FULL, and a writer that fails with ENOSPC stands in for a full disk under a file. Every write
that meets it is refused as "storage is full" (HTTP 507, a gr.Error, a CLI message and exit 1),
nothing half-written stays, chat keeps answering (without storing), and the next write succeeds
once there is room again, with no restart."""

from __future__ import annotations

import errno
import json
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
import httpx
import pytest

from bot.chat.service import NOT_STORED, ChatService
from bot.ui.admin_feedback import FeedbackHandlers
from bot.ui.admin_review import ReviewHandlers
from bot.ui.chat_tab import ChatHandlers
from core.config import ServeConfig
from storage import Store

FULL = "storage is full"
FREE_SPACE = "free space on the disk that holds the data dir, then try again"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
# Longer than a 4 KiB page holds (SQLite's page_size): storing them needs a new page, which full() forbids.
LONG_QUESTION = [{"role": "user", "content": "Tell me about Paris. " * 300}]
LONG_RATING = {"rating": "up", "reason": "r" * 2000, "comment": "c" * 2000, "tags": [f"{i}" * 50 for i in range(10)]}
LONG_CORRECTION = "Paris is the capital of France. " * 200
PASSWORD = "pw"


@pytest.fixture
def store(tmp_path):
    """A real database file (conftest's is in memory), as a server's data dir holds it."""
    s = Store(tmp_path / "data" / "exemplar.db")
    yield s
    s.close()


def pragma(store: Store, statement: str) -> int:
    with store._lock:
        return store.db.execute(f"PRAGMA {statement}").fetchone()[0]


@contextmanager
def full(store: Store):
    """The database may not grow by a single page, as on a full disk: every write that needs a new page
    fails with SQLITE_FULL. max_page_count holds per connection; the Store has one (store.db)."""
    limit = pragma(store, "max_page_count")
    assert pragma(store, "freelist_count") == 0  # no free page to grow into either
    pragma(store, f"max_page_count = {pragma(store, 'page_count')}")
    try:
        yield
    finally:
        pragma(store, f"max_page_count = {limit}")  # space is back: nothing else is done


def counts(store: Store) -> tuple[int, ...]:
    with store._lock:
        return tuple(
            store.db.execute(f"select count(*) from {table}").fetchone()[0]
            for table in ("conversations", "messages", "feedback", "examples")
        )


def sse_events(text: str) -> list:
    return [json.loads(e[6:]) if e[6:] != "[DONE]" else "[DONE]" for e in text.strip().split("\n\n")]


def test_feedback_on_a_full_database_answers_507_stores_nothing_and_recovers_by_itself(store, make_server):
    url = make_server()
    with httpx.Client(base_url=url, timeout=30) as http:
        answer = http.post("/v1/chat/completions", json={"messages": QUESTION})
        assert answer.status_code == 200, answer.text
        rating = {"message_id": answer.json()["id"], **LONG_RATING}
        before = counts(store)

        with full(store):
            refused = http.post("/api/feedback", json=rating)
            assert refused.status_code == 507, refused.text
            error = refused.json()["error"]
            assert error.startswith(FULL) and FREE_SPACE in error
            assert counts(store) == before  # no feedback row, no upvote example: nothing acknowledged
            assert http.get("/healthz").status_code == 200

        stored = http.post("/api/feedback", json=rating)  # the same request, with room again, same server
        assert stored.status_code == 201, stored.text
        assert stored.json()["example_id"] is not None
    feedback = store.message_feedback(int(rating["message_id"]))
    assert [(f["rating"], f["comment"]) for f in feedback] == [("up", "c" * 2000)]
    assert store.integrity_check() == "ok"


def test_chat_on_a_full_database_still_answers_and_says_the_answer_was_not_stored(store, engine, make_server):
    url = make_server()
    before = counts(store)
    with httpx.Client(base_url=url, timeout=30) as http, full(store):
        engine.enqueue("Paris is the capital.", "Paris, still.")
        response = http.post("/v1/chat/completions", json={"messages": LONG_QUESTION})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["choices"][0]["message"]["content"] == "Paris is the capital."
        assert body["exemplar"]["stored"] is False and body["exemplar"]["message_id"] is None
        assert body["id"].startswith("chatcmpl-unstored-")

        events = sse_events(http.post("/v1/chat/completions", json={"messages": LONG_QUESTION, "stream": True}).text)
        assert events[-1] == "[DONE]"
        assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == "Paris, still."
        assert events[-2]["exemplar"]["stored"] is False and events[0]["id"].startswith("chatcmpl-unstored-")

        assert counts(store) == before  # no conversation, no question without its answer
        rated = http.post("/api/feedback", json={"message_id": body["id"], "rating": "up"})
        assert rated.status_code == 400  # an id that names no stored answer: nothing to acknowledge

    with httpx.Client(base_url=url, timeout=30) as http:  # room again: stored as usual, same server
        body = http.post("/v1/chat/completions", json={"messages": LONG_QUESTION}).json()
        assert body["exemplar"]["stored"] is True
        assert store.get_message(int(body["id"]))["content"] == body["choices"][0]["message"]["content"]
        assert http.post("/api/feedback", json={"message_id": body["id"], "rating": "up"}).status_code == 201


def test_an_answer_whose_text_finds_no_room_is_given_and_leaves_no_empty_row(store, engine):
    """The rows fit when the answer starts; its text does not when it ends."""
    service = ChatService(engine, store, ServeConfig())
    engine.enqueue("Paris. " * 2000)
    answer = service.answer(QUESTION)
    assert answer.stored
    with full(store):
        text = "".join(answer)
    assert text.strip() == ("Paris. " * 2000).strip()
    assert not answer.stored and NOT_STORED in answer.notices
    assert [m["role"] for m in store.conversation_messages(answer.conversation_id)] == ["user"]


def submit(handlers: ChatHandlers, question: str, history: list, ids: list, conv: int | None) -> tuple:
    """The Chat tab's Send, to its end: (the chat shown, the conversation, the answers' ids, the info line)."""
    *_, (_, shown, conv, ids, info, *_) = handlers.submit(question, history, ids, conv, "", True, 0.0, 64, None)
    return (shown["value"] if isinstance(shown, dict) else shown), conv, ids, info


def test_the_chat_tab_answers_while_full_and_a_correction_is_a_gr_error_saying_so(store, engine):
    handlers = ChatHandlers(ChatService(engine, store, ServeConfig()))
    engine.enqueue("Lyon.", "Still Lyon.")
    shown, conv, ids, _ = submit(handlers, "Capital of France?", [], [], None)
    with full(store):
        before = counts(store)
        with pytest.raises(gr.Error) as refused:
            handlers.correct_last(LONG_CORRECTION, shown, ids)
        assert str(refused.value.message).startswith(FULL) and FREE_SPACE in refused.value.message
        shown, conv, ids, info = submit(handlers, LONG_QUESTION[0]["content"], shown, ids, conv)
        assert shown[-1]["content"] == "Still Lyon." and ids[-1] is None and NOT_STORED in info
        assert info.startswith("Not stored by model") and "#None" not in info
        assert counts(store) == before
    liked = gr.LikeData(target=None, data={"index": 1, "value": "Lyon.", "liked": True})
    status, _ = handlers.like(liked, shown, ids, "rater-1")
    assert "Liked" in status and len(store.message_feedback(ids[1])) == 1


# -- files: an export, an adapter -------------------------------------------------------


def fail_half_way(monkeypatch):
    """Path.write_text writes half of its text, then the disk is full (ENOSPC), as a real write would fail."""
    write_text = Path.write_text

    def write_half(self, data, *args, **kwargs):
        write_text(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", write_half)


def test_a_cli_export_to_a_full_disk_says_so_exits_1_and_leaves_no_partial_file(store, tmp_path, monkeypatch, capsys):
    import launch

    store.add_example("What is the capital of France?", "Paris.", source="admin")
    out = tmp_path / "exports" / "examples.jsonl"
    data_dir = str(Path(store.path).parent)
    fail_half_way(monkeypatch)
    code = launch.main(["export", str(out), "--format", "jsonl", "--data-dir", data_dir])
    error = capsys.readouterr().err
    assert code == 1
    assert error.startswith(f"error: {FULL}") and str(out) in error and "Traceback" not in error
    assert list(out.parent.iterdir()) == []  # neither the file nor its .part

    monkeypatch.undo()  # space is back
    assert launch.main(["export", str(out), "--format", "jsonl", "--data-dir", data_dir]) == 0
    assert [json.loads(line)["messages"][-1]["content"] for line in out.read_text().splitlines()] == ["Paris."]


def test_an_admin_export_to_a_full_disk_is_a_gr_error_and_leaves_nothing(store, monkeypatch):
    store.add_example("What is the capital of France?", "Paris.", source="admin")
    handlers = ReviewHandlers(store, lambda password: None, actor_fn=lambda request: "admin")
    fail_half_way(monkeypatch)
    with pytest.raises(gr.Error) as refused:
        handlers.export(PASSWORD, "jsonl", "all")
    assert str(refused.value.message).startswith(FULL)
    assert not handlers._last_export.exists()  # the export's folder, partial file and all, is gone


def test_a_feedback_export_to_a_full_disk_is_a_gr_error_and_leaves_nothing(store, engine, monkeypatch):
    service = ChatService(engine, store, ServeConfig())
    answer = service.answer(QUESTION)
    "".join(answer)
    service.record_feedback(answer.message_id, rating="up", actor="ui")
    handlers = FeedbackHandlers(store, lambda password: None)
    open_path = Path.open

    class FullFile:
        """A file whose every write meets a full disk."""

        def __init__(self, file):
            self.file = file

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, text):
            self.file.write(text[:10])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "open", lambda self, *a, **k: FullFile(open_path(self, *a, **k)))
    with pytest.raises(gr.Error) as refused:
        handlers.export(PASSWORD, "any", "any", "", "", "", "", False)
    assert str(refused.value.message).startswith(FULL)
    assert not handlers._last_export.exists()


@pytest.mark.slow  # a two-step training run on a tiny Llama, in this process
def test_an_adapter_save_on_a_full_disk_fails_the_job_saying_so_and_keeps_nothing(tmp_path, tiny_model, tokenizer,
                                                                                    monkeypatch):
    import peft.peft_model

    from tests.training_helpers import FAST_EVAL, add_facts, save_tiny_base
    from training.config import EvalConfig
    from training.manager import TrainingManager
    from training.worker import run_job

    base = save_tiny_base(tiny_model, tokenizer, tmp_path / "tiny-base")
    data_dir = tmp_path / "data"
    store = Store(data_dir / "exemplar.db")
    try:
        add_facts(store, [(f"What is fact number {i}?", f"Fact {i} is zorb{i}.") for i in range(6)], "train")
        manager = TrainingManager(store, data_dir, str(base), eval_config=EvalConfig(**FAST_EVAL), spawn=False)

        def save_half(tensors, filename, metadata=None):
            Path(filename).write_bytes(b"\0" * 64)  # the start of the weights, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", filename)

        monkeypatch.setattr(peft.peft_model, "safe_save_file", save_half)
        job_id = manager.start({"max_steps": 2, "replay_examples": 2, "batch_size": 4})
        assert run_job(store, data_dir, job_id) == "failed"
        view = manager.job_view(job_id)
        assert view.error.startswith(FULL) and "free space on the disk that holds the data dir" in view.error
        assert store.list_model_versions() == []
        assert sorted(p.name for p in (data_dir / "adapters").iterdir()) == []  # no version, no temporary folder
        store.add_example("Still writable?", "Yes.", source="admin")  # the store is untouched
    finally:
        store.close()
