"""The Admin tab's review queue (being built): pending examples, approve/reject/edit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from storage import Store


def build_review_section(
    store: Store,
    check_admin: Callable[[str], None],
    password: gr.Textbox,
    actor_fn: Callable[..., str] | None = None,
) -> None:
    """Lay out the review queue inside the current Admin tab."""
    gr.Markdown("### Review queue\n\n_Coming soon._")
