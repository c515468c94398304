"""vLLM's runtime LoRA routes and a raw-prompt /v1/completions, so one Exemplar can
serve as another's `openai-upstream` (and the upstream backend is tested without a GPU).

    POST /v1/load_lora_adapter    {"lora_name", "lora_path"}   admin
    POST /v1/unload_lora_adapter  {"lora_name"}                admin
    POST /v1/completions          OpenAI completions           admin

The request shapes are vLLM's. A request whose `model` names a loaded adapter
is answered with it; any other request by the store's active version. The
engine holds one adapter at a time, so switching costs a load (about 0.35 s
on the bundled model); a fronting Exemplar names one adapter at a time except
while it switches versions. /v1/completions is admin-only because it bypasses
storage and few-shot: it is the route a fronting server calls, with this
server's admin password as its API key.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from bot.api.auth import admin_dependency
from bot.api.chat import MODEL_ID, StreamOptions, UnhonouredFields, pieces, sse
from bot.api.responses import error_responses
from bot.auth import AdminGuard
from bot.chat.service import ChatService
from bot.serving.base import GenerationParams
from bot.serving.contracts import ChatEngine, LocalModel
from bot.serving.watcher import ModelWatcher
from core.config import MaxNewTokens, StopText, StopTexts, Temperature, TopP
from core.errors import ConflictError, ExemplarError, NotFoundError, ValidationError

LORA_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


class LoadLoraAdapterRequest(BaseModel):
    """vLLM's body for POST /v1/load_lora_adapter."""

    model_config = ConfigDict(extra="ignore")

    lora_name: str = Field(pattern=LORA_NAME_PATTERN, description="The name requests use as `model`.")
    lora_path: str = Field(min_length=1, max_length=4096, description="A peft adapter folder on this server's disk.")


class UnloadLoraAdapterRequest(BaseModel):
    """vLLM's body for POST /v1/unload_lora_adapter."""

    model_config = ConfigDict(extra="ignore")

    lora_name: str = Field(pattern=LORA_NAME_PATTERN)


class CompletionRequest(UnhonouredFields):
    """OpenAI's (legacy) completion request for one already-rendered prompt. Fields that would change the
    answer's meaning and are not applied are refused (UnhonouredFields); other fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1, description="The rendered prompt (chat template applied), sent as is.")
    model: str | None = Field(
        None,
        description=f"A loaded adapter's lora_name; empty, `{MODEL_ID}` or the base model's name for the active "
        "version. Any other name answers 404, as vLLM does.",
    )
    max_tokens: MaxNewTokens = Field(16, description="Cap on the answer's tokens (OpenAI's default is 16).")
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    stop: StopText | StopTexts | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="Only 1 is supported.")
    add_special_tokens: bool = Field(False, description="Accepted for vLLM compatibility; the prompt is used as is.")
    logprobs: int | None = Field(None, description="Refused with 400 if set: no log probabilities are returned.")
    echo: bool = Field(False, description="Refused with 400 if true: the prompt is not sent back.")
    best_of: int | None = Field(None, description="Refused with 400 above 1: one answer is generated.")
    suffix: str | None = Field(None, description="Refused with 400 unless empty: no text is inserted.")

    def unhonoured(self) -> list[str]:
        problems = super().unhonoured()
        if self.logprobs is not None:
            problems.append("logprobs is not supported: no log probabilities are returned; leave it out")
        if self.echo:
            problems.append("echo is not supported: the prompt is not sent back; leave it out or false")
        if self.best_of not in (None, 1):
            problems.append(f"best_of {self.best_of} is not supported: one answer is generated; leave it out or 1")
        if self.suffix:
            problems.append("suffix is not supported: no text is inserted after the answer; leave it out")
        return problems


class LoraSlots:
    """The adapters loaded by name through the vLLM routes, and the choice among them per request."""

    def __init__(self, engine: ChatEngine, watcher: ModelWatcher | None = None):
        self.engine = engine
        self.watcher = watcher
        self.loaded: dict[str, Path] = {}
        self._lock = threading.Lock()

    def load(self, name: str, path: str) -> None:
        folder = Path(path)
        with self._lock:
            if name in self.loaded:
                raise ValidationError(f"The lora adapter '{name}' has already been loaded.")
            try:
                found = (folder / "adapter_config.json").is_file()
            except OSError as exc:  # a name too long for the file system, a folder it may not enter, ...
                raise ValidationError(f"lora_path cannot be opened: {exc.strerror or exc}") from None
            if not found:
                raise ValidationError(
                    f"No adapter at lora_path {path}: the folder must hold a peft adapter_config.json"
                )
            # Prove it loads now, so a bad adapter fails here and not on a user's request.
            self.engine.activate(name, folder)
            self.loaded[name] = folder

    def unload(self, name: str) -> None:
        with self._lock:
            if self.loaded.pop(name, None) is None:
                raise NotFoundError(f"The lora adapter '{name}' cannot be found.")
            if self.engine.version == name:
                self._back_to_active()

    def select(self, model: str | None) -> None:
        """Point the engine at the adapter `model` names, or back at the store's active version."""
        with self._lock:
            if model in self.loaded:
                if self.engine.version != model:
                    self.engine.activate(model, self.loaded[model])
            elif self.engine.version in self.loaded or self.engine.version.startswith("exemplar-"):
                self._back_to_active()

    def _back_to_active(self) -> None:
        if self.watcher is not None:
            self.watcher.resync()
        else:
            self.engine.activate(None)

    def model_cards(self) -> list[dict[str, Any]]:
        """Loaded adapters as vLLM lists them in /v1/models (with `parent` and `root`)."""
        return [
            {"id": name, "object": "model", "created": 0, "owned_by": "exemplar", "parent": MODEL_ID,
             "root": str(path), "exemplar": {"lora": True}}
            for name, path in self.loaded.items()
        ]


