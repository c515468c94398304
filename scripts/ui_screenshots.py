"""Screenshots of the Chat and Admin tabs at a desktop and a phone width, for the docs and for
comparing the UI before and after a change.

    .venv/bin/python scripts/ui_screenshots.py --out docs/screenshots/after
    git worktree add /tmp/before <commit>
    .venv/bin/python scripts/ui_screenshots.py --repo /tmp/before --out docs/screenshots/before

It serves REPO's `launch.py serve` with the bundled model on a fresh data dir and a free port on
127.0.0.1, asks two questions, thumbs the last answer down, and takes the Chat tab; then logs in
to the Admin tab and takes it. Each at 1280 and 400 px wide. It stops the server it started.
Needs the test set-up (`bash scripts/setup.sh --test`: playwright and Debian's chromium).
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = (1280, 400)
QUESTIONS = ("How do I reset my password?", "Can I change the email address on my account?")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, server: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}: see its log")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit(f"the server did not answer {url}/healthz within {timeout:.0f} s")


def ask(page: Page, text: str) -> None:
    box = page.locator("#chat-input textarea")
    box.fill(text)
    box.press("Enter")
    page.locator("#send-button").wait_for(state="hidden", timeout=30_000)
    page.locator("#send-button").wait_for(state="visible", timeout=180_000)
    page.wait_for_timeout(1500)  # the thumbs and badges that follow an answer


def shoot(url: str, password: str, out: Path) -> list[Path]:
    taken = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        for width in WIDTHS:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.goto(url + "/")
            page.locator("#chat-input textarea").wait_for(timeout=60_000)
            page.wait_for_timeout(2000)
            for question in QUESTIONS:
                ask(page, question)
            page.locator("#chatbot").get_by_label("Dislike", exact=True).last.click()
            page.wait_for_timeout(2000)
            taken.append(out / f"chat-{width}.jpg")
            page.screenshot(path=str(taken[-1]), full_page=True, type="jpeg", quality=70)
            page.get_by_role("tab", name="Admin").click()
            password_box = page.locator("#admin-password input")
            password_box.fill(password)
            password_box.press("Enter")
            page.wait_for_timeout(6000)
            taken.append(out / f"admin-{width}.jpg")
            page.screenshot(path=str(taken[-1]), full_page=True, type="jpeg", quality=70)
            page.close()
        browser.close()
    return taken


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=ROOT, help="the checkout to serve (default: this one)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the screenshots")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    port, password = free_port(), secrets.token_urlsafe(16)
    data_dir = Path(tempfile.mkdtemp(prefix="exemplar-shots-"))
    log = (data_dir / "server.log").open("w")
    env = {**os.environ, "EXEMPLAR_ADMIN_PASSWORD": password, "GRADIO_ANALYTICS_ENABLED": "False",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    server = subprocess.Popen(
        [sys.executable, "launch.py", "serve", "--data-dir", str(data_dir), "--port", str(port)],
        cwd=args.repo, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, server)
        for path in shoot(url, password, args.out):
            print(path)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
