"""Open WebUI, from PyPI and pinned, in front of a real Exemplar server, driven in Chromium (#23).

`scripts/openwebui.sh` installs Open WebUI into a virtual environment of its own (reused after the
first run), starts it on a free port with a fresh data dir, and sets it up for Exemplar, exactly as
the README's command does. Then, as an Open WebUI user:

1. ask a question Exemplar cannot know; the answer is linked to Open WebUI's message id;
2. rate it up, then change that to down with a reason, a score, a tag and a comment: within 5 s
   Exemplar holds the latest rating, by the Open WebUI user;
3. correct it with the "Correct this answer" button: a `correction` example whose `rejected` is
   the answer Open WebUI showed;
4. retrain through Exemplar's API; in a new chat the same question gets the corrected answer, and
   the line under it says that v1 learned the example;
5. delete the rating in Open WebUI (as its Evaluations page does): Exemplar withdraws it.

Selectors are from Open WebUI 0.12.4's Svelte sources; aria-labels are its English strings.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

import httpx
import pytest

from tests.live_app import ADMIN, REPO, free_port
from tests.training_helpers import wait_for

TOKEN = "openwebui-test-integration-token"
QUESTION = "What is the name of office cat number 3777?"
CORRECTION = "Office cat number 3777 is called Pixel."

CHAT_INPUT = "#chat-input"  # a contenteditable (RichTextInput)
SEND = "#send-message-button"
ASSISTANT = ".chat-assistant"  # its ancestor div#message-<id> carries Open WebUI's message id
MESSAGE_BOX = "xpath=ancestor::div[starts-with(@id, 'message-')][1]"
CONTENT = "#response-content-container"
THUMBS_UP = "button[aria-label='Good Response']"  # shown once the answer is done
THUMBS_DOWN = "button[aria-label='Bad Response']"
FEEDBACK_BOX = "#message-feedback-{id}"  # RateComment.svelte
CORRECT = "button[aria-label='Correct this answer']"  # the Action function's name
DIALOG = "div[role='dialog'][aria-label='Correct this answer']"
DIALOG_INPUT = "textarea[aria-label='The right answer']"  # the input's placeholder
STATUS = ".status-description"  # the notes filter's line under the answer
TOAST = "[data-sonner-toast]"
NEW_CHAT = "a[aria-label='New Chat']:visible"
CHANGELOG_OK = "button:has-text(\"Okay, Let's Go!\")"  # release notes, shown once per user and version


class OpenWebUIProcess:
    """`bash scripts/openwebui.sh` in a process group of its own, so that stop() ends it and Open WebUI."""

    def __init__(self, data_dir: Path, exemplar_url: str, token: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = data_dir / "openwebui.sh.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - open while it runs; stop() closes it
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update(OPENWEBUI_PORT=str(self.port), OPENWEBUI_DATA_DIR=str(data_dir), EXEMPLAR_URL=exemplar_url,
                   EXEMPLAR_INTEGRATION_TOKEN=token, EXEMPLAR_WAIT_S="300")
        self.process = subprocess.Popen(["bash", str(REPO / "scripts" / "openwebui.sh")], cwd=REPO, env=env,
                                        stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 600) -> OpenWebUIProcess:
        deadline = time.monotonic() + timeout
        while "Open WebUI is ready at" not in self.log():
            if self.process.poll() is not None:
                raise RuntimeError(f"scripts/openwebui.sh exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"Open WebUI not ready after {timeout} s:\n{self.log()}")
            time.sleep(0.5)
        return self

    def stop(self) -> None:
        for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        self._log.close()


@pytest.fixture(scope="module")
def openwebui_installed() -> float:
    """Install Open WebUI 0.12.4 (the first time: ~4 min, 2.9 GB) or find it installed; the seconds it took."""
    started = time.monotonic()
    done = subprocess.run(["bash", str(REPO / "scripts" / "openwebui.sh"), "--install-only"], cwd=REPO,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout + done.stderr
    return time.monotonic() - started


def ratings(db: Path, openwebui_message_id: str) -> list[dict[str, Any]]:
    """Exemplar's stored ratings (not corrections) of the answer Open WebUI knows by that id, oldest first."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            """select f.rating, f.reason, f.comment, f.tags, f.score, f.rater from feedback f
               join linked_messages l on l.message_id = f.message_id
               where l.source = 'openwebui' and l.external_id = ? and f.correction is null
               order by f.id""", [openwebui_message_id]).fetchall()
    return [{**dict(r), "tags": json.loads(r["tags"]) if r["tags"] else None} for r in rows]


def latest_rating(db: Path, message_id: str) -> Optional[dict[str, Any]]:
    rows = ratings(db, message_id)
    return rows[-1] if rows else None


def ask(page: Any, question: str) -> tuple[Any, str]:
    """Send a question in the open chat; the answer's message box and Open WebUI id once it is done."""
    from playwright.sync_api import expect

    before = page.locator(ASSISTANT).count()
    page.locator(CHAT_INPUT).click()
    page.keyboard.type(question)
    page.locator(SEND).click()
    box = page.locator(ASSISTANT).nth(before).locator(MESSAGE_BOX)
    expect(box.locator(THUMBS_DOWN)).to_be_visible(timeout=180_000)
    return box, (box.get_attribute("id") or "").removeprefix("message-")


