"""Admin example routes: create, list, patch, import (all or none) and export,
and an export that imports into a fresh data directory as the same examples."""

from __future__ import annotations

import json

import pytest

import bot.api.middleware
from storage import Store
from tests.live_app import ADMIN, build_app

KEPT = ("input", "output", "rejected", "source", "status", "split")


def test_create_list_and_patch_examples(client, store):
    created = client.post("/api/examples", json={"input": "Who wrote Dune?", "output": "Frank Herbert.", "split": "test"},
                          headers=ADMIN)
    assert created.status_code == 201, created.text
    example = created.json()
    assert example["input"] == [{"role": "user", "content": "Who wrote Dune?"}]
    assert (example["output"], example["source"], example["status"], example["split"]) == (
        "Frank Herbert.", "admin", "approved", "test")
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of Peru?"}]
    second = client.post("/api/examples", json={"input": chat, "output": "Lima.", "status": "pending"},
                         headers=ADMIN).json()
    assert second["input"] == chat and second["status"] == "pending"

    listed = client.get("/api/examples", headers=ADMIN).json()
    assert listed["total"] == 2 and [e["id"] for e in listed["examples"]] == [second["id"], example["id"]]
    pending = client.get("/api/examples", params={"status": "pending"}, headers=ADMIN).json()
    assert pending["total"] == 1 and pending["examples"][0]["id"] == second["id"]
    page = client.get("/api/examples", params={"limit": 1, "offset": 1}, headers=ADMIN).json()
    assert page["total"] == 2 and [e["id"] for e in page["examples"]] == [example["id"]]
    assert client.get("/api/examples", params={"source": "upvote"}, headers=ADMIN).json()["total"] == 0

    patched = client.patch(f"/api/examples/{second['id']}", json={"status": "approved", "output": "Lima, Peru."},
                           headers=ADMIN)
    assert patched.status_code == 200, patched.text
    assert (patched.json()["status"], patched.json()["output"]) == ("approved", "Lima, Peru.")
    stored = store.get_example(second["id"])
    assert (stored["status"], stored["output"]) == ("approved", "Lima, Peru.")
    history = store.example_history(second["id"])
    assert {(h["field"], h["new_value"], h["actor"]) for h in history} >= {
        ("status", "approved", "admin"), ("output", "Lima, Peru.", "admin")}
    assert client.patch(f"/api/examples/{example['id']}", json={"split": "train"}, headers=ADMIN).json()["split"] == "train"


JSONL = "\n".join(
    json.dumps(r)
    for r in [
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
        {"messages": [{"role": "user", "content": "Colour of the sky?"}, {"role": "assistant", "content": "Blue."}],
         "split": "test"},
        {"prompt": "Largest planet?", "chosen": "Jupiter.", "rejected": "Saturn."},
    ]
) + "\n"


def test_import_stores_every_line(client, store):
    response = client.post("/api/examples/import", content=JSONL, headers={**ADMIN, "content-type": "application/x-ndjson"})
    assert response.status_code == 201, response.text
    result = response.json()
    assert result["imported"] == 3 and len(result["ids"]) == 3
    rows = {e["output"]: e for e in store.list_examples()}
    assert set(rows) == {"4", "Blue.", "Jupiter."}
    assert rows["Blue."]["split"] == "test" and rows["Jupiter."]["rejected"] == "Saturn."
    assert all(e["source"] == "import" for e in rows.values())
    assert all(e["status"] == "approved" for e in rows.values())


def test_import_can_send_a_file_to_review(client, store):
    response = client.post("/api/examples/import?status=pending", content=JSONL, headers=ADMIN)
    assert response.status_code == 201, response.text
    assert store.count_examples(status="pending") == 3


@pytest.mark.parametrize(
    "bad_line,words",
    [
        ("{not json", ["line 2", "json"]),
        (json.dumps({"messages": [{"role": "user", "content": "Q?"}]}), ["line 2", "assistant"]),
        (json.dumps({"messages": [{"role": "robot", "content": "Q?"}, {"role": "assistant", "content": "A"}]}),
         ["line 2", "role"]),
        (json.dumps({"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": " "}]}),
         ["line 2", "empty"]),
        (json.dumps({"colour": "blue"}), ["line 2", "format"]),
    ],
)
def test_import_of_a_bad_line_stores_nothing(client, store, bad_line, words):
    lines = JSONL.splitlines()
    body = "\n".join([lines[0], bad_line, lines[1]])
    response = client.post("/api/examples/import", content=body, headers=ADMIN)
    assert response.status_code == 400, response.text
    for word in words:
        assert word in response.json()["error"].lower()
    assert store.count_examples() == 0


def test_import_errors_for_empty_and_oversized_bodies(make_client, client, store, monkeypatch):
    response = client.post("/api/examples/import", content="\n\n", headers=ADMIN)
    assert response.status_code == 400 and "no examples" in response.json()["error"]
    monkeypatch.setattr(bot.api.middleware, "MAX_IMPORT_BYTES", 4096)
    small = make_client()  # the limit is read when the app starts
    response = small.post("/api/examples/import", content=JSONL * 40, headers=ADMIN)
    assert response.status_code == 413 and "4096" in response.json()["error"]
    assert store.count_examples() == 0


def test_import_accepts_bodies_above_the_chat_limit(client, store):
    record = {"messages": [{"role": "user", "content": "Q{}?"}, {"role": "assistant", "content": "long " * 3800}]}
    body = "".join(json.dumps(record).replace("Q{}", f"Q{i}") + "\n" for i in range(60))
    assert len(body) > bot.api.middleware.MAX_BODY_BYTES
    response = client.post("/api/examples/import", content=body, headers=ADMIN)
    assert response.status_code == 201, response.text[:200]
    assert store.count_examples() == 60


