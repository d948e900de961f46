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

__all__ = ["finish", "run_each", "torch_threads", "worker_pool"]

T = TypeVar("T")
R = TypeVar("R")

_pools: dict[str, tuple[concurrent.futures.ThreadPoolExecutor, int]] = {}  # name -> (pool, its threads)
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
    """The process's pool of threads for the work called ``name``, of at least ``workers`` threads: started on
    first use and kept (starting threads for every label cost a label at a time several milliseconds), and
    replaced by a larger one when more are asked for (the smaller one's threads end once nothing holds it).
    Work on a pool must not wait for work on the same pool (it may hold every thread); give nested work
    another ``name``. A child process made by ``fork`` starts with no pools (its parent's threads do not
    exist in it)."""
    if workers < 1:
        raise ValueError(f"worker_pool: workers must be at least 1, got {workers}")
    with _pools_lock:
        pool, size = _pools.get(name, (None, 0))
        if size < workers:
            pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix=f"label-mae-{name}")
            _pools[name] = pool, workers
        return pool


def run_each(name: str, workers: int, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(item) for item in items]``, at most ``workers`` calls at a time, on :func:`worker_pool` ``(name,
    workers)``; the first call's error (in the items' order) is raised once every call has ended. Interrupted
    while it waits (Ctrl-C), it starts no more calls and waits for the running ones before it raises. Called
    from a thread of the same pool it raises ``RuntimeError`` (it would wait for itself)."""
    items = list(items)
    if threading.current_thread().name.startswith(f"label-mae-{name}_"):
        raise RuntimeError(f"run_each({name!r}) on a thread of its own pool would wait for itself: name it otherwise")
    results: list = [None] * len(items)
    errors: list[Exception | None] = [None] * len(items)
    todo, lock, stop = iter(range(len(items))), threading.Lock(), threading.Event()

    def work() -> None:  # calls the items in turn, while there are some and it is not stopped
        while not stop.is_set():
            with lock:
                i = next(todo, None)
            if i is None:
                return
            try:
                results[i] = fn(items[i])
            except Exception as error:  # raised below, once every call has ended
                errors[i] = error

    pool = worker_pool(name, workers)
    futures = [pool.submit(work) for _ in range(min(workers, len(items)))]
    try:
        concurrent.futures.wait(futures)
    except BaseException:  # interrupted: no more calls, and the running ones end before it raises
        stop.set()
        finish(futures)
        raise
    for future in futures:
        future.result()  # what work itself raised (nothing, but a BaseException of fn's)
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first
    return results


def finish(futures: list[concurrent.futures.Future]) -> None:
    """Wait until every one of ``futures`` has ended. Interrupted (Ctrl-C), cancel those not started and wait
    for the running ones, then raise: nothing is left running behind the caller's back."""
    try:
        concurrent.futures.wait(futures)
    except BaseException:
        for future in futures:
            future.cancel()
        concurrent.futures.wait(futures)
        raise


def _forget_pools() -> None:
    """In a forked child: its parent's pools have no threads there (and the lock may have been held)."""
    global _pools_lock
    _pools.clear()
    _pools_lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX; elsewhere processes are spawned, with no pools
    os.register_at_fork(after_in_child=_forget_pools)