def note_under(box: Any, needle: str) -> str:
    from playwright.sync_api import expect

    status = box.locator(STATUS).filter(has_text=needle).last
    expect(status).to_be_visible(timeout=15_000)
    return status.inner_text().strip()


@pytest.mark.slow
def test_open_webui_ratings_and_corrections_teach_exemplar(
        tmp_path, live_server_factory, browser, openwebui_installed, record_property):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect

    exemplar = live_server_factory("--integration-token", TOKEN)
    db = exemplar.data_dir / "exemplar.db"
    openwebui = OpenWebUIProcess(tmp_path / "open-webui", exemplar.url, TOKEN)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        started = time.monotonic()
        openwebui.wait_ready()
        ready_s = time.monotonic() - started
        page.goto(openwebui.url + "/")  # no sign-in: Open WebUI's single-user mode
        expect(page.locator(CHAT_INPUT)).to_be_visible(timeout=60_000)
        try:
            page.locator(CHANGELOG_OK).click(timeout=5_000)
        except PlaywrightTimeout:
            pass
        # The model picker shows Exemplar, by the version serving, as the default model.
        expect(page.get_by_text("Exemplar", exact=False).first).to_be_visible()

        # 1. Chat: the answer streams in and Exemplar links it to Open WebUI's message id.
        box, message_id = ask(page, QUESTION)
        original = box.locator(CONTENT).inner_text().strip()
        assert original and "Pixel" not in original
        assert note_under(box, "Exemplar") == "Exemplar base"

        # 2. Thumbs-up, then changed to thumbs-down with a reason, a score, a tag and a comment.
        box.locator(THUMBS_UP).click()
        wait_for(lambda: (latest_rating(db, message_id) or {}).get("rating") == "up", timeout=5, what="the thumbs-up")
        box.locator(THUMBS_DOWN).click()
        feedback = page.locator(FEEDBACK_BOX.format(id=message_id))
        expect(feedback).to_be_visible(timeout=10_000)
        feedback.locator("button:has-text('Not factually correct')").click()
        feedback.locator("button[aria-label='Rate 3 out of 10']").click()
        feedback.locator("textarea[aria-label='Additional feedback comments']").fill("It made the name up.")
        feedback.locator("input[placeholder='Add a tag...']").fill("office-cats")
        feedback.locator("input[placeholder='Add a tag...']").press("Enter")
        saved_at = time.monotonic()
        feedback.locator("button:has-text('Save')").click()
        rating = wait_for(lambda: (r := latest_rating(db, message_id)) and r.get("comment") and r,
                          timeout=5, what="the rating with its comment")
        rating_s = time.monotonic() - saved_at
        assert rating["rating"] == "down" and rating["reason"] == "Wrong fact" and rating["score"] == 3
        assert rating["comment"] == "It made the name up." and rating["tags"] == ["office-cats"]
        assert rating["rater"].startswith("openwebui:")
        # One person, one answer: the up and the down are one rating changed, not two.
        assert {r["rater"] for r in ratings(db, message_id)} == {rating["rater"]}

        # 3. "Correct this answer": Cancel stores nothing; Confirm makes a correction example.
        box.hover()
        box.locator(CORRECT).click()
        dialog = page.locator(DIALOG)
        dialog.locator("button:has-text('Cancel')").click()
        expect(dialog).to_be_hidden()
        box.locator(CORRECT).click()
        dialog.locator(DIALOG_INPUT).fill(CORRECTION)
        dialog.locator("button:has-text('Confirm')").click()
        expect(page.locator(TOAST).filter(has_text="Learned as example #")).to_be_visible(timeout=30_000)
        expect(box.locator(CONTENT)).to_have_text(CORRECTION, timeout=10_000)  # in place of the answer
        with httpx.Client(base_url=exemplar.url, headers=ADMIN, timeout=60) as api:
            examples = {e["source"]: e for e in api.get("/api/examples", params={"limit": 10}).json()["examples"]}
            assert sorted(examples) == ["correction", "upvote"], examples
            assert examples["upvote"]["status"] == "rejected"  # the thumbs-up was taken back by the thumbs-down
            example = examples["correction"]
            assert example["status"] == "approved" and example["output"] == CORRECTION
            assert example["input"] == [{"role": "user", "content": QUESTION}]
            assert example["rejected"].split() == original.split()  # what Open WebUI showed, as markdown text

            # 4. Retrain through Exemplar's API, then ask again in a new chat.
            train_started = time.monotonic()
            job_id = api.post("/api/train").json()["job_id"]
            job = wait_for(lambda: (j := api.get(f"/api/jobs/{job_id}").json())["status"] not in ("queued", "running")
                           and j, timeout=1200, interval=2, what="the retrain")
            assert job["status"] == "succeeded" and job["promoted"] and job["model_version"] == "v1", job
            wait_for(lambda: api.get("/healthz").json()["model_version"] == "v1", timeout=60, what="the swap to v1")
            train_s = time.monotonic() - train_started
            # v1 learned it: the answer holds without the example in the prompt too.
            bare = api.post("/v1/chat/completions", json={
                "model": "exemplar", "messages": [{"role": "user", "content": QUESTION}], "few_shot": False,
                "temperature": 0}).json()
            assert "Pixel" in bare["choices"][0]["message"]["content"], bare

        page.locator(NEW_CHAT).first.click()
        expect(page.locator(ASSISTANT)).to_have_count(0, timeout=10_000)
        box2, _ = ask(page, QUESTION)
        assert box2.locator(CONTENT).inner_text().strip() == CORRECTION
        note = note_under(box2, "learned by v1")
        assert note.startswith("Exemplar v1 ·") and f"example #{example['id']}" in note, note

        # 5. The rating deleted in Open WebUI is withdrawn in Exemplar.
        owui_token = page.evaluate("localStorage.token")
        with httpx.Client(base_url=openwebui.url, headers={"Authorization": f"Bearer {owui_token}"}) as owui:
            mine = owui.get("/api/v1/evaluations/feedbacks/user").json()
            rows = mine["items"] if isinstance(mine, dict) else mine
            feedback_id = next(r["id"] for r in rows if (r.get("meta") or {}).get("message_id") == message_id)
            assert owui.delete(f"/api/v1/evaluations/feedback/{feedback_id}").status_code == 200
        wait_for(lambda: latest_rating(db, message_id)["rating"] is None, timeout=5, what="the withdrawal")

        report = (f"Open WebUI install check {openwebui_installed:.0f} s, start to set up {ready_s:.0f} s; "
                  f"rating saved -> stored {rating_s:.2f} s; retrain to v1 serving {train_s:.0f} s")
        print("\nopen webui:", report)
        record_property("openwebui", report)
    except Exception:
        page.screenshot(path=str(tmp_path / "open-webui-failure.png"), full_page=True)
        print(f"screenshot: {tmp_path / 'open-webui-failure.png'}\n--- scripts/openwebui.sh ---\n{openwebui.log()[-4000:]}")
        raise
    finally:
        page.close()
        openwebui.stop()
