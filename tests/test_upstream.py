"""The openai-upstream serving backend against a second, real Exemplar server.

Both servers are `python launch.py serve` on 127.0.0.1 with one base model (a
tiny Llama saved to disk, so training takes seconds): the front stores, retrieves
few-shot examples and trains; the upstream only generates, and loads each
version's adapter by name through vLLM's routes, which Exemplar also offers.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

from tests.live_app import LiveServer

FRONT_PASSWORD = "test-admin-password"
UPSTREAM_PASSWORD = "upstream-admin-password"
TIMEOUT = 3.0


def stream_chat(url: str, content: str, max_tokens: int = 8) -> tuple[list[str], dict]:
    """POST a streamed chat completion; return (content pieces, the finish chunk)."""
    pieces, finish = [], None
    body = {"messages": [{"role": "user", "content": content}], "stream": True, "max_tokens": max_tokens}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            assert "error" not in chunk, chunk
            delta = chunk["choices"][0]["delta"]
            if delta.get("content"):
                pieces.append(delta["content"])
            if chunk["choices"][0]["finish_reason"]:
                finish = chunk
    return pieces, finish


def upstream_models(url: str) -> list[str]:
    return [m["id"] for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]]


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.2)


@pytest.mark.slow
def test_front_streams_through_the_upstream_and_keeps_its_adapter_on_the_active_version(tmp_path, tiny_checkpoint):
    from gradio_client import Client

    upstream = LiveServer(tmp_path / "upstream", tiny_checkpoint, password=UPSTREAM_PASSWORD)
    front = None
    try:
        upstream.wait_ready()
        front = LiveServer(
            tmp_path / "front", tiny_checkpoint,
            "--backend", "openai-upstream", "--upstream-url", upstream.url,
            "--upstream-api-key", UPSTREAM_PASSWORD, "--upstream-timeout", str(TIMEOUT),
            password=FRONT_PASSWORD,
        ).wait_ready()
        admin = {"Authorization": f"Bearer {FRONT_PASSWORD}"}
        health = httpx.get(f"{front.url}/healthz").json()
        assert health["status"] == "ok" and health["upstream"]["status"] == "ok"

        # Chat streams through, piece by piece, and the answer is stored by the front.
        pieces, finish = stream_chat(front.url, "Where is the printer?")
        assert len(pieces) >= 2
        assert finish["exemplar"]["model_version"] == "base"
        assert finish["usage"]["completion_tokens"] == 8
        # The upstream produced exactly that text for the front's rendered prompt (greedy, same model).
        message_id = int(finish["id"])

        # A user corrects it; the admin trains; v1 is promoted, or activated by hand if the gate says no.
        feedback = httpx.post(f"{front.url}/api/feedback",
                              json={"message_id": message_id, "correction": "On the second floor."})
        assert feedback.status_code == 201, feedback.text
        job = httpx.post(f"{front.url}/api/train", json={"max_steps": 2, "replay_examples": 0, "topup_rounds": 0},
                         headers=admin).json()
        wait_for(lambda: httpx.get(f"{front.url}/api/jobs/{job['job_id']}", headers=admin).json()["status"]
                 not in ("queued", "running"), timeout=120)
        view = httpx.get(f"{front.url}/api/jobs/{job['job_id']}", headers=admin).json()
        assert view["model_version"] == "v1", view
        if not view["promoted"]:
            assert httpx.post(f"{front.url}/api/models/v1/activate", headers=admin).status_code == 200

        # The front loads v1's adapter on the upstream under its own name and switches to it.
        wait_for(lambda: "exemplar-v1" in upstream_models(upstream.url))
        wait_for(lambda: httpx.get(f"{front.url}/healthz").json()["upstream"]["adapter"] == "exemplar-v1")
        _, finish = stream_chat(front.url, "Where is the printer?")
        assert finish["exemplar"]["model_version"] == "v1"
        upstream_card = httpx.get(f"{upstream.url}/v1/models").json()["data"][0]
        assert upstream_card["exemplar"]["model_version"] == "exemplar-v1"  # the upstream served the adapter

        # Rollback: back to the base model, and the adapter is unloaded there.
        assert httpx.post(f"{front.url}/api/models/base/activate", headers=admin).json()["active"] == "base"
        wait_for(lambda: "exemplar-v1" not in upstream_models(upstream.url))
        _, finish = stream_chat(front.url, "Where is the printer?")
        assert finish["exemplar"]["model_version"] == "base"

        # The upstream stops: a JSON 502 over HTTP and a message in the UI, within the timeout.
        upstream.stop()
        started = time.monotonic()
        response = httpx.post(f"{front.url}/v1/chat/completions",
                              json={"messages": [{"role": "user", "content": "Hello?"}]}, timeout=30)
        assert time.monotonic() - started < TIMEOUT + 2
        assert response.status_code == 502
        assert "not reachable" in response.json()["error"]
        health = httpx.get(f"{front.url}/healthz").json()
        assert health["status"] == "degraded" and health["upstream"]["status"] == "unreachable"
        client = Client(front.url + "/", verbose=False)
        started = time.monotonic()
        with pytest.raises(Exception, match="not reachable"):
            client.predict(message="Hello?", history=[], system_prompt="", api_name="/chat")
        assert time.monotonic() - started < TIMEOUT + 10
    finally:
        if front is not None:
            front.stop()
        upstream.stop()


class SilentServer:
    """Accepts connections and never answers: a hung model server."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


def upstream_engine(tokenizer, url: str, timeout: float = 1.0):
    """A front's engine: generation by the Exemplar (or vLLM) server at `url`."""
    from bot.serving.upstream import UpstreamClient, UpstreamEngine

    return UpstreamEngine(tokenizer, UpstreamClient(url, timeout=timeout), base_name="tiny", model="exemplar")


