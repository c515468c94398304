#!/usr/bin/env python3
"""Set up a running Open WebUI as a front end to Exemplar, through its admin HTTP API.

Idempotent: run it again after any change (a new token, a new Exemplar address, new function code).
Standard library only, so any python3 runs it.

    python3 integrations/openwebui/connect.py --openwebui http://127.0.0.1:8080 --exemplar http://127.0.0.1:7860
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
# Open WebUI fills these in per request (utils/headers.py). Exemplar links each stored answer to
# the Open WebUI message id, and answers without storing what carries a task name (titles, tags).
HEADERS = {
    "X-OpenWebUI-Message-Id": "{{MESSAGE_ID}}",
    "X-OpenWebUI-Chat-Id": "{{CHAT_ID}}",
    "X-OpenWebUI-User-Id": "{{USER_ID}}",
    "X-OpenWebUI-Task": "{{TASK}}",
}
# (function id, file): the id is what Open WebUI keys valves and the buttons by.
FUNCTIONS = [
    ("exemplar_feedback", "exemplar_feedback.py"),
    ("exemplar_correct", "exemplar_correct.py"),
    ("exemplar_notes", "exemplar_notes.py"),
]
# Background chores Open WebUI would send to the chat model; Exemplar's small model is slow at
# them and they are not questions anyone asked.
TASKS_OFF = ("ENABLE_TITLE_GENERATION", "ENABLE_TAGS_GENERATION", "ENABLE_FOLLOW_UP_GENERATION")


class SetupError(Exception):
    """A failure to report in a sentence, without a traceback."""


@dataclass
class Reply:
    status: int
    body: Any


def request(method: str, url: str, body: Any = None, token: str = "", timeout: float = 30) -> Reply:
    """One HTTP call; any HTTP status comes back as a Reply, an unreachable server raises SetupError."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SetupError(f"nothing answers at {url} ({reason})") from None
    try:
        return Reply(status, json.loads(raw) if raw else None)
    except ValueError:
        return Reply(status, raw.decode(errors="replace")[:300])


def detail(reply: Reply) -> str:
    body = reply.body
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("error") or body)
    return str(body)


class OpenWebUI:
    """The few admin routes of Open WebUI 0.12.4 this script uses."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.token = ""

    def call(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200,)) -> Any:
        try:
            reply = request(method, self.base + path, body, self.token)
        except SetupError as exc:
            raise SetupError(f"Open WebUI: {exc}. Is it running? (bash scripts/openwebui.sh, or --openwebui URL)")
        if reply.status in (401, 403):
            raise SetupError(f"Open WebUI refused {method} {path} ({reply.status}: {detail(reply)})")
        if reply.status not in ok:
            raise SetupError(f"Open WebUI: {method} {path} gave {reply.status}: {detail(reply)}")
        return reply.body

    def sign_in(self, email: str, password: str, api_key: str) -> str:
        """Sign in and return the user's name; no-auth mode (WEBUI_AUTH=False) takes empty credentials."""
        if api_key:
            self.token = api_key
        else:
            try:
                reply = request("POST", self.base + "/api/v1/auths/signin", {"email": email, "password": password})
            except SetupError as exc:
                raise SetupError(f"Open WebUI: {exc}. Is it running? (bash scripts/openwebui.sh, or --openwebui URL)")
            if reply.status != 200 or not isinstance(reply.body, dict) or not reply.body.get("token"):
                hint = "" if email else " (it has sign-in on: pass --email and --password of an admin, or --api-key)"
                raise SetupError(f"Open WebUI refused the sign-in ({reply.status}: {detail(reply)}){hint}")
            self.token = reply.body["token"]
        me = request("GET", self.base + "/api/v1/auths/", token=self.token)
        if me.status != 200 or not isinstance(me.body, dict):
            raise SetupError(f"Open WebUI refused the API key ({me.status}: {detail(me)})")
        user: dict[str, Any] = me.body
        if user.get("role") != "admin":
            raise SetupError(f"Open WebUI user {user.get('email')!r} is not an admin; setting up needs one")
        return user.get("name") or user.get("email") or "admin"


def exemplar_model_name(exemplar: str, model_id: str, token: str) -> tuple[Optional[str], str]:
    """(the name Exemplar's /v1/models gives the model, a line on Exemplar's state) — None when it is down."""
    try:
        models = request("GET", exemplar + "/v1/models", token=token, timeout=10)
        probe = request("GET", exemplar + "/api/openwebui/messages/connect-check", token=token, timeout=10)
    except SetupError as exc:
        return None, f"Exemplar is not answering ({exc}); set up anyway"
    names = [m.get("name") for m in (models.body or {}).get("data", []) if m.get("id") == model_id] \
        if isinstance(models.body, dict) else []
    if probe.status == 401:
        state = "Exemplar REFUSES this token: ratings and corrections will not reach it (check --token)"
    elif probe.status == 404 and isinstance(probe.body, dict) and "error" in probe.body:
        state = "Exemplar accepts the token"
    else:
        state = f"Exemplar's /api/openwebui routes answered {probe.status} (is this Exemplar, and new enough?)"
    return (names[0] if names and names[0] else None), state


