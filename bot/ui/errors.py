"""The error a person sees in the UI for a mistake of theirs (a wrong password, an empty box,
a bad file): a gr.Error that leaves one line in the server's log, not a traceback.

Gradio prints the whole traceback of every gr.Error unless told otherwise; an expected
refusal is not a fault of the server, so its log line says only what was refused.
Errors that are bugs are not gr.Errors, and Gradio still prints their tracebacks.

A refusal shows as a toast and covers nothing (NO_ERROR_COVER, in the page's CSS). Gradio 6's page
also marks each output of an event that raised with an "Error" cover over the whole component,
which takes every click until its × is pressed: the `catch` of the page's event dispatcher
(Blocks-*.js in gradio/templates/frontend, `update_loading_status({status: "error"})` for the
event's progress targets). Only an event with show_progress="hidden" escapes it, which also hides
its "processing" spinners. A gr.Warning with gr.skip() instead would leave no cover, but the event
would then count as a success: its `.success()` steps would run (the password checked again,
a wrong one counted again), and a caller of Gradio's API would not learn it was refused.
So a refusal stays a gr.Error, and the page hides the cover.
"""

from __future__ import annotations

import logging

import gradio as gr

log = logging.getLogger("exemplar.ui")


# The status tracker (the cover) of a component whose last event failed holds the "Error" label;
# the toast already says what went wrong.
NO_ERROR_COVER = """
[data-testid="status-tracker"]:has(> span.error) { display: none !important; }
"""


def user_error(message: str) -> gr.Error:
    """A gr.Error to raise for `message`, logged as one line."""
    log.warning("refused in the UI: %s", " ".join(str(message).split()))
    return gr.Error(message, print_exception=False)
