"""
title: Exemplar notes
description: Shows under each of Exemplar's answers which model version wrote it and which learned examples guided it.
author: Exemplar
version: 1.0.0
required_open_webui_version: 0.12.4
"""

# An Open WebUI Filter function; only its outlet is used. Open WebUI runs the outlet in the
# server after the answer has streamed and been saved (utils/middleware.py outlet_filter_handler).
# A `status` event is saved into the message's statusHistory (socket/main.py get_event_emitter),
# so the note is still there when the chat is opened again.
#
# It also keeps the model's name in step with the version that answered: Open WebUI shows the
# name of its model override (connect.py makes one, to turn built-in tools off) instead of the
# "Exemplar (v3)" that Exemplar's /v1/models gives, so after a retrain it would go stale.

import asyncio
import logging
import re
from typing import Any, Awaitable, Callable, Optional
from urllib.parse import quote

import aiohttp
from pydantic import BaseModel, Field

from open_webui.models.models import ModelForm, Models

log = logging.getLogger("exemplar.openwebui.notes")


class Filter:
    class Valves(BaseModel):
        exemplar_url: str = Field(default="http://127.0.0.1:7860", description="Exemplar's address.")
        exemplar_token: str = Field(
            default="", description="Exemplar's integration token (EXEMPLAR_INTEGRATION_TOKEN) or admin password."
        )
        model_id: str = Field(default="exemplar", description="Only answers of this model get a note.")
        timeout_s: float = Field(default=3.0, gt=0, description="Show nothing if Exemplar takes longer than this.")
        follow_version: bool = Field(
            default=True, description="Rename the model to 'Exemplar (<version>)' when another version answers "
            "(only while its name has that form, so a name an admin chose stays)."
        )
        retries: int = Field(
            default=2, ge=0, description="Ask again this many times, 0.5 s apart, while Exemplar has not yet "
            "linked the answer (it stores the answer as the stream ends)."
        )

    def __init__(self) -> None:
        self.valves = self.Valves()

    async def outlet(
        self,
        body: dict,
        __event_emitter__: Optional[Callable[[dict], Awaitable[Any]]] = None,
        __metadata__: Optional[dict] = None,
    ) -> dict:
        message_id = body.get("id") or (__metadata__ or {}).get("message_id")
        if body.get("model") != self.valves.model_id or not message_id or __event_emitter__ is None:
            return body
        try:
            reply = await self._source(str(message_id))
            if reply and reply.get("note"):
                await __event_emitter__({"type": "status", "data": {"description": reply["note"], "done": True}})
            if reply and reply.get("model_version") and self.valves.follow_version:
                await self._follow_version(str(reply["model_version"]))
        except Exception:  # a missing note must never break the answer
            log.exception("Exemplar notes: %s failed", message_id)
        return body

    async def _follow_version(self, version: str) -> None:
        model = await Models.get_model_by_id(self.valves.model_id)
        wanted = f"Exemplar ({version})"  # as Exemplar's /v1/models names it
        if model is None or model.name == wanted or not re.fullmatch(r"Exemplar( \(.*\))?", model.name):
            return
        form = ModelForm(id=model.id, base_model_id=model.base_model_id, name=wanted, meta=model.meta,
                         params=model.params, is_active=model.is_active)
        await Models.update_model_by_id(model.id, form)
        log.info("Exemplar notes: model %s renamed %r", model.id, wanted)

    async def _source(self, message_id: str) -> Optional[dict]:
        """Exemplar's account of the answer ({"note", "model_version", ...}), or None."""
        url = f"{self.valves.exemplar_url.rstrip('/')}/api/openwebui/messages/{quote(message_id, safe='')}"
        headers = {"Authorization": f"Bearer {self.valves.exemplar_token}"} if self.valves.exemplar_token else {}
        timeout = aiohttp.ClientTimeout(total=self.valves.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for attempt in range(self.valves.retries + 1):
                if attempt:
                    await asyncio.sleep(0.5)
                try:
                    async with session.get(url, headers=headers) as response:
                        if response.status == 404:
                            continue
                        if response.status != 200:
                            log.warning("Exemplar notes: GET %s gave %s", message_id, response.status)
                            return None
                        reply = await response.json(content_type=None)
                        return reply if isinstance(reply, dict) else None
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                    log.warning("Exemplar notes: GET %s failed: %r", message_id, exc)
                    return None
        return None
