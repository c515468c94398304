"""Steps that browser tests share: opening the app once its load events have
finished, waiting for text in an element, and sending a chat message and waiting
until its answer has streamed in and Send is back."""

from __future__ import annotations

import time
import weakref


def wait_for_text(page, selector, text, timeout=60_000):
    page.wait_for_function(
        "([s, t]) => { const el = document.querySelector(s); return el && el.innerText.includes(t); }",
        arg=[selector, text], timeout=timeout,
    )
    settle(page)


def send_and_wait(page, text, expect, timeout=60_000):
    """Send `text` from the chat box and wait until the last answer contains `expect` and Send is back."""
    box = page.locator("#chat-input textarea")
    box.fill(text)
    box.press("Enter")
    page.wait_for_function(
        "r => { const bots = document.querySelectorAll('#chatbot [data-testid=bot]');"
        " return bots.length && bots[bots.length - 1].innerText.includes(r); }",
        arg=expect, timeout=timeout,
    )
    page.locator("#send-button").wait_for(state="visible")
    settle(page)


# Why tests wait. Gradio's browser client (6.31) has a race: when the last running
# event of a page finishes, the server ends the page's event stream with a
# `close_stream` message. An event the page joins in the instant before it reads
# that message is never delivered: the client still believes the stream is open,
# so it opens no new one, then reads `close_stream` and closes it. The event then
# shows its running timer for ever (the server has run it; nobody listens). A
# person seldom acts within milliseconds of an event finishing; a test that
# clicks the moment a result shows, while the page's load events or an event
# chained to that result (a table refresh) are still finishing, does, and then
# fails about one run in ten on a busy machine. So tests act on a settled page:
# `open_app` returns once the load events are done, and the waits below return
# once no event is running, as a person would find it.

EVENT_STREAM = "/gradio_api/queue/data"


class _Streams:
    """The page's event streams still open, and how many it has opened."""

    def __init__(self, page):
        self.open: dict = {}  # request -> its number in opening order
        self.opened = 0
        self.errors: list[str] = []  # the page's console errors, for the message when it never settles
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text[:200]))
        page.on("request", self._started)
        page.on("requestfinished", self._ended)
        page.on("requestfailed", self._ended)

    def _started(self, request) -> None:
        if EVENT_STREAM in request.url:
            self.opened += 1
            self.open[request] = self.opened

    def _ended(self, request) -> None:
        self.open.pop(request, None)


_STREAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # page -> _Streams


def open_app(page, url: str, *, timeout: float = 30.0):
    """Go to the app at `url` and return `page` once its load events have finished."""
    streams = _STREAMS.get(page)
    if streams is None:
        streams = _STREAMS[page] = _Streams(page)
    before = streams.opened
    page.goto(url.rstrip("/") + "/")
    # A stream of the document this load replaced may never report its end.
    streams.open = {r: n for r, n in streams.open.items() if n > before}
    settle(page, timeout=timeout, after=before)
    return page


def settle(page, *, timeout: float = 30.0, after: int | None = None) -> None:
    """Wait until no event of the page is running (for a page opened with `open_app`).

    With `after`, first wait for the page to have opened more than `after` event streams."""
    streams = _STREAMS.get(page)
    if streams is None:
        return
    deadline = time.monotonic() + timeout
    quiet_since = None
    while True:
        # Playwright delivers the request events while it waits here.
        page.wait_for_timeout(25)
        idle = not streams.open and (after is None or streams.opened > after)
        if not idle:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= 0.15:  # no chained event opened a new stream meanwhile
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the page's events did not finish within {timeout:.0f} s "
                f"({len(streams.open)} of {streams.opened} event streams still open; "
                f"console errors: {streams.errors[-5:]})"
            )
