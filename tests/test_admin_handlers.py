"""Admin-tab handlers check the password before anything runs and show domain
errors as gr.Error; a handler taking a password without the decorator fails here."""

from __future__ import annotations

import inspect

import gradio as gr
import pytest

from bot.auth import AdminGuard
from bot.ui.admin_feedback import FeedbackHandlers
from bot.ui.admin_handlers import admin_handler
from bot.ui.admin_review import ReviewHandlers
from bot.ui.admin_tab import ui_checker
from bot.ui.admin_training import TrainingHandlers
from core.errors import ValidationError

PASSWORD = "a-long-secret"


class Handlers:
    def __init__(self):
        self.check_admin = ui_checker(AdminGuard(PASSWORD))
        self.ran = []

    @admin_handler
    def change(self, password, value):
        self.ran.append(value)
        if value == "bad":
            raise ValidationError("value must be good")
        return value.upper()

    @admin_handler(prefix="Nothing was imported. ")
    def stream(self, password, value):
        yield "started"
        raise ValidationError(f"line 2: {value}")


def test_the_password_is_checked_before_the_handler_runs():
    handlers = Handlers()
    for wrong in ("", None, "guess"):
        with pytest.raises(gr.Error, match="admin password"):
            handlers.change(wrong, "x")
        with pytest.raises(gr.Error, match="admin password"):
            next(handlers.stream(wrong, "x"))
    assert handlers.ran == []
    assert handlers.change(PASSWORD, "ok") == "OK"


def test_domain_errors_become_messages():
    handlers = Handlers()
    with pytest.raises(gr.Error, match="value must be good"):
        handlers.change(PASSWORD, "bad")
    events = handlers.stream(PASSWORD, "no input column")
    assert next(events) == "started"
    with pytest.raises(gr.Error, match="Nothing was imported. line 2: no input column"):
        next(events)
    assert list(inspect.signature(Handlers.change).parameters) == ["self", "password", "value"]  # Gradio reads it


@pytest.mark.parametrize("handler_class", [ReviewHandlers, TrainingHandlers, FeedbackHandlers])
def test_every_handler_taking_the_password_checks_it(handler_class):
    handlers = [
        name for name, method in vars(handler_class).items()
        if inspect.isfunction(method) and list(inspect.signature(method).parameters)[1:2] == ["password"]
    ]
    assert handlers, f"{handler_class.__name__} has no handlers taking the password"
    unchecked = [name for name in handlers if not getattr(vars(handler_class)[name], "admin_handler", False)]
    assert unchecked == [], f"{handler_class.__name__} handlers without @admin_handler: {unchecked}"