def set_connection(owui: OpenWebUI, exemplar: str, token: str) -> str:
    config = owui.call("GET", "/openai/config")
    urls: list[str] = list(config.get("OPENAI_API_BASE_URLS") or [])
    keys: list[str] = list(config.get("OPENAI_API_KEYS") or [])
    keys += [""] * (len(urls) - len(keys))
    configs: dict[str, Any] = dict(config.get("OPENAI_API_CONFIGS") or {})
    url = exemplar + "/v1"
    index = next((i for i, u in enumerate(urls) if u.rstrip("/") == url), None)
    moved = ""
    if index is None:  # Exemplar moved: reuse the connection set up here before, else add one
        index = next((i for i in range(len(urls))
                      if "X-OpenWebUI-Message-Id" in ((configs.get(str(i)) or {}).get("headers") or {})), None)
        if index is not None:
            moved = f" (was {urls[index]})"
            urls[index] = url
    if index is None:
        urls.append(url)
        keys.append(token)
        index = len(urls) - 1
    keys[index] = token  # Exemplar links answers only for requests that carry its integration token
    entry = dict(configs.get(str(index)) or {})
    entry["enable"] = True
    entry["headers"] = {**(entry.get("headers") or {}), **HEADERS}
    configs[str(index)] = entry
    wanted = {"ENABLE_OPENAI_API": True, "OPENAI_API_BASE_URLS": urls, "OPENAI_API_KEYS": keys,
              "OPENAI_API_CONFIGS": configs}
    if all(config.get(k) == v for k, v in wanted.items()):
        return f"connection {url}: already set"
    owui.call("POST", "/openai/config/update", wanted)
    others = [u for i, u in enumerate(urls) if i != index]
    kept = f" (also kept: {', '.join(others)})" if others else ""
    return f"connection {url}: set, with the message-id headers{moved}{kept}"


def set_model(owui: OpenWebUI, model_id: str, exemplar_name: Optional[str]) -> str:
    """Open WebUI offers the model built-in tools unless told not to, and Exemplar refuses requests with tools;
    an override turns them off and lets every user read the model. An override must carry a name, which
    hides Exemplar's own ("Exemplar (v3)"): it starts as Exemplar's, and the notes filter keeps it in step
    with the serving version. A name an admin gave it (another form) is left alone."""
    grants = [{"principal_type": "user", "principal_id": "*", "permission": "read"}]
    models = owui.call("GET", "/api/v1/models/all")
    current = next((m for m in models if m.get("id") == model_id), None)
    name = exemplar_name or "Exemplar"
    ours = re.fullmatch(r"Exemplar( \(.*\))?", (current or {}).get("name") or "")
    if current is not None and (not exemplar_name or not ours):
        name = current.get("name") or name
    if current is None:
        owui.call("POST", "/api/v1/models/create", {
            "id": model_id, "base_model_id": None, "name": name, "params": {}, "access_grants": grants,
            "meta": {"capabilities": {"builtin_tools": False},
                     "description": "Exemplar: a chat bot that learns from corrected answers."},
        })
        return f"model {model_id!r}: created as {name!r}, built-in tools off, readable by all users"
    meta = dict(current.get("meta") or {})
    capabilities = dict(meta.get("capabilities") or {})
    changed = current.get("name") != name or capabilities.get("builtin_tools") is not False \
        or not current.get("is_active", True)
    if changed:
        meta["capabilities"] = {**capabilities, "builtin_tools": False}
        owui.call("POST", "/api/v1/models/model/update", {
            "id": model_id, "base_model_id": current.get("base_model_id"), "name": name, "meta": meta,
            "params": current.get("params") or {}, "is_active": True,
        })
    has_grant = any(g.get("principal_id") == "*" and g.get("permission") == "read"
                    for g in current.get("access_grants") or [])
    if not has_grant:
        owui.call("POST", "/api/v1/models/model/access/update",
                  {"id": model_id, "name": name, "access_grants": [*(current.get("access_grants") or []), *grants]})
    if not (changed or not has_grant):
        return f"model {model_id!r}: already set ({name!r})"
    return f"model {model_id!r}: updated ({name!r}, built-in tools off, readable by all users)"


