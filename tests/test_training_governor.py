"""The training worker's thread governor: a second torch thread only while the process that started
the job (the chat server) is idle and the machine has a core to spare, back to one as soon as either
changes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from training.worker import ThreadGovernor


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_rule_extra_threads_only_with_the_owner_idle_and_a_spare_core():
    governor = ThreadGovernor(os.getpid(), busy=1, idle=2)
    governor.cores = 2
    assert governor.choose(owner_cores=0.0, other_cores=0.05) == 2  # a quiet machine, nobody chatting
    assert governor.choose(owner_cores=0.8, other_cores=0.8) == 1  # a chat is being answered
    assert governor.choose(owner_cores=0.0, other_cores=1.0) == 1  # other work holds a core
    assert governor.choose(owner_cores=0.0, other_cores=6.0) == 1  # a crowded machine


def test_usage_sees_the_owners_cpu():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(2.0)  # past the interpreters' start-up, which uses CPU
        idle, busy = ThreadGovernor(sleeper.pid, busy=1, idle=2), ThreadGovernor(spinner.pid, busy=1, idle=2)
        time.sleep(2.0)
        assert idle.usage()[0] < 0.05
        assert busy.usage()[0] > 0.05  # a spinning process gets a share of a core even on a crowded machine
    finally:
        for child in (spinner, sleeper):
            child.kill()
            child.wait()


def test_adjust_sets_the_threads_each_step(restore_threads, monkeypatch):
    governor = ThreadGovernor(os.getpid(), busy=1, idle=2)
    readings = iter([(0.0, 0.0), (0.9, 0.9), (0.0, 0.0)])
    monkeypatch.setattr(governor, "usage", lambda: next(readings))
    assert [governor.adjust() for _ in range(3)] == [2, 1, 2]
    assert torch.get_num_threads() == 2
    assert (governor.idle_steps, governor.busy_steps) == (2, 1)
    governor.hold()
    assert torch.get_num_threads() == 1


def test_without_an_owner_or_with_idle_threads_off_the_threads_stay(restore_threads):
    torch.set_num_threads(1)
    assert ThreadGovernor(None, busy=1, idle=2).adjust() == 1
    assert ThreadGovernor(os.getpid(), busy=1, idle=0).adjust() == 1
    assert torch.get_num_threads() == 1