def test_a_hung_upstream_answers_502_within_the_timeout_and_stores_nothing(make_client, store, tokenizer):
    silent = SilentServer()
    try:
        client = make_client(upstream_engine(tokenizer, silent.url, timeout=1.0))
        started = time.monotonic()
        response = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]})
        elapsed = time.monotonic() - started
        assert response.status_code == 502
        assert "did not answer within 1 s" in response.json()["error"]
        assert elapsed < 3
        assert store.count_messages() == 0  # nothing half-stored
        health = client.get("/healthz").json()
        assert health["upstream"]["status"] == "unreachable"
    finally:
        silent.close()


def test_a_hung_upstream_gives_the_chat_tab_a_message(store, tokenizer):
    import gradio as gr

    from bot.chat.service import ChatService
    from bot.ui.chat_tab import ChatHandlers
    from core.config import ServeConfig

    silent = SilentServer()
    try:
        service = ChatService(upstream_engine(tokenizer, silent.url, timeout=1.0), store, ServeConfig())
        started = time.monotonic()
        with pytest.raises(gr.Error, match="did not answer within 1 s"):
            list(ChatHandlers(service).submit("Hi", [], [], None, "", True, 0.0, 16))
        assert time.monotonic() - started < 3
    finally:
        silent.close()


def test_the_upstream_rank_limit_is_checked_before_training():
    from core.errors import ConfigError
    from training.config import TrainConfig

    with pytest.raises(ConfigError, match="--train-lora-r 16 is above the upstream's --max-lora-rank 8"):
        TrainConfig(lora_r=16, max_lora_rank=8)
    assert TrainConfig(lora_r=8, max_lora_rank=8).lora_r == 8
    with pytest.raises(Exception, match="max-lora-rank 8"):
        TrainConfig(max_lora_rank=8).with_overrides({"lora_r": 32})


def test_the_upstream_engine_keeps_the_engine_contract_and_answers_as_the_local_engine(store, tiny_model, tokenizer):
    """Through an in-process Exemplar upstream, the answer is the one the local engine gives for the same
    conversation: the front renders the prompt with the one renderer, the upstream continues it as is."""
    from bot.auth import AdminGuard
    from bot.serving.base import GenerationParams
    from bot.serving.contracts import AnswerStream, ChatEngine
    from bot.serving.engine import Engine
    from bot.serving.upstream import UpstreamClient, UpstreamEngine
    from tests.live_app import build_app, serve_in_thread
    from tests.test_contracts import check

    local = Engine(tiny_model, tokenizer, base_name="tiny", max_context_tokens=512)
    app = build_app(store, local, guard=AdminGuard(UPSTREAM_PASSWORD))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is the printer?"}]
    demos = [{"id": 7, "input": [{"role": "user", "content": "Where is the coffee?"}], "output": "In the kitchen."}]
    params = GenerationParams(max_new_tokens=12)
    expected = local.generate(messages, params, demos)
    with serve_in_thread(app) as url:
        engine = UpstreamEngine(tokenizer, UpstreamClient(url, api_key=UPSTREAM_PASSWORD), base_name="tiny",
                                max_context_tokens=512)
        check(ChatEngine, UpstreamEngine, engine)
        generation = engine.stream(messages, params, demos)
        pieces = list(generation)
        check(AnswerStream, type(generation), generation)
    assert len(pieces) >= 2
    assert generation.text == expected.text
    assert (generation.prompt_tokens, generation.completion_tokens) == (expected.prompt_tokens, expected.completion_tokens)
    assert generation.few_shot_ids == [7] and generation.model_version == "base"
    assert generation.finish_reason == expected.finish_reason == "length"


def test_a_restarted_upstream_gets_the_adapter_again(tmp_path, store, tiny_model, tokenizer):
    """The upstream forgot the adapter (it restarted): the next answer loads it again and is served by it."""
    from bot.auth import AdminGuard
    from bot.serving.base import GenerationParams
    from bot.serving.engine import Engine
    from bot.serving.upstream import UpstreamClient, UpstreamEngine
    from tests.live_app import build_app, serve_in_thread
    from tests.test_api_lora import save_adapter

    adapter = tmp_path / "adapters" / "v1"
    save_adapter(tiny_model, adapter, seed=1)
    local = Engine(tiny_model, tokenizer, base_name="tiny", max_context_tokens=512)
    app = build_app(store, local, guard=AdminGuard(UPSTREAM_PASSWORD))
    admin = {"Authorization": f"Bearer {UPSTREAM_PASSWORD}"}
    messages = [{"role": "user", "content": "Where is the printer?"}]
    with serve_in_thread(app) as url:
        engine = UpstreamEngine(tokenizer, UpstreamClient(url, api_key=UPSTREAM_PASSWORD), base_name="tiny",
                                max_context_tokens=512)
        engine.activate("v1", adapter)
        first = engine.generate(messages, GenerationParams(max_new_tokens=6))
        # A name the upstream does not know is a 404 there, as in vLLM.
        unknown = httpx.post(f"{url}/v1/completions", headers=admin, json={"prompt": "Hi", "model": "exemplar-v9"})
        assert unknown.status_code == 404 and "does not exist" in unknown.json()["error"]
        # The upstream "restarts": its adapters are gone.
        assert httpx.post(f"{url}/v1/unload_lora_adapter", headers=admin, json={"lora_name": "exemplar-v1"}).status_code == 200
        again = engine.generate(messages, GenerationParams(max_new_tokens=6))
        assert "exemplar-v1" in [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
    assert again.model_version == "v1" and again.text == first.text
