"""Training across processes with Hugging Face Accelerate (`accelerate launch`):
who may write, and how evaluation is split over the processes and gathered.

Under `accelerate launch` (torchrun underneath) every process runs the same
job. transformers' Trainer does the data-parallel part itself (each process
takes its share of every batch; gradients are averaged). What the rest of the
job needs from here:

- Only the main process writes: the job's progress, the adapter, the version
  record. Other processes get a store whose writes do nothing (`main_only_writes`).
- Evaluation is sharded: each process scores every N-th item, and the lists
  are gathered back into the original order on every process (`sharded`), so
  every process reaches the same decision and only the main one records it.
- A cancel request, seen by the main process, is passed to the others at each
  step (`agree`), so they all stop at the same step instead of waiting for each
  other forever.

Single-process runs (the default) skip all of it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

# Store methods that write; on processes other than the main one they do nothing.
STORE_WRITES = frozenset({
    "update_job", "create_job", "add_model_version", "update_model_version", "activate_version",
    "mark_trained", "add_example", "add_examples", "update_example",
})


def launch_command(python: str, processes: int = 1, config_file: str | None = None) -> list[str]:
    """The command before `-m training.worker ...`: plain Python for one process, else `accelerate launch`.

    Without a config file the launch is torchrun-style on this machine (`--multi_gpu`, which on a
    machine without GPUs runs the processes on CPUs over gloo: see init()).
    """
    if processes <= 1 and not config_file:
        return [python]
    command = [python, "-m", "accelerate.commands.launch"]
    if config_file:
        command += ["--config_file", str(config_file)]
    else:
        command += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                    "--main_process_port", str(free_port())]
    if processes > 1:
        command += ["--num_processes", str(processes)]
    return command


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    return rank() == 0


def init() -> None:
    """Join the process group of an `accelerate launch` run (gloo on CPUs, nccl on GPUs); no-op alone."""
    if not is_distributed():
        return
    import torch
    from accelerate import PartialState

    # On CPUs Accelerate only forms a group (gloo) when told to use the CPU.
    PartialState(cpu=not torch.cuda.is_available())


def gather(obj: Any) -> list[Any]:
    """Every process's `obj`, in rank order, on every process."""
    if not is_distributed():
        return [obj]
    import torch.distributed as dist

    init()
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any) -> Any:
    """The main process's `obj`, on every process."""
    if not is_distributed():
        return obj
    import torch.distributed as dist

    init()
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agree(flag: bool) -> bool:
    """The main process's flag, on every process (for decisions that must be the same everywhere)."""
    return bool(broadcast(bool(flag)))


def sharded(function: Callable[..., list[Any]]) -> Callable[..., list[Any]]:
    """Run `function(model, tokenizer, items, ...)` -> one result per item on a share of the items
    in each process, and return every result in the items' order, on every process."""

    @functools.wraps(function)
    def wrapper(model: Any, tokenizer: Any, items: Sequence[Any], *args: Any, **kwargs: Any) -> list[Any]:
        if not is_distributed():
            return function(model, tokenizer, items, *args, **kwargs)
        mine = list(range(rank(), len(items), world_size()))
        results = function(model, tokenizer, [items[i] for i in mine], *args, **kwargs) if mine else []
        merged: dict[int, Any] = {}
        for part in gather(list(zip(mine, results))):
            merged.update(part)
        return [merged[i] for i in range(len(items))]

    return wrapper


def sharded_mean(function: Callable[..., tuple[float, int]]) -> Callable[..., tuple[float, int]]:
    """Like `sharded`, for `function(model, tokenizer, items, ...)` -> (mean over units, number of units):
    the per-process means are combined, weighted by their counts."""

    @functools.wraps(function)
    def wrapper(model: Any, tokenizer: Any, items: Sequence[Any], *args: Any, **kwargs: Any) -> tuple[float, int]:
        if not is_distributed():
            return function(model, tokenizer, items, *args, **kwargs)
        mine = [items[i] for i in range(rank(), len(items), world_size())]
        mean, count = function(model, tokenizer, mine, *args, **kwargs) if mine else (0.0, 0)
        parts = [(m, c) for m, c in gather((mean, count)) if c]
        total = sum(c for _, c in parts)
        return (sum(m * c for m, c in parts) / total if total else float("nan")), total

    return wrapper


class MainOnlyWrites:
    """A store whose writes do nothing (and whose reads pass through): for processes other than the main one."""

    def __init__(self, store: Any):
        self._store = store

    def __getattr__(self, name: str) -> Any:
        if name == "update_job":
            return lambda job_id, **fields: self._store.get_job(job_id)
        if name in STORE_WRITES:
            return lambda *args, **kwargs: None
        return getattr(self._store, name)


def main_only_writes(store: Any) -> Any:
    """`store` on the main process; a write-less view of it on the others."""
    return store if is_main() else MainOnlyWrites(store)
