"""
title: Correct this answer
description: Asks for the right answer, teaches it to Exemplar as an example, and shows it in place of the answer.
author: Exemplar
version: 1.0.0
required_open_webui_version: 0.12.4
"""

# An Open WebUI Action function: a button under each answer; Open WebUI calls `Action.action`
# with the chat's messages and, in body["id"], the id of the answer the button sits under.
# Exemplar knows that id from the X-OpenWebUI-Message-Id header it got with the completion,
# so the correction lands on exactly the answer the user saw, edits or not.

import asyncio
import base64
import logging
from typing import Any, Awaitable, Callable, Optional

import aiohttp
from pydantic import BaseModel, Field

log = logging.getLogger("exemplar.openwebui.correct")

Emitter = Callable[[dict], Awaitable[Any]]

# A pencil, for the button (Open WebUI shows a sparkle without one; it inverts SVGs in dark mode).
PENCIL = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="black" stroke-width="1.8" '
    'stroke-linecap="round" stroke-linejoin="round"><path d="M4 20l1-4L16 5l3 3L8 19z"/><path d="M14 7l3 3"/></svg>'
)


class Action:
    icon_url = "data:image/svg+xml;base64," + base64.b64encode(PENCIL.encode()).decode()

    class Valves(BaseModel):
        exemplar_url: str = Field(default="http://127.0.0.1:7860", description="Exemplar's address.")
        exemplar_token: str = Field(
            default="", description="Exemplar's integration token (EXEMPLAR_INTEGRATION_TOKEN) or admin password."
        )
        model_id: str = Field(default="exemplar", description="Only answers of this model can be corrected.")
        replace_answer: bool = Field(
            default=True, description="Show the correction in the chat in place of the answer (the old text is kept)."
        )
        timeout_s: float = Field(default=15.0, gt=0, description="Give up on the call to Exemplar after this long.")

    def __init__(self) -> None:
        self.valves = self.Valves()

    async def action(
        self,
        body: dict,
        __user__: Optional[dict] = None,
        __event_emitter__: Optional[Emitter] = None,
        __event_call__: Optional[Callable[[dict], Awaitable[Any]]] = None,
    ) -> Optional[dict]:
        notify = _notifier(__event_emitter__)
        # Open WebUI also calls every action of the model, with an `event`, when an answer is
        # regenerated (ResponseMessage.svelte); only the button itself asks for a correction.
        if body.get("event"):
            return None
        if body.get("model") != self.valves.model_id:
            await notify("warning", f"Only answers of {self.valves.model_id} can be corrected here.")
            return None
        if __event_call__ is None:
            return None

        text = await __event_call__({
            "type": "input",
            "data": {
                "title": "Correct this answer",
                "message": "Type the right answer. It replaces this answer in the chat, and Exemplar learns it "
                "as an example for questions like this one.",
                "placeholder": "The right answer",
            },
        })
        # Cancel answers False; a closed browser tab answers {"error": ...}.
        if not isinstance(text, str) or not text.strip():
            return None
        correction = text.strip()

        user = __user__ or {}
        status, reply = await self._post({
            "message_id": body.get("id"),
            "chat_id": body.get("chat_id"),
            "user_id": user.get("id"),
            "user_name": user.get("name"),
            "correction": correction,
        })
        if status != 201 or not isinstance(reply, dict):
            problem = reply.get("error") if isinstance(reply, dict) and reply.get("error") else reply
            log.warning("Exemplar correction for %s gave %s %s", body.get("id"), status, problem)
            await notify("error", f"Exemplar did not take the correction: {problem or 'no answer'}")
            return None

        note = reply.get("note") or f"Exemplar stored the correction as example #{reply.get('example_id')}."
        await notify("success", note)
        if __event_emitter__ is not None:
            await __event_emitter__({"type": "status", "data": {"description": note, "done": True}})
        if not self.valves.replace_answer:
            return None
        # Open WebUI (Chat.svelte chatActionHandler) puts a returned message's content in place,
        # keeps the old text as originalContent, rewrites the structured output, and saves the chat.
        return {"messages": [{"id": body.get("id"), "content": correction}]}

    async def _post(self, payload: dict) -> tuple[Optional[int], Any]:
        url = self.valves.exemplar_url.rstrip("/") + "/api/openwebui/corrections"
        headers = {"Authorization": f"Bearer {self.valves.exemplar_token}"} if self.valves.exemplar_token else {}
        try:
            timeout = aiohttp.ClientTimeout(total=self.valves.timeout_s)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.post(url, json=payload, headers=headers) as response:
                    try:
                        reply = await response.json(content_type=None)
                    except ValueError:
                        reply = None
                    return response.status, reply
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return None, f"Exemplar cannot be reached at {self.valves.exemplar_url} ({type(exc).__name__})"


def _notifier(emit: Optional[Emitter]) -> Callable[[str, str], Awaitable[None]]:
    async def notify(kind: str, content: str) -> None:
        if emit is not None:
            await emit({"type": "notification", "data": {"type": kind, "content": content}})

    return notify
