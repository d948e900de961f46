"""Torch's CPU threads for a block of work, the caller's restored after it; and the worker threads kept
for the library's parallel work.

>>> with torch_threads(1):                          # doctest: +SKIP
...     work()                                      # torch's operators on one thread here
>>> results = run_each("solves", 2, solve, items)   # doctest: +SKIP
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import torch

__all__ = ["run_each", "torch_threads", "worker_pool"]

T = TypeVar("T")
R = TypeVar("R")

_pools: dict[tuple[str, int], concurrent.futures.ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (None: as they are), then set the number the calling
    thread had before it again, even when the block raises.

    torch's number is each thread's own, and a process-wide default that a thread takes when it first uses
    torch; setting it sets both. So a thread that starts using torch while the block runs keeps ``n``, and
    the default after the block is what the last thread to leave such a block had: a block around work
    that sets it on other threads (a pool of workers, each in a block of its own) sets the caller's default
    back when it ends."""
    if n is not None and n < 1:
        raise ValueError(f"torch_threads: n must be at least 1, got {n}")
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)  # the default too, which other threads' blocks may have changed


def worker_pool(name: str, workers: int) -> concurrent.futures.ThreadPoolExecutor:
    """The process's pool of ``workers`` threads for the work called ``name``, started on first use and kept:
    starting threads for every label cost a label at a time several milliseconds. Work on a pool must not
    wait for work on the same pool (it may hold every thread); give nested work another ``name``. A child
    process made by ``fork`` starts with no pools (its parent's threads do not exist in it)."""
    if workers < 1:
        raise ValueError(f"worker_pool: workers must be at least 1, got {workers}")
    with _pools_lock:
        pool = _pools.get((name, workers))
        if pool is None:
            pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix=f"label-mae-{name}")
            _pools[name, workers] = pool
        return pool


def run_each(name: str, workers: int, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(item) for item in items]`` on :func:`worker_pool` ``(name, workers)``. Every call has ended when
    it returns or raises (the first call's error, in the items' order), as when a pool is shut down."""
    futures = [worker_pool(name, workers).submit(fn, item) for item in items]
    concurrent.futures.wait(futures)
    return [future.result() for future in futures]


def _forget_pools() -> None:
    """In a forked child: its parent's pools have no threads there (and the lock may have been held)."""
    global _pools_lock
    _pools.clear()
    _pools_lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX; elsewhere processes are spawned, with no pools
    os.register_at_fork(after_in_child=_forget_pools)