def test_export_formats(client, engine, store):
    engine.enqueue("Saturn.")
    answer = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Largest planet?"}]}).json()
    client.post("/api/feedback", json={"message_id": answer["id"], "correction": "Jupiter."})
    store.add_example("2+2?", "4", source="admin", split="train")

    response = client.get("/api/examples/export", headers=ADMIN)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert "exemplar-jsonl.jsonl" in response.headers["content-disposition"]
    records = [json.loads(line) for line in response.text.splitlines()]
    assert [r["messages"][-1]["content"] for r in records] == ["Jupiter.", "4"]
    assert records[0]["rejected"] == "Saturn." and records[0]["source"] == "correction"

    dpo = [json.loads(line) for line in client.get("/api/examples/export?format=dpo", headers=ADMIN).text.splitlines()]
    assert len(dpo) == 1
    assert dpo[0]["chosen"][0]["content"] == "Jupiter." and dpo[0]["rejected"][0]["content"] == "Saturn."
    kto = [json.loads(line) for line in client.get("/api/examples/export?format=kto", headers=ADMIN).text.splitlines()]
    assert [(r["completion"][0]["content"], r["label"]) for r in kto] == [("Jupiter.", True), ("Saturn.", False), ("4", True)]
    only_train = client.get("/api/examples/export", params={"split": "train", "source": "admin"}, headers=ADMIN)
    assert len(only_train.text.splitlines()) == 1


def test_exported_jsonl_imports_into_a_fresh_data_dir_as_the_same_examples(make_client, engine, tmp_path):
    source_store = Store(tmp_path / "first" / "exemplar.db")
    engine.enqueue("Lyon.", "Water boils at 100 C.")
    client = make_client(store=source_store)
    question = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Capital of France?"}]
    wrong = client.post("/v1/chat/completions", json={"messages": question}).json()
    client.post("/api/feedback", json={"message_id": wrong["id"], "rating": "down", "correction": "Paris."})
    right = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Boiling point?"}]}).json()
    client.post("/api/feedback", json={"message_id": right["id"], "rating": "up"})
    for body in [
        {"input": "Who wrote Dune?", "output": "Frank Herbert.", "split": "test"},
        {"input": "Best editor?", "output": "ed.", "status": "pending"},
        {"input": "Is the earth flat?", "output": "Yes.", "status": "rejected"},
        {"input": "Who wrote Dune?", "output": "Frank Herbert (1965).", "split": "test"},  # supersedes the first
    ]:
        assert client.post("/api/examples", json=body, headers=ADMIN).status_code == 201
    client.post("/api/examples/import", content=JSONL, headers=ADMIN)
    assert source_store.count_examples(status="superseded") == 1

    exported = client.get("/api/examples/export?format=jsonl", headers=ADMIN)
    assert exported.status_code == 200
    path = tmp_path / "examples.jsonl"
    path.write_bytes(exported.content)

    fresh_store = Store(tmp_path / "fresh" / "exemplar.db")
    fresh = make_client(store=fresh_store)
    imported = fresh.post("/api/examples/import", content=path.read_bytes(), headers=ADMIN)
    assert imported.status_code == 201, imported.text

    def current(store: Store) -> list[tuple]:
        rows = [e for e in store.list_examples(limit=None, newest_first=False) if e["status"] != "superseded"]
        return [tuple(json.dumps(e[k]) for k in KEPT) for e in rows]

    assert len(current(source_store)) == 8  # 9 examples, one superseded
    assert current(fresh_store) == current(source_store)
    assert fresh.get("/api/examples/export", headers=ADMIN).content == exported.content
    source_store.close()
    fresh_store.close()


def test_importing_the_same_body_again_reports_the_rows_it_replaced(client, store):
    first = client.post("/api/examples/import", content=JSONL, headers=ADMIN).json()
    assert (first["imported"], first["new"], first["replaced"], first["replaced_ids"]) == (3, 3, 0, [])
    again = client.post("/api/examples/import", content=JSONL, headers=ADMIN).json()
    assert (again["imported"], again["new"], again["replaced"]) == (3, 0, 3)
    assert again["replaced_ids"] == first["ids"] and "3 replaced" in again["message"]
    assert store.count_examples(status="approved") == 3 and store.count_examples(status="superseded") == 3


def test_many_admins_importing_and_trimming_at_once_get_consistent_reports(tmp_path):
    """Real HTTP on 127.0.0.1, real SQLite: 12 imports of the same file and 12 trims of one
    correction at once. Exactly one import finds the questions new and the others each replace
    them; one trim changes the input and the others find nothing left to trim."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from tests.live_app import serve_in_thread

    store = Store(tmp_path / "exemplar.db")
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Capital of Zorvania?"}]
    corrected = store.add_example(chat, "Velmora.", source="correction")
    app = build_app(store)
    start = threading.Barrier(24)

    def call(i):
        with httpx.Client(base_url=url, headers=ADMIN, timeout=60) as client:
            start.wait()
            if i % 2:
                return client.patch(f"/api/examples/{corrected}", json={"keep_turns": 1})
            return client.post("/api/examples/import", content=JSONL)

    with serve_in_thread(app) as url, ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(call, range(24)))
    assert all(r.status_code < 300 for r in responses), [r.text for r in responses if r.status_code >= 300]
    imports = [r.json() for r in responses[0::2]]
    assert sorted(r["new"] for r in imports) == [0] * 11 + [3]
    assert sorted(r["replaced"] for r in imports) == [0] + [3] * 11
    assert store.count_examples(status="approved", source="import") == 3
    assert store.count_examples(status="superseded") == 33
    assert store.get_example(corrected)["input"] == chat[-1:]
    assert len([h for h in store.example_history(corrected) if h["field"] == "input"]) == 1
    store.close()
