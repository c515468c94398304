"""Who may reach the server and how much an anonymous user may ask of it: the Host
check on a loopback bind, the limit on wrong admin passwords (HTTP 429 and the Admin
tab), and the caps on a conversation's length."""

from __future__ import annotations

import gradio as gr
import pytest
from fastapi.testclient import TestClient

from bot.auth import AdminGuard
from bot.server import build_server, uvicorn_options
from bot.ui.admin_tab import ui_checker
from core.config import ServeConfig
from core.errors import ConfigError
from tests.fakes import FakeEngine
from tests.live_app import ADMIN_PASSWORD, build_app, serve_in_thread
from tests.test_ui_handlers import ask, make

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def server_app(store, tmp_path):
    """The app exactly as `serve` builds it (Host check, login limit), on a fake engine."""
    config = ServeConfig(data_dir=tmp_path, allowed_hosts="exemplar.lan")
    app, watcher = build_server(FakeEngine(), store, config, ADMIN_PASSWORD, watch_interval=60)
    yield app
    watcher.stop()


def test_a_loopback_server_refuses_other_host_names(server_app):
    for host in ("127.0.0.1:7860", "localhost:7860", "[::1]:7860", "LOCALHOST", "exemplar.lan:7860"):
        client = TestClient(server_app, base_url=f"http://{host}")
        assert client.get("/healthz").status_code == 200, host
        assert client.get("/").status_code == 200, host  # the Gradio page
    rebinding = TestClient(server_app, base_url="http://evil.example:7860")
    for method, path, body in (("GET", "/", None), ("GET", "/gradio_api/info", None),
                               ("POST", "/v1/chat/completions", {"messages": QUESTION}),
                               ("POST", "/api/feedback", {"message_id": 1, "rating": "up"}),
                               ("POST", "/gradio_api/upload", None)):
        response = rebinding.request(method, path, json=body)
        assert response.status_code == 400, (path, response.status_code)
        assert "evil.example" in response.json()["error"] and "--allowed-hosts" in response.json()["error"]
    for host in ("127.0.0.1.evil.example", "localhost.evil.example", ""):
        assert TestClient(server_app, base_url=f"http://{host or 'x'}").get("/healthz", headers={"host": host}).status_code == 400


def test_host_names_follow_the_bind_address():
    assert ServeConfig().host_names == {"localhost", "127.0.0.1", "[::1]"}
    assert "box.lan" in ServeConfig(allowed_hosts="box.lan, other").host_names
    assert ServeConfig(host="0.0.0.0", admin_password="x" * 8).host_names is None  # public: any name
    assert ServeConfig(host="0.0.0.0", admin_password="x" * 8, allowed_hosts="bot.example").host_names == {
        "0.0.0.0", "bot.example"}
    assert ServeConfig(allowed_hosts="*").host_names is None


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_wrong_admin_passwords_over_http_are_limited_with_429(make_client):
    clock = Clock()
    client = make_client(guard=AdminGuard(ADMIN_PASSWORD, max_failures=5, window_s=60, clock=clock))
    wrong = {"Authorization": "Bearer wrong-password"}
    right = {"Authorization": f"Bearer {ADMIN_PASSWORD}"}
    assert client.get("/api/examples", headers=right).status_code == 200
    assert [client.get("/api/examples", headers=wrong).status_code for _ in range(5)] == [401] * 5
    limited = client.get("/api/examples", headers=wrong)
    assert limited.status_code == 429 and "Too many" in limited.json()["error"]
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    # While limited even the right password is refused: otherwise guessing would go on.
    assert client.get("/api/examples", headers=right).status_code == 429
    assert client.get("/api/examples").status_code == 401  # no password is not a guess
    clock.now += 61
    assert client.get("/api/examples", headers=right).status_code == 200
    assert client.get("/api/examples", headers=wrong).status_code == 401  # a success starts the count afresh


def test_wrong_admin_passwords_in_the_admin_tab_get_a_calm_error(caplog):
    clock = Clock()
    check_admin = ui_checker(AdminGuard(ADMIN_PASSWORD, max_failures=3, window_s=30, clock=clock))
    for _ in range(3):
        with pytest.raises(gr.Error) as wrong:
            check_admin("guess")
        assert wrong.value.print_exception is False  # Gradio logs no traceback for it
        assert wrong.value.__cause__ is None
    with pytest.raises(gr.Error, match="Too many wrong admin passwords: wait 30 s") as limited:
        check_admin(ADMIN_PASSWORD)
    assert limited.value.print_exception is False
    clock.now += 31
    check_admin(ADMIN_PASSWORD)


def test_the_admin_tab_counts_wrong_passwords_per_browser_address():
    """A stranger's wrong guesses in the Admin tab (or through Gradio's API) lock out the stranger's
    address only, not an admin at another address."""
    from types import SimpleNamespace

    from gradio.context import LocalContext

    check_admin = ui_checker(AdminGuard(ADMIN_PASSWORD, max_failures=3, window_s=30, clock=Clock()))

    def as_client(host, password):
        token = LocalContext.request.set(SimpleNamespace(client=SimpleNamespace(host=host)))
        try:
            check_admin(password)
        finally:
            LocalContext.request.reset(token)

    for _ in range(3):
        with pytest.raises(gr.Error, match="wrong"):
            as_client("203.0.113.9", "guess")
    with pytest.raises(gr.Error, match="Too many wrong admin passwords"):
        as_client("203.0.113.9", ADMIN_PASSWORD)
    as_client("192.0.2.10", ADMIN_PASSWORD)  # the admin, elsewhere, still gets in


