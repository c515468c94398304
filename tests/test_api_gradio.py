"""The UI's Gradio API on the same server as the HTTP API: its chat endpoint
answers `gradio_client`, and it is no back door to admin data. Every admin
handler is reachable by raw HTTP (even "private" ones), so each is called here
without the password and must refuse; with it, the examples that came in
through the HTTP API must be in the Admin tab's data."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from bot.auth import AdminGuard
from tests.live_app import ADMIN, ADMIN_PASSWORD

EVENT_DATA = {"index": [0, 0], "value": "1", "row_value": ["1"], "col_value": ["1"], "selected": True,
              "liked": True, "previous_value": ""}


@pytest.fixture
def url(make_server) -> str:
    """The whole app, API and UI, on a real socket. Tests here try every admin event with a wrong
    password: more tries than the default login limit allows."""
    return make_server(guard=AdminGuard(ADMIN_PASSWORD, max_failures=10_000), ui=True)


def call_event(url: str, dependency: dict[str, Any], data: list[Any], client: Any = httpx) -> tuple[bool, Any]:
    """Run one Gradio event by its index over the raw queue protocol, as any HTTP client could
    (`client`: an httpx.Client, e.g. one bound to another loopback address; default: httpx itself).

    Returns (success, output data or the error message).
    """
    session = uuid.uuid4().hex
    trigger = dependency["targets"][0][0] if dependency["targets"] else None
    # Handlers that take gr.SelectData and the like get a plausible payload (a click on the first row).
    event_data = EVENT_DATA if dependency.get("collects_event_data") else None
    joined = client.post(
        f"{url}/gradio_api/queue/join",
        json={"data": data, "fn_index": dependency["id"], "session_hash": session, "event_data": event_data,
              "trigger_id": trigger},
        timeout=10,
    )
    assert joined.status_code == 200, joined.text
    with client.stream("GET", f"{url}/gradio_api/queue/data", params={"session_hash": session}, timeout=30) as stream:
        for line in stream.iter_lines():
            if not line.startswith("data: "):
                continue
            message = json.loads(line[6:])
            if message.get("msg") == "process_completed":
                if message.get("success"):
                    return True, message["output"]["data"]
                return False, str(message.get("output", {}).get("error") or message.get("title") or message)
    raise AssertionError("the event never completed")


def subtree(node: dict[str, Any]) -> set[int]:
    ids = {node["id"]}
    for child in node.get("children", []):
        ids |= subtree(child)
    return ids


def find(node: dict[str, Any], wanted: int) -> dict[str, Any] | None:
    if node["id"] == wanted:
        return node
    for child in node.get("children", []):
        hit = find(child, wanted)
        if hit is not None:
            return hit
    return None


def admin_events(url: str) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """(the UI config, the events that touch the Admin tab, the admin password box's id)."""
    config = httpx.get(f"{url}/config").json()
    components = {c["id"]: c for c in config["components"]}
    tab = next(c for c in components.values() if c["type"] == "tabitem" and c["props"].get("label") == "Admin")
    inside = subtree(find(config["layout"], tab["id"]))
    password = next(i for i in inside if components[i]["props"].get("elem_id") == "admin-password")
    events = [
        d for d in config["dependencies"]
        if d.get("backend_fn")
        and (set(d["inputs"]) | set(d["outputs"]) | {t[0] for t in d["targets"]}) & inside
    ]
    return config, events, password


def default_inputs(
    config: dict[str, Any], dependency: dict[str, Any], password_id: int, password: str, *, widest: bool = False
) -> list[Any]:
    """The inputs' initial values, the password given; `widest` picks "any" in filter dropdowns."""
    components = {c["id"]: c for c in config["components"]}

    def value(i: int) -> Any:
        if i == password_id:
            return password
        props = components[i]["props"]
        choices = [c[1] if isinstance(c, list) else c for c in props.get("choices") or []]
        if widest and "any" in choices:
            return "any"
        return props.get("value")

    return [value(i) for i in dependency["inputs"]]


def test_gradio_client_chat_endpoint_answers(url, engine, store):
    from gradio_client import Client

    engine.enqueue("Four.")
    client = Client(url + "/", verbose=False)
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert "/chat" in endpoints
    names = [p["parameter_name"] for p in endpoints["/chat"]["parameters"]]
    assert names[:2] == ["message", "history"]
    arguments = {"message": "What is 2+2?", "history": [], "system_prompt": ""}
    result = client.predict(**arguments, api_name="/chat")
    history = next(part for part in result if isinstance(part, list))
    answer = history[-1]
    assert answer["role"] == "assistant"
    assert "".join(p["text"] for p in answer["content"] if p.get("type") == "text") == "Four."
    # Stored like any UI conversation, so it can be rated and corrected.
    conversation = store.get_conversation(1)
    assert conversation["source"] == "ui"
    assert [m["content"] for m in store.conversation_messages(1)] == ["What is 2+2?", "Four."]


def test_only_the_chat_endpoint_is_public(url):
    config = httpx.get(f"{url}/config").json()
    public = sorted(d["api_name"] for d in config["dependencies"] if d.get("api_visibility") == "public")
    assert public == ["chat"]


def test_admin_handlers_refuse_without_the_password(url, store):
    config, events, password_id = admin_events(url)
    if not events:
        pytest.skip("the Admin tab has no handlers yet")
    store.add_example("Secret question?", "Secret answer.", source="admin")
    before = (store.list_examples(limit=None), store.list_jobs())
    for number, event in enumerate(events):
        name = event.get("api_name") or event["id"]
        assert password_id in event["inputs"], f"admin event {name} does not take the admin password"
        # No password and a wrong one, in turn (each call costs a queue round trip).
        for wrong in [("", "not-the-password")[number % 2]]:
            ok, result = call_event(url, event, default_inputs(config, event, password_id, wrong))
            assert not ok, f"admin event {name} ran without the password: {result}"
            assert "password" in result.lower(), f"admin event {name} failed, but not on the password: {result}"
            assert "Secret answer." not in json.dumps(result)
    assert (store.list_examples(limit=None), store.list_jobs()) == before
    # The calls above reach the handlers: with the password, none of them fails on it.
    for event in events:
        ok, result = call_event(url, event, default_inputs(config, event, password_id, ADMIN_PASSWORD))
        assert ok or "password" not in result.lower(), f"admin event {event.get('api_name')} refused the password"


def test_the_admin_login_limit_counts_each_address_apart(make_server):
    """Wrong passwords sent from one address (127.0.0.2, over Gradio's own API) lock that address
    out of the Admin tab; an admin at another address (127.0.0.1) still logs in."""
    url = make_server(guard=AdminGuard(ADMIN_PASSWORD, max_failures=2), ui=True)
    config, events, password_id = admin_events(url)
    components = {c["id"]: c for c in config["components"]}
    login = next(e for e in events if any(components.get(t[0], {}).get("props", {}).get("elem_id") == "admin-login"
                                          for t in e["targets"]))
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as stranger:
        for _ in range(2):
            ok, result = call_event(url, login, default_inputs(config, login, password_id, "a-wrong-guess"), stranger)
            assert not ok and "wrong" in result
        ok, result = call_event(url, login, default_inputs(config, login, password_id, ADMIN_PASSWORD), stranger)
        assert not ok and "Too many wrong admin passwords" in result
    ok, result = call_event(url, login, default_inputs(config, login, password_id, ADMIN_PASSWORD))
    assert ok, result


def test_examples_from_the_http_api_show_up_in_the_admin_tab(url, engine, store):
    config, events, password_id = admin_events(url)
    components = {c["id"]: c for c in config["components"]}
    listing = [e for e in events if any(components[o]["type"] == "dataframe" for o in e["outputs"])]
    if not listing:
        pytest.skip("the Admin tab has no example list yet")

    engine.enqueue("Lyon.")
    answer = httpx.post(f"{url}/v1/chat/completions",
                        json={"messages": [{"role": "user", "content": "Capital of France?"}]}).json()
    feedback = httpx.post(f"{url}/api/feedback", json={"message_id": answer["id"], "correction": "Paris, of course."})
    assert feedback.status_code == 201, feedback.text
    created = httpx.post(f"{url}/api/examples", json={"input": "Who wrote Dune?", "output": "Frank Herbert wrote it."},
                         headers=ADMIN)
    assert created.status_code == 201, created.text

    shown = ""
    for event in listing:
        ok, result = call_event(url, event, default_inputs(config, event, password_id, ADMIN_PASSWORD, widest=True))
        if ok:
            shown += json.dumps(result)
    assert "Paris, of course." in shown, "the correction posted through the API is not in the Admin tab"
    assert "Frank Herbert wrote it." in shown, "the example added through the API is not in the Admin tab"
