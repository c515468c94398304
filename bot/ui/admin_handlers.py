"""The one way an Admin-tab handler runs: the admin password is checked before
anything else, and a domain error reaches the person as gr.Error, never as a
traceback. Decorate every handler method whose first input is the password:

    class ReviewHandlers:
        def __init__(self, store, check_admin): ...   # check_admin(password) raises gr.Error

        @admin_handler
        def approve(self, password, ids_text): ...

tests/test_admin_handlers.py fails if a handler method taking `password` is left undecorated.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import gradio as gr

from bot.ui.errors import user_error
from core.errors import ExemplarError

F = TypeVar("F", bound=Callable[..., Any])
# What a section hands the Admin tab to fill itself in at login: (function, inputs, outputs).
Loader = tuple[Callable[..., Any], list[Any], list[Any]]


def shown(exc: ExemplarError, prefix: str = "") -> gr.Error:
    """The gr.Error a person sees for a domain error."""
    return user_error(f"{prefix}{exc}")


def admin_handler(method: F | None = None, *, prefix: str = "") -> Any:
    """Wrap a handler method `(self, password, *inputs)`: `self.check_admin(password)` runs first, and an
    ExemplarError becomes gr.Error (its message after `prefix`). Works on generator handlers too."""

    def wrap(method: F) -> F:
        if inspect.isgeneratorfunction(method):

            @functools.wraps(method)
            def generator(self: Any, password: Any, *args: Any, **kwargs: Any) -> Any:
                self.check_admin(password)
                try:
                    yield from method(self, password, *args, **kwargs)
                except ExemplarError as exc:
                    raise shown(exc, prefix) from exc

            wrapper: Any = generator
        else:

            @functools.wraps(method)
            def function(self: Any, password: Any, *args: Any, **kwargs: Any) -> Any:
                self.check_admin(password)
                try:
                    return method(self, password, *args, **kwargs)
                except ExemplarError as exc:
                    raise shown(exc, prefix) from exc

            wrapper = function
        wrapper.admin_handler = True
        return wrapper

    return wrap(method) if method is not None else wrap