def set_default_model(owui: OpenWebUI, model_id: str) -> str:
    """A new chat starts on Exemplar unless the admin chose another default."""
    config = owui.call("GET", "/api/v1/configs/models")
    if config.get("DEFAULT_MODELS"):
        return f"default model: left as {config['DEFAULT_MODELS']!r}"
    owui.call("POST", "/api/v1/configs/models", {**config, "DEFAULT_MODELS": model_id})
    return f"default model: set to {model_id!r}"


def set_tasks(owui: OpenWebUI) -> str:
    config = owui.call("GET", "/api/v1/tasks/config")
    if not any(config.get(k) for k in TASKS_OFF):
        return "title, tags and follow-up generation: already off"
    owui.call("POST", "/api/v1/tasks/config/update", {**config, **{k: False for k in TASKS_OFF}})
    return "title, tags and follow-up generation: turned off"


def frontmatter(content: str) -> dict[str, str]:
    head = content.split('"""', 2)[1] if content.startswith('"""') else ""
    return {m[1]: m[2] for m in re.finditer(r"^\s*([a-z_]+):\s*(.*?)\s*$", head, re.M)}


def set_functions(owui: OpenWebUI, valves: dict[str, Any]) -> list[str]:
    existing = {f["id"]: f for f in owui.call("GET", "/api/v1/functions/list")}
    lines = []
    for function_id, filename in FUNCTIONS:
        content = (HERE / filename).read_text(encoding="utf-8")
        info = frontmatter(content)
        form = {"id": function_id, "name": info.get("title", function_id), "content": content,
                "meta": {"description": info.get("description", "")}}
        done = []
        if function_id not in existing:
            function = owui.call("POST", "/api/v1/functions/create", form)
            done.append("created")
        else:
            function = owui.call("GET", f"/api/v1/functions/id/{function_id}")
            if function.get("content") != content or function.get("name") != form["name"]:
                function = owui.call("POST", f"/api/v1/functions/id/{function_id}/update", form)
                done.append(f"updated to version {info.get('version', '?')}")
        stored = owui.call("GET", f"/api/v1/functions/id/{function_id}/valves") or {}
        if any(stored.get(k) != v for k, v in valves.items()):
            owui.call("POST", f"/api/v1/functions/id/{function_id}/valves/update", {**stored, **valves})
            done.append("valves set")
        if not function.get("is_active"):
            function = owui.call("POST", f"/api/v1/functions/id/{function_id}/toggle")
            done.append("activated")
        if function.get("type") in ("filter", "action") and not function.get("is_global"):
            owui.call("POST", f"/api/v1/functions/id/{function_id}/toggle/global")
            done.append("made global")
        lines.append(f"function {function_id} ({function.get('type')}): {', '.join(done) or 'already set'}")
    return lines


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--openwebui", default="http://127.0.0.1:8080", help="Open WebUI's address.")
    parser.add_argument("--exemplar", default=os.environ.get("EXEMPLAR_URL", "http://127.0.0.1:7860"),
                        help="Exemplar's address as Open WebUI reaches it (default: $EXEMPLAR_URL or %(default)s).")
    parser.add_argument("--token", default=os.environ.get("EXEMPLAR_INTEGRATION_TOKEN", ""),
                        help="Exemplar's integration token (default: $EXEMPLAR_INTEGRATION_TOKEN).")
    parser.add_argument("--model-id", default="exemplar", help="The model id Exemplar serves (default: %(default)s).")
    parser.add_argument("--email", default="", help="An Open WebUI admin's email; empty in no-auth mode.")
    parser.add_argument("--password", default="", help="That admin's password.")
    parser.add_argument("--api-key", default="", help="An Open WebUI admin's API key (sk-...), instead of a password.")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    exemplar = args.exemplar.rstrip("/")
    if not args.token:
        print("connect.py: no Exemplar integration token: pass --token or set EXEMPLAR_INTEGRATION_TOKEN "
              "(the one Exemplar was started with)", file=sys.stderr)
        return 2
    try:
        owui = OpenWebUI(args.openwebui)
        who = owui.sign_in(args.email, args.password, args.api_key)
        print(f"Open WebUI {owui.base}: signed in as {who}")
        name, state = exemplar_model_name(exemplar, args.model_id, args.token)
        print(f"Exemplar {exemplar}: {state}")
        print(set_connection(owui, exemplar, args.token))
        print(set_model(owui, args.model_id, name))
        print(set_default_model(owui, args.model_id))
        print(set_tasks(owui))
        valves = {"exemplar_url": exemplar, "exemplar_token": args.token, "model_id": args.model_id}
        for line in set_functions(owui, valves):
            print(line)
    except SetupError as exc:
        print(f"connect.py: {exc}", file=sys.stderr)
        return 1
    print(f"Done: open {owui.base} and pick {name or args.model_id!r}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