def lora_router(service: ChatService, guard: AdminGuard, slots: LoraSlots) -> APIRouter:
    """The routes above; every one needs the admin password."""

    def need_local_engine() -> LocalModel:
        local = service.engine.local_model()
        if local is None:
            raise ConflictError(
                "this server sends generation to an upstream model server: load adapters there, not here"
            )
        return local

    router = APIRouter(dependencies=[Depends(admin_dependency(guard))], tags=["lora"])
    # Every route's: 400 (the Host check, a refused value), the password's 401 and 429, 409 on a server
    # whose generation runs upstream, and a body's 413 and 422.
    errors = (400, 401, 409, 413, 422, 429)

    @router.post("/v1/load_lora_adapter", response_class=PlainTextResponse,
                 responses=error_responses(*errors, plain_text_route=True))
    async def load_lora_adapter(body: LoadLoraAdapterRequest) -> str:
        """Load a LoRA adapter under a name (vLLM's route); requests then select it with `"model": name`."""
        need_local_engine()
        await run_in_threadpool(slots.load, body.lora_name, body.lora_path)
        return f"Success: LoRA adapter '{body.lora_name}' added successfully."

    @router.post("/v1/unload_lora_adapter", response_class=PlainTextResponse,
                 responses=error_responses(*errors, 404, plain_text_route=True))
    async def unload_lora_adapter(body: UnloadLoraAdapterRequest) -> str:
        """Unload a LoRA adapter by name (vLLM's route)."""
        need_local_engine()
        await run_in_threadpool(slots.unload, body.lora_name)
        return f"Success: LoRA adapter '{body.lora_name}' removed successfully."

    @router.post("/v1/completions", tags=["openai"], responses=error_responses(*errors, 404))
    async def completions(body: CompletionRequest, request: Request) -> Any:
        """Continue an already-rendered prompt (OpenAI completions, `stream` true or false). Nothing is stored."""
        body.refuse_unhonoured()
        local = need_local_engine()
        params = GenerationParams(
            max_new_tokens=body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=[body.stop] if isinstance(body.stop, str) else list(body.stop or []),
        ).validate()

        def start() -> Any:
            # As vLLM: a model name that is neither this server's nor a loaded adapter is a 404, so a
            # fronting server learns that its adapter is gone (this server restarted) and loads it again.
            if body.model not in (None, "", MODEL_ID, service.engine.base_name) and body.model not in slots.loaded:
                raise NotFoundError(f"The model `{body.model}` does not exist.")
            slots.select(body.model)
            return local.stream_prompt(body.prompt, params)

        generation = await run_in_threadpool(start)
        created = int(time.time())
        ident = f"cmpl-{created}-{id(generation):x}"

        def usage() -> dict[str, int]:
            prompt, completion = generation.prompt_tokens, generation.completion_tokens
            return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

        def chunk(text: str, finish: str | None = None, **extra: Any) -> dict[str, Any]:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            return {"id": ident, "object": "text_completion", "created": created,
                    "model": generation.model_version or MODEL_ID, "choices": [choice], **extra}

        if body.stream:
            async def events() -> AsyncIterator[str]:
                try:
                    async with aclosing(pieces(generation, request)) as stream:
                        async for piece in stream:
                            yield sse(chunk(piece))
                except ExemplarError as exc:
                    yield sse({"error": {"message": str(exc), "code": exc.status_code}})
                    yield sse("[DONE]")
                    return
                yield sse(chunk("", generation.finish_reason))
                if body.stream_options and body.stream_options.include_usage:
                    yield sse({**chunk(""), "choices": [], "usage": usage()})
                yield sse("[DONE]")

            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        async with aclosing(pieces(generation, request)) as stream:
            async for _ in stream:
                pass
        return {**chunk(generation.text, generation.finish_reason), "usage": usage()}

    return router
