"""A process that has exited is dead to storage and to training alike, a zombie included (it has
exited and only waits for its parent to collect its exit status): the rows of an import it was
writing are dropped, and a training job it started stops, as for any dead owner."""

from __future__ import annotations

import os
import time

import psutil
import pytest

from storage import Store
from storage.processes import pid_alive
from training import worker


def zombie_of(work) -> int:
    """Fork a child that runs `work()` and exits; leave it unreaped and return its pid once it is a zombie."""
    pid = os.fork()
    if pid == 0:
        try:
            work()
        finally:
            os._exit(0)
    deadline = time.monotonic() + 30
    while psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.01)
    return pid


@pytest.fixture
def reap():
    """Collect the children a test left as zombies, once it has looked at them."""
    pids: list[int] = []
    yield pids.append
    for pid in pids:
        os.waitpid(pid, 0)


def test_a_zombie_counts_as_dead_and_a_running_process_as_alive(reap):
    pid = zombie_of(lambda: None)
    reap(pid)
    assert pid_alive(pid) is False
    assert worker.pid_alive(pid) is False  # what training asks is the same answer
    assert pid_alive(os.getpid()) is True
    assert pid_alive(None) is False and pid_alive(0) is False


def test_the_rows_of_an_import_whose_process_is_a_zombie_are_dropped(tmp_path, reap):
    path = tmp_path / "exemplar.db"
    Store(path).close()

    def import_and_die() -> None:  # dies between its last chunk and publishing them
        store = Store(path)
        store._publish_import = lambda *args: os._exit(9)
        store.add_examples([{"input": f"q{i}?", "output": "a.", "source": "import"} for i in range(30)], chunk_rows=7)

    reap(zombie_of(import_and_die))
    reopened = Store(path)
    try:
        assert reopened.db.execute("select count(*) from examples").fetchone()[0] == 0
        assert reopened.db.execute("select count(*) from import_rows").fetchone()[0] == 0
    finally:
        reopened.close()


def test_a_training_job_whose_owner_is_a_zombie_stops(store, monkeypatch, reap):
    owner = zombie_of(lambda: None)
    reap(owner)
    monkeypatch.setenv(worker.OWNER_PID_ENV, str(owner))
    reporter = worker.JobReporter(store, store.create_job("train"))
    reporter.beat()
    assert reporter.owner_gone and reporter.cancelled.is_set()
