"""The `openai-upstream` serving backend: generation runs on an OpenAI-compatible
server (vLLM started with LoRA support, or another Exemplar), and each version's
adapter is loaded there at run time.

It offers what ChatService uses of the local engine (`version`, `base_name`,
`stream`, `prepare`, `activate`), so prompt building, few-shot retrieval,
message storage, feedback and version stamping stay in this process.

Why /v1/completions with the rendered prompt rather than /v1/chat/completions
with messages: the prompt is rendered here by core/prompts.py, the one renderer
training uses too, so the upstream sees exactly the text (few-shot turns and
all) that the adapter was trained on, whatever chat template the upstream
would have applied; the prompt is fitted to the context window here with exact
token counts; and the upstream stays stateless (an Exemplar upstream neither
retrieves examples again nor stores the turn twice). `add_special_tokens:
false` keeps vLLM from adding a second BOS to a template that has one.

Adapters: version vN is loaded under the name `exemplar-vN` (never reloaded in
place under one name: vLLM's in-place reload can serve stale prefix-cache
entries, vllm#42125), requests switch to it, then the old one is unloaded once
no answer in flight still uses it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from bot.serving.base import AnswerState, GenerationParams, PromptFitting
from core.errors import ConflictError, ExemplarError, ModelLoadError
from core.prompts import FittedPrompt, Message
from storage.vocabulary import BASE_VERSION

log = logging.getLogger(__name__)

ADAPTER_PREFIX = "exemplar-"
HEALTH_TIMEOUT = 3.0


class UpstreamError(ExemplarError):
    """The upstream model server is down, slow, or refused a request."""

    status_code = 502

    def __init__(self, message: str, upstream_status: int | None = None):
        super().__init__(message)
        self.upstream_status = upstream_status  # the upstream's HTTP status, when it answered at all


def lora_name(version: str) -> str:
    """The upstream's name for a version's adapter: unique per version, never reused for other weights."""
    return f"{ADAPTER_PREFIX}{version}"


class UpstreamClient:
    """HTTP calls to the upstream, each within the timeout, every failure an UpstreamError."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 30.0):
        import httpx

        self.url = url.rstrip("/")
        if self.url.endswith("/v1"):
            self.url = self.url[: -len("/v1")]
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # One pooled client, shared by all threads (httpx.Client is thread-safe).
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=httpx.Timeout(timeout))

    def describe(self, exc: Exception) -> str:
        import httpx

        if isinstance(exc, httpx.TimeoutException):
            return f"The model server at {self.url} did not answer within {self.timeout:g} s"
        if isinstance(exc, httpx.ConnectError):
            return f"The model server at {self.url} is not reachable (is it running? check --upstream-url)"
        return f"The model server at {self.url} failed: {type(exc).__name__}: {exc}"

    def request(self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self.http.request(method, path, timeout=timeout or httpx.USE_CLIENT_DEFAULT, **kwargs)
        except httpx.HTTPError as exc:
            raise UpstreamError(self.describe(exc)) from exc
        return response

    def open_stream(self, path: str, body: dict[str, Any]) -> Any:
        """POST and return the open streaming response (status checked); close it when done."""
        import httpx

        try:
            response = self.http.send(self.http.build_request("POST", path, json=body), stream=True)
        except httpx.HTTPError as exc:
            raise UpstreamError(self.describe(exc)) from exc
        if response.status_code >= 400:
            try:
                response.read()
                detail = error_detail(response)
            except httpx.HTTPError:
                detail = f"HTTP {response.status_code}"
            finally:
                response.close()
            raise UpstreamError(f"The model server refused the request: {detail}", response.status_code)
        return response

    def models(self) -> list[dict[str, Any]]:
        response = self.request("GET", "/v1/models", timeout=min(self.timeout, HEALTH_TIMEOUT))
        if response.status_code >= 400:
            raise UpstreamError(f"The model server answered GET /v1/models with {error_detail(response)}")
        return list(response.json().get("data") or [])

    def close(self) -> None:
        self.http.close()


def error_detail(response: Any) -> str:
    """A short description of an error answer (vLLM, OpenAI and Exemplar shape their errors differently)."""
    text = response.text.strip()
    try:
        body = json.loads(text)
    except ValueError:
        return f"HTTP {response.status_code}: {text[:300]}"
    error = body.get("error", body.get("message", body)) if isinstance(body, dict) else body
    if isinstance(error, dict):
        error = error.get("message", error)
    return f"HTTP {response.status_code}: {str(error)[:300]}"


class UpstreamGeneration(AnswerState):
    """One answer streamed from the upstream; the same surface as the local engine's Generation.

    The request is sent when this is created, so a down or refusing upstream
    fails before anything is stored; iterating reads the server-sent events.
    """

    def __init__(self, engine: UpstreamEngine, prompt: FittedPrompt, params: GenerationParams):
        super().__init__(prompt, params)
        self.engine = engine
        self.model_version, self.model_name = engine.acquire()
        body: dict[str, Any] = {
            "model": self.model_name,
            "prompt": prompt.text,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
            "add_special_tokens": False,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        try:
            try:
                self._response = engine.client.open_stream("/v1/completions", body)
            except UpstreamError as exc:
                # A restarted upstream has forgotten its adapters: load this one again, then retry once.
                if exc.upstream_status != 404 or not engine.reload(self.model_name):
                    raise
                self._response = engine.client.open_stream("/v1/completions", body)
        except BaseException:
            engine.release(self.model_name)
            raise
        self._released = False

    def cancel(self) -> None:
        """Stop early (the client went away): closing the response ends the upstream's work too."""
        self._cancel.set()
        try:
            self._response.close()
        except Exception:  # closing from another thread may race the reader; the reader stops either way
            pass

    def _events(self) -> Iterator[dict[str, Any]]:
        import httpx

        try:
            for line in self._response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    return
                event = json.loads(data)
                if isinstance(event, dict) and "error" in event:
                    error = event["error"]
                    message = error.get("message", error) if isinstance(error, dict) else error
                    raise UpstreamError(f"The model server failed while answering: {message}")
                yield event
        except (httpx.HTTPError, httpx.StreamError, ValueError) as exc:
            if self._cancel.is_set():
                return
            if isinstance(exc, ValueError):
                raise UpstreamError(f"The model server sent something that is not an event stream: {exc}") from exc
            raise UpstreamError(self.engine.client.describe(exc)) from exc

    def __iter__(self) -> Iterator[str]:
        usage_seen = False
        try:
            for event in self._events():
                if event.get("usage"):
                    self.completion_tokens = int(event["usage"].get("completion_tokens") or 0)
                    usage_seen = True
                for choice in event.get("choices") or []:
                    piece = choice.get("text") or ""
                    if choice.get("finish_reason"):
                        self.finish_reason = "length" if choice["finish_reason"] == "length" else "stop"
                    if piece:
                        self.text += piece
                        yield piece
                if self._cancel.is_set():
                    break
        finally:
            self._response.close()
            if not self._released:
                self._released = True
                self.engine.release(self.model_name)
        if not usage_seen:
            self.completion_tokens = len(self.engine.tokenizer(self.text, add_special_tokens=False)["input_ids"])
        self.text = self.text.strip()


class UpstreamEngine(PromptFitting):
    """Sends generation to an OpenAI-compatible server and keeps its adapter on the active version."""

    def __init__(
        self,
        tokenizer: Any,
        client: UpstreamClient,
        *,
        base_name: str,
        model: str | None = None,
        adapter_dir: str | None = None,
        max_context_tokens: int = 2048,
    ):
        self.tokenizer = tokenizer
        self.client = client
        self.base_name = base_name
        self.max_context_tokens = max_context_tokens
        self.adapter_dir = adapter_dir
        self.version = BASE_VERSION
        self._base_model = model
        self._adapter: str | None = None  # the upstream name requests use now; None: the base model
        self._adapter_path: str | None = None  # where the upstream reads it
        self._in_flight: Counter[str] = Counter()
        self._retiring: set[str] = set()  # switched away from, unloaded when their last answer ends
        self._lock = threading.Lock()  # guards the fields above
        self._switch = threading.Lock()  # one activation at a time

    @classmethod
    def load(cls, config: Any) -> UpstreamEngine:
        """The tokenizer of the base model (for the prompt), and a client for the upstream in `config`."""
        from transformers import AutoTokenizer

        from core.models import resolve_base_model

        ref = resolve_base_model(config.base_model, Path(config.data_dir))
        try:
            tokenizer = AutoTokenizer.from_pretrained(ref.path)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"Cannot load the tokenizer of {ref.path!r}: {str(exc).splitlines()[0]}") from exc
        client = UpstreamClient(config.upstream_url, api_key=config.upstream_api_key, timeout=config.upstream_timeout)
        return cls(
            tokenizer,
            client,
            base_name=ref.name,
            model=config.upstream_model,
            adapter_dir=config.upstream_adapter_dir,
            max_context_tokens=config.max_context_tokens,
        )

    # -- which model requests name -------------------------------------------

    def base_model_name(self) -> str:
        """The upstream's name for the base model: the configured one, else the first it lists."""
        if self._base_model is None:
            models = self.client.models()
            if not models:
                raise UpstreamError(f"The model server at {self.client.url} lists no models")
            self._base_model = str(models[0]["id"])
        return self._base_model

    def acquire(self) -> tuple[str, str]:
        """(version, upstream model name) for a new request, counted as in flight until release()."""
        with self._lock:
            version, name = self.version, self._adapter
        name = name or self.base_model_name()
        with self._lock:
            self._in_flight[name] += 1
        return version, name

    def release(self, name: str) -> None:
        with self._lock:
            self._in_flight[name] -= 1
            done = self._in_flight[name] <= 0 and name in self._retiring
            if done:
                self._retiring.discard(name)
                del self._in_flight[name]
        if done:
            self._unload(name)

    # -- adapters --------------------------------------------------------------

    def remote_path(self, adapter_path: Path) -> str:
        """Where the upstream reads a version folder: the same path, or the same name under adapter_dir."""
        if self.adapter_dir:
            return str(PurePosixPath(self.adapter_dir) / adapter_path.name)
        return str(adapter_path.resolve())

    def activate(self, version: str | None, adapter_path: str | Path | None = None) -> float:
        """Serve `version` from now on: load its adapter on the upstream, switch requests, unload the old one.

        Raises ModelLoadError (and keeps serving the old version) if the upstream cannot load it.
        """
        started = time.perf_counter()
        with self._switch:
            name: str | None = None
            remote: str | None = None
            if version in (None, BASE_VERSION):
                version = BASE_VERSION
            else:
                path = Path(adapter_path or "")
                if not (path / "adapter_config.json").is_file():
                    raise ModelLoadError(f"Adapter for {version} not found at {path}: retrain, or activate another version")
                name, remote = lora_name(version), self.remote_path(path)
                if name != self._adapter:
                    self._load(name, remote)
            with self._lock:
                old, self._adapter, self.version = self._adapter, name, version
                self._adapter_path = remote
                retire = old if old is not None and old != name else None
                idle = retire is not None and self._in_flight[retire] <= 0
                if retire is not None and not idle:
                    self._retiring.add(retire)
            if retire is not None and idle:
                self._unload(retire)
        log.info("Upstream now serves %s (%s)", version, name or "base model")
        return time.perf_counter() - started

    def reload(self, name: str) -> bool:
        """Load the adapter in use again (the upstream restarted); False if `name` is not it or it fails."""
        with self._switch:
            if name != self._adapter or self._adapter_path is None:
                return False
            try:
                self._load(name, self._adapter_path)
            except ModelLoadError as exc:
                log.error("%s", exc)
                return False
        return True

    def _load(self, name: str, remote_path: str) -> None:
        body = {"lora_name": name, "lora_path": remote_path}
        try:
            response = self.client.request("POST", "/v1/load_lora_adapter", json=body)
            if response.status_code == 400 and "already" in response.text.lower():
                # Left from an earlier run of this server: unload and load afresh (never in place).
                log.info("Adapter %s is already loaded on the upstream; loading it afresh", name)
                self._unload(name)
                response = self.client.request("POST", "/v1/load_lora_adapter", json=body)
        except UpstreamError as exc:
            raise ModelLoadError(f"Cannot load adapter {name} on the upstream: {exc}") from exc
        if response.status_code >= 400:
            raise ModelLoadError(
                f"The upstream did not load adapter {name} from {remote_path}: {error_detail(response)}. "
                "Check that the path is readable there (shared volume, --upstream-adapter-dir), that vLLM runs "
                "with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, and that lora_r fits --max-lora-rank."
            )
        log.info("Loaded adapter %s on the upstream from %s", name, remote_path)

    def _unload(self, name: str) -> None:
        """Unload an adapter no request uses any more; a failure only costs upstream memory, so it is logged."""
        try:
            response = self.client.request("POST", "/v1/unload_lora_adapter", json={"lora_name": name})
            if response.status_code >= 400:
                log.warning("The upstream did not unload %s: %s", name, error_detail(response))
        except UpstreamError as exc:
            log.warning("Cannot unload %s on the upstream: %s", name, exc)

    # -- generation ----------------------------------------------------------

    def stream(
        self,
        messages: Sequence[Message],
        params: GenerationParams | None = None,
        demonstrations: Sequence[dict[str, Any]] = (),
    ) -> UpstreamGeneration:
        """Send the prompt to the upstream; iterate the result for text as it comes."""
        params = (params or GenerationParams()).validate()
        return UpstreamGeneration(self, self.prepare(messages, params, demonstrations), params)

    def answer_with(
        self,
        version: str,
        adapter_path: str | Path | None,
        messages: Sequence[Message],
        params: GenerationParams | None = None,
    ) -> str:
        """The version serving answers through the upstream; another cannot without switching the upstream's
        adapter for every user, so that is refused (ConflictError)."""
        if (version or BASE_VERSION) != self.version:
            raise ConflictError(
                f"this server sends generation to an upstream model server, which serves {self.version} to "
                f"everyone: {version} cannot answer alone there. Activate it to try it, or try it on a server "
                "with the built-in engine"
            )
        return self.generate(messages, params).text

    def local_model(self) -> None:
        """None: the model runs on the upstream server, not in this process."""
        return None

    def health(self) -> dict[str, Any]:
        """The upstream's state for /healthz: reachable or not, and the model requests name now."""
        state: dict[str, Any] = {"backend": "openai-upstream", "url": self.client.url, "adapter": self._adapter}
        try:
            models = self.client.models()
        except UpstreamError as exc:
            return {**state, "status": "unreachable", "error": str(exc)}
        ids = [str(m.get("id")) for m in models]
        missing = self._adapter is not None and self._adapter not in ids
        return {
            **state,
            "status": "degraded" if missing else "ok",
            "models": ids,
            **({"error": f"the upstream no longer lists adapter {self._adapter}"} if missing else {}),
        }
