"""
title: Exemplar feedback
description: Sends each rating of Exemplar's answers (thumb, reason, comment, tags, score) to Exemplar at once.
author: Exemplar
version: 1.0.0
required_open_webui_version: 0.12.4
"""

# An Open WebUI Event function: Open WebUI calls `Event.event` for each event it publishes,
# as a background task inside its own process (events.py dispatch_event_functions). The
# event carries only the feedback id and the rating, so the full row is read in-process.
# Dispatch is fire-and-forget and never retried, hence the reconcile backstop.

import asyncio
import logging
import time
from typing import Any, Optional

import aiohttp
from pydantic import BaseModel, Field

from open_webui.models.feedbacks import FeedbackModel, Feedbacks
from open_webui.models.users import Users

log = logging.getLogger("exemplar.openwebui.feedback")

ROUTE = "/api/openwebui/feedback"


class Event:
    class Valves(BaseModel):
        exemplar_url: str = Field(default="http://127.0.0.1:7860", description="Exemplar's address.")
        exemplar_token: str = Field(
            default="", description="Exemplar's integration token (EXEMPLAR_INTEGRATION_TOKEN) or admin password."
        )
        model_id: str = Field(default="exemplar", description="Only feedback on this model is sent.")
        sync_interval_s: int = Field(
            default=30, ge=1, description="Reconcile with Exemplar at most this often (seconds), on the next event."
        )
        timeout_s: float = Field(default=5.0, gt=0, description="Give up on one call to Exemplar after this long.")

    def __init__(self) -> None:
        self.valves = self.Valves()
        # None until the first reconcile: the first event after load (startup included) reconciles.
        self._last_reconcile: Optional[float] = None
        self._reconcile_task: Optional[asyncio.Task] = None
        # One push at a time, each reading the row inside the lock, so a quick
        # created-then-updated pair cannot reach Exemplar in the wrong order.
        self._push_lock = asyncio.Lock()

    async def event(self, event: dict, __event_name__: str = "") -> None:
        name = __event_name__ or event.get("event", "")
        subject = event.get("subject") or {}
        try:
            if name in ("feedback.created", "feedback.updated") and subject.get("id"):
                await self._push(str(subject["id"]))
            elif name == "feedback.deleted" and subject.get("id"):
                await self._withdraw(str(subject["id"]))
        except Exception:  # never raise into Open WebUI; the next reconcile repairs it
            log.exception("Exemplar feedback: %s %s failed", name, subject.get("id"))
        # A bulk delete names no rows: only a reconcile tells Exemplar which ones went.
        self._maybe_reconcile(force=name == "feedback.deleted_all")

    # --- push -----------------------------------------------------------------------------

    async def _push(self, feedback_id: str) -> bool:
        """Send one feedback row to Exemplar; False when it was skipped or failed."""
        async with self._push_lock:
            row = await Feedbacks.get_feedback_by_id(feedback_id)
            if row is None or not self._is_ours(row.data, row.meta):
                return False
            body = await self._payload(row)
            status, reply = await self._call("PUT", f"{ROUTE}/{feedback_id}", body)
        if status is None or status >= 300:
            log.warning("Exemplar feedback: PUT %s gave %s %s", feedback_id, status, _error(reply))
            return False
        return True

    async def _withdraw(self, feedback_id: str) -> None:
        async with self._push_lock:
            status, reply = await self._call("DELETE", f"{ROUTE}/{feedback_id}")
        # 404: Exemplar never had it (another model's row, or it was never pushed).
        if status is None or (status >= 300 and status != 404):
            log.warning("Exemplar feedback: DELETE %s gave %s %s", feedback_id, status, _error(reply))

    async def _payload(self, row: FeedbackModel) -> dict[str, Any]:
        data, meta = row.data or {}, row.meta or {}
        details: dict[str, Any] = data["details"] if isinstance(data.get("details"), dict) else {}
        tags = data.get("tags")
        user = await Users.get_user_by_id(row.user_id)
        return {
            "message_id": meta.get("message_id"),
            "chat_id": meta.get("chat_id"),
            "user_id": row.user_id,
            "user_name": user.name if user else None,
            "rating": _int_or_none(data.get("rating")),
            "reason": data.get("reason") or None,
            "comment": data.get("comment") or None,
            "tags": [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else None,
            "score": _int_or_none(details.get("rating")),
            "updated_at": row.updated_at,
        }

    def _is_ours(self, data: Optional[dict], meta: Optional[dict] = None) -> bool:
        model = (data or {}).get("model_id") or (meta or {}).get("model_id")
        return model == self.valves.model_id

    # --- reconcile ------------------------------------------------------------------------

    def _maybe_reconcile(self, force: bool = False) -> None:
        if self._reconcile_task is not None and not self._reconcile_task.done():
            return
        now = time.monotonic()
        due = self._last_reconcile is None or now - self._last_reconcile >= self.valves.sync_interval_s
        if not (due or force):
            return
        self._last_reconcile = now
        # A task of its own: event dispatch awaits this handler, sometimes inside an
        # HTTP request (a function toggle), so a slow Exemplar must not hold it up.
        self._reconcile_task = asyncio.create_task(self._reconcile())

    async def _reconcile(self) -> None:
        try:
            rows = await self._our_rows()
            status, reply = await self._call("POST", f"{ROUTE}/sync", {"feedback": rows})
            if status is None or status >= 300 or not isinstance(reply, dict):
                log.warning("Exemplar feedback: sync gave %s %s", status, _error(reply))
                return
            wanted = [str(i) for i in reply.get("wanted") or []]
            sent = sum([await self._push(feedback_id) for feedback_id in wanted])
            withdrawn = reply.get("withdrawn") or []
            if wanted or withdrawn:
                log.info("Exemplar feedback: sync sent %d of %d wanted, Exemplar withdrew %d",
                         sent, len(wanted), len(withdrawn))
        except Exception:
            log.exception("Exemplar feedback: sync failed")

    async def _our_rows(self) -> list[dict[str, Any]]:
        """Id and updated_at of every feedback row on the Exemplar model, without the chat snapshots."""
        data_by_id = {row.id: row.data for row in await Feedbacks.get_feedbacks_for_leaderboard()}
        return [
            {"id": row.id, "updated_at": row.updated_at}
            for row in await Feedbacks.get_all_feedback_ids()
            if self._is_ours(data_by_id.get(row.id))
        ]

    # --- HTTP -----------------------------------------------------------------------------

    async def _call(self, method: str, path: str, body: Optional[dict] = None) -> tuple[Optional[int], Any]:
        """(status, JSON reply); status None when Exemplar could not be reached."""
        url = self.valves.exemplar_url.rstrip("/") + path
        headers = {"Authorization": f"Bearer {self.valves.exemplar_token}"} if self.valves.exemplar_token else {}
        try:
            timeout = aiohttp.ClientTimeout(total=self.valves.timeout_s)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.request(method, url, json=body, headers=headers) as response:
                    try:
                        reply = await response.json(content_type=None)
                    except ValueError:
                        reply = None
                    return response.status, reply
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return None, f"{url}: {type(exc).__name__}: {exc}"


def _int_or_none(value: Any) -> Optional[int]:
    try:
        return int(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None


def _error(reply: Any) -> str:
    if isinstance(reply, dict):
        return str(reply.get("error") or reply.get("detail") or reply)
    return "" if reply is None else str(reply)[:300]
