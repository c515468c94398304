"""The error a person sees in the UI for a mistake of theirs (a wrong password, an empty box,
a bad file): a gr.Error that leaves one line in the server's log, not a traceback.

Gradio prints the whole traceback of every gr.Error unless told otherwise; an expected
refusal is not a fault of the server, so its log line says only what was refused.
Errors that are bugs are not gr.Errors, and Gradio still prints their tracebacks.
"""

from __future__ import annotations

import logging

import gradio as gr

log = logging.getLogger("exemplar.ui")


def user_error(message: str) -> gr.Error:
    """A gr.Error to raise for `message`, logged as one line."""
    log.warning("refused in the UI: %s", " ".join(str(message).split()))
    return gr.Error(message, print_exception=False)