def test_serve_wires_the_configured_login_limit(store, tmp_path):
    config = ServeConfig(data_dir=tmp_path, admin_login_attempts=2)
    app, watcher = build_server(FakeEngine(), store, config, ADMIN_PASSWORD, watch_interval=60)
    try:
        client = TestClient(app, base_url="http://127.0.0.1")
        codes = [client.get("/api/examples", headers={"Authorization": "Bearer nope-nope"}).status_code for _ in range(3)]
        assert codes == [401, 401, 429]
    finally:
        watcher.stop()


def wrong_tries_over_http(store, config: ServeConfig, forwarded_for: list[str]) -> list[int]:
    """The status of one wrong admin password per address in `forwarded_for` (sent as X-Forwarded-For),
    through a real uvicorn on 127.0.0.1 set up as `serve` sets it up for `config`."""
    import httpx

    options = {k: v for k, v in uvicorn_options(config).items() if k not in ("host", "port")}
    guard = AdminGuard(ADMIN_PASSWORD, max_failures=config.admin_login_attempts, window_s=60)
    with serve_in_thread(build_app(store, guard=guard), **options) as url, httpx.Client(base_url=url) as client:
        wrong = {"Authorization": "Bearer wrong-password"}
        return [client.get("/api/examples", headers={**wrong, "X-Forwarded-For": address}).status_code
                for address in forwarded_for]


FORGED = [f"203.0.113.{i}" for i in range(1, 15)]  # a new address with every try


def test_a_forged_x_forwarded_for_does_not_dodge_the_login_limit(store, monkeypatch):
    # uvicorn believes loopback clients' headers by default (and $FORWARDED_ALLOW_IPS): serve must not.
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
    assert wrong_tries_over_http(store, ServeConfig(), FORGED) == [401] * 10 + [429] * 4


def test_a_forwarded_header_from_a_client_that_is_not_the_named_proxy_is_ignored(store):
    config = ServeConfig(forwarded_allow_ips="10.0.0.7, 192.168.0.0/16")
    assert wrong_tries_over_http(store, config, FORGED) == [401] * 10 + [429] * 4


def test_behind_a_named_proxy_the_limit_counts_each_forwarded_address(store):
    config = ServeConfig(forwarded_allow_ips="127.0.0.1")
    one_client = ["198.51.100.7"] * 11
    # Distinct people behind the proxy are counted apart, and one of them is limited on the 11th try. The
    # address the proxy appends is the client's: one it forged in front of it (the proxy keeps a client's
    # own X-Forwarded-For) does not free it.
    forged_in_front = "203.0.113.99, 198.51.100.7"
    codes = wrong_tries_over_http(store, config, FORGED + one_client + [forged_in_front, "198.51.100.8"])
    assert codes == [401] * 14 + [401] * 10 + [429] + [429, 401]


def test_forwarded_allow_ips_names_addresses_or_networks():
    assert uvicorn_options(ServeConfig())["proxy_headers"] is False
    assert uvicorn_options(ServeConfig())["forwarded_allow_ips"] == ""  # not None: uvicorn would trust loopback
    named = uvicorn_options(ServeConfig(forwarded_allow_ips="127.0.0.1,::1, 10.0.0.0/8"))
    assert named["proxy_headers"] is True and named["forwarded_allow_ips"] == "127.0.0.1,::1, 10.0.0.0/8"
    assert uvicorn_options(ServeConfig(forwarded_allow_ips="*"))["proxy_headers"] is True
    with pytest.raises(ConfigError, match="--forwarded-allow-ips 127.0.0.1,proxy.lan: 'proxy.lan' is not an IP address"):
        ServeConfig(forwarded_allow_ips="127.0.0.1,proxy.lan")


def test_conversation_length_is_capped_with_413(make_client):
    client = make_client(config=ServeConfig(max_conversation_chars=1000, max_conversation_turns=5))
    ok = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x" * 990}]})
    assert ok.status_code == 200, ok.text
    long = client.post("/v1/chat/completions", json={"messages": [
        {"role": "user", "content": "x" * 600}, {"role": "assistant", "content": "y"}, {"role": "user", "content": "z" * 600}]})
    assert long.status_code == 413 and "1201 characters" in long.json()["error"] and "1000" in long.json()["error"]
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": "hi"} for i in range(7)]
    many = client.post("/v1/chat/completions", json={"messages": turns})
    assert many.status_code == 413 and "7 messages" in many.json()["error"]


def test_conversation_caps_in_the_chat_tab(store):
    engine = FakeEngine()
    _, handlers = make(store, engine, max_conversation_chars=50)
    with pytest.raises(gr.Error, match="at most 50"):
        ask(handlers, "x" * 60)
    assert engine.calls == []  # refused before the model saw it


def test_cap_settings_are_validated():
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="--max-conversation-turns 0: must be at least 1"):
        ServeConfig(max_conversation_turns=0)
    with pytest.raises(ConfigError, match="--admin-login-window-s inf: must be a finite number"):
        ServeConfig(admin_login_window_s=float("inf"))


def test_uploads_through_gradio_are_capped(store, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "uploads"))
    config = ServeConfig(data_dir=tmp_path, max_upload_mb=1)
    app, watcher = build_server(FakeEngine(), store, config, ADMIN_PASSWORD, watch_interval=60)
    try:
        client = TestClient(app, base_url="http://127.0.0.1")
        small = client.post("/gradio_api/upload", files={"files": ("a.jsonl", b"x" * 1000)})
        assert small.status_code == 200, small.text
        big = client.post("/gradio_api/upload", files={"files": ("b.jsonl", b"x" * (2 * 1024 * 1024))})
        assert big.status_code == 413, (big.status_code, big.text[:200])
        stored = [p for p in (tmp_path / "uploads").rglob("*") if p.is_file()]
        assert all(p.stat().st_size < 1024 * 1024 for p in stored)
    finally:
        watcher.stop()
