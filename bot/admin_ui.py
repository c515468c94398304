"""The Admin tab: one password box, then the sections that need it.

Hiding a tab protects nothing (every handler is reachable through Gradio's
API), so each admin handler takes the password as an input and checks it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from bot.admin import AdminGuard
from bot.contracts import TrainingController
from bot.service import ChatService
from core.errors import AuthError


def ui_checker(guard: AdminGuard) -> Callable[[str], None]:
    """A check_admin(password) for Gradio handlers: raises gr.Error on a wrong password."""

    def check_admin(password: str) -> None:
        try:
            guard.check(password)
        except AuthError as exc:
            raise gr.Error(str(exc)) from exc

    return check_admin


def build_admin_tab(service: ChatService, guard: AdminGuard, *, trainer: TrainingController | None = None) -> None:
    """Lay out the Admin tab inside the current Blocks context."""
    from bot.admin_feedback import build_feedback_section
    from bot.admin_review import build_review_section

    check_admin = ui_checker(guard)
    config = service.config
    password = gr.Textbox(
        label="Admin password",
        type="password",
        elem_id="admin-password",
        info="Printed in the server's console at start unless set with --admin-password.",
    )
    policy = config.effective_review_policy
    gr.Markdown(
        f"Review policy: **{policy}** — "
        + (
            "new examples are approved at once."
            if policy == "auto"
            else "new examples wait in the review queue for an admin."
        ),
        elem_id="review-policy",
    )
    with gr.Tabs() as sections:
        with gr.Tab("Examples", id="examples"):
            review = build_review_section(service.store, check_admin, password)
        with gr.Tab("Feedback", id="feedback"):
            _, open_example, example_id = build_feedback_section(service.store, check_admin, password)
        if trainer is not None:
            from bot.admin_training import build_training_section

            with gr.Tab("Training", id="training"):
                build_training_section(trainer, service.store, check_admin, password)

    def show_example(password_value: str, chosen: int | None) -> tuple[Any, ...]:
        """The Feedback view's link: select the rating's example in the Examples tab and go there."""
        check_admin(password_value)
        if not chosen:
            raise gr.Error("This rating made no example")
        return str(chosen), gr.Tabs(selected="examples")

    open_example.click(
        show_example, [password, example_id], [review.selection, sections], api_visibility="private"
    ).success(review.details, [password, review.selection], review.detail_outputs, api_visibility="private")
