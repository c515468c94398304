"""The Admin tab: one password box, then the sections that need it.

Hiding a tab protects nothing (every handler is reachable through Gradio's
API), so each admin handler takes the password as an input and checks it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from bot.auth import AdminGuard
from bot.chat.service import ChatService
from bot.ui.admin_feedback import build_feedback_section
from bot.ui.admin_review import ANY, build_review_section
from bot.ui.admin_training import build_training_section
from bot.ui.errors import user_error
from core.errors import AuthError, RateLimitError
from core.training_contract import TrainingController
from storage.vocabulary import ExampleStatus


def ui_client() -> str:
    """Who is trying the password in the current Gradio event, for the login limit: "ui:" and the
    browser's address, so a stranger's wrong guesses do not lock an admin out of the Admin tab.
    ("ui" outside an event.) Behind a reverse proxy every browser shares the proxy's address, unless
    --forwarded-allow-ips names the proxy (bot/server.py's uvicorn_options)."""
    from gradio.context import LocalContext  # the request Gradio sets for the event being handled

    request = LocalContext.request.get(None)
    host = getattr(getattr(request, "client", None), "host", None)
    return f"ui:{host}" if host else "ui"


def ui_checker(guard: AdminGuard) -> Callable[[str], None]:
    """A check_admin(password) for Gradio handlers: raises gr.Error on a wrong password."""

    def check_admin(password: str) -> None:
        try:
            guard.check(password, ui_client())
        except (AuthError, RateLimitError) as exc:
            # A wrong password is the user's mistake, not the server's: no traceback in the log.
            raise user_error(str(exc)) from None

    return check_admin


def build_admin_tab(
    service: ChatService,
    guard: AdminGuard,
    *,
    training: TrainingController | None = None,
    serving_warning: Callable[[], str | None] | None = None,
) -> None:
    """Lay out the Admin tab inside the current Blocks context."""
    check_admin = ui_checker(guard)
    config = service.config
    private: dict[str, Any] = {"api_visibility": "private"}
    with gr.Row(equal_height=True):
        password = gr.Textbox(
            label="Admin password",
            type="password",
            elem_id="admin-password",
            info="Printed in the server's console at start unless set with --admin-password.",
            scale=4,
        )
        login = gr.Button("Log in", variant="primary", scale=1, elem_id="admin-login")
    signed_in = gr.Markdown("The admin tools appear once the password is entered.", elem_id="admin-login-status")
    # Hidden until the password is checked. Hiding protects nothing by itself: every
    # handler inside checks the password again (all are reachable through Gradio's API).
    with gr.Column(visible=False, elem_id="admin-tools") as tools:
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
                # Under the auto policy nothing waits for review, so the queue opens on every example.
                review = build_review_section(
                    service.store, check_admin, password,
                    default_status=ANY if policy == "auto" else ExampleStatus.PENDING,
                )
            with gr.Tab("Feedback", id="feedback"):
                feedback, open_example, example_id = build_feedback_section(service.store, check_admin, password)
            loaders = [review.on_login, feedback.on_login]
            if training is not None:
                with gr.Tab("Training", id="training"):
                    loaders.append(build_training_section(training, service.store, check_admin, password, service))

    def log_in(password_value: str) -> tuple[Any, ...]:
        """Check the password, then show the tools (each section then loads itself)."""
        check_admin(password_value)
        message = "Signed in as admin. Every action checks the password in the box above."
        # e.g. the active version could not load at start and another one serves in its place
        warning = serving_warning() if serving_warning else None
        if warning:
            message = f"**Warning: {warning}**\n\n{message}"
        return gr.Column(visible=True), message

    # The sections load in the login's own event rather than in events chained to it: one round
    # trip instead of four, and no new events joining just as the login's event stream closes,
    # which Gradio's browser client (6.31) can lose, leaving a section's spinner up for ever.
    load_inputs = [component for _, inputs, _ in loaders for component in inputs]
    load_outputs = [component for _, _, outputs in loaders for component in outputs]

    def log_in_and_load(password_value: str, *values: Any) -> tuple[Any, ...]:
        """Log in, then fill in every section (each loader gets its own inputs, in order)."""
        results = list(log_in(password_value))
        start = 0
        for fn, inputs, outputs in loaders:
            result = fn(*values[start : start + len(inputs)])
            start += len(inputs)
            results.extend(result if len(outputs) > 1 else [result])
        return tuple(results)

    for trigger in (password.submit, login.click):
        trigger(log_in_and_load, [password, *load_inputs], [tools, signed_in, *load_outputs], **private)

    def show_example(password_value: str, chosen: int | None) -> tuple[Any, ...]:
        """The Feedback view's link: select the rating's example in the Examples tab and go there."""
        check_admin(password_value)
        if not chosen:
            raise user_error("This rating made no example")
        return str(chosen), gr.Tabs(selected="examples")

    open_example.click(show_example, [password, example_id], [review.selection, sections], **private).success(
        review.details, [password, review.selection], review.detail_outputs, **private
    )
