"""The training worker's thread governor: a second torch thread only while the process that started
the job (the chat server) is idle, back to one as soon as it works."""

from __future__ import annotations

import subprocess
import sys
import time

import torch

from training.worker import ThreadGovernor


def test_threads_follow_the_owners_cpu_use():
    before = torch.get_num_threads()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(2.0)  # past the interpreters' start-up, which uses CPU
        idle = ThreadGovernor(sleeper.pid, busy=1, idle=2)
        busy = ThreadGovernor(spinner.pid, busy=1, idle=2)
        time.sleep(1.0)
        assert idle.adjust() == 2 and torch.get_num_threads() == 2
        assert busy.adjust() == 1 and torch.get_num_threads() == 1
        assert (idle.idle_steps, busy.busy_steps) == (1, 1)
    finally:
        spinner.kill()
        sleeper.kill()
        spinner.wait()
        sleeper.wait()
        torch.set_num_threads(before)


def test_without_an_owner_or_with_idle_threads_off_the_threads_stay():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert ThreadGovernor(None, busy=1, idle=2).adjust() == 1
        assert ThreadGovernor(sys.modules["os"].getpid(), busy=1, idle=0).adjust() == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
