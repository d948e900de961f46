"""torch_threads: torch's threads for a block, the caller's restored after it; the kept worker pools."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_label_mae.threads import run_each, torch_threads, worker_pool


@settings(max_examples=30, deadline=None)
@given(before=st.integers(1, 4), n=st.none() | st.integers(1, 4), raises=st.booleans())
def test_the_block_runs_on_n_threads_and_the_callers_come_back(before, n, raises):
    outer = torch.get_num_threads()
    try:
        torch.set_num_threads(before)
        with pytest.raises(RuntimeError) if raises else contextlib.nullcontext(), torch_threads(n):
            assert torch.get_num_threads() == (before if n is None else n)
            if raises:
                raise RuntimeError("the block failed")
        assert torch.get_num_threads() == before
        seen = []  # a thread started after it takes the caller's number, not the block's
        t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert seen == [before]
    finally:
        torch.set_num_threads(outer)


@pytest.mark.parametrize("n", [0, -1])
def test_fewer_than_one_thread_is_refused(n):
    with pytest.raises(ValueError, match=f"at least 1, got {n}"), torch_threads(n):
        pass


@settings(max_examples=30, deadline=None)
@given(items=st.lists(st.integers(-100, 100), max_size=12), workers=st.integers(1, 4))
def test_run_each_is_a_map_in_the_items_order(items, workers):
    assert run_each("test-map", workers, lambda x: x * x - 1, items) == [x * x - 1 for x in items]


def test_run_each_raises_the_first_error_after_every_call_has_ended():
    ended = []

    def one(i):
        if i == 0:
            raise KeyError("first")
        time.sleep(0.05 * i)
        ended.append(i)
        if i == 2:
            raise ValueError("second")

    with pytest.raises(KeyError, match="first"):
        run_each("test-errors", 2, one, range(4))
    assert sorted(ended) == [1, 2, 3]  # nothing still runs once it has raised


def test_a_pool_is_kept_per_name_and_grows_to_the_most_threads_asked_for():
    two = worker_pool("test-keep", 2)
    assert worker_pool("test-keep", 2) is two and worker_pool("test-keep", 1) is two
    three = worker_pool("test-keep", 3)
    assert three is not two and worker_pool("test-keep", 2) is three  # one pool a name: idle threads do not pile up
    assert worker_pool("test-other", 2) is not three
    with pytest.raises(ValueError, match="at least 1, got 0"):
        worker_pool("test-keep", 0)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_run_each_makes_at_most_workers_calls_at_a_time_on_a_larger_pool(workers):
    worker_pool("test-bound", 4)
    lock, running, most = threading.Lock(), [0], [0]

    def one(i):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1
        return i

    assert run_each("test-bound", workers, one, range(12)) == list(range(12))
    assert 1 <= most[0] <= workers


def test_run_each_on_a_thread_of_its_own_pool_is_refused_not_a_deadlock():
    def nested(name):
        return run_each(name, 1, lambda x: x, [1])

    with pytest.raises(RuntimeError, match="would wait for itself"):
        run_each("test-nest", 1, lambda _: nested("test-nest"), [0])
    assert run_each("test-nest", 1, lambda _: nested("test-inner"), [0]) == [[1]]  # another name: fine


def test_run_each_interrupted_starts_no_more_calls_and_leaves_none_running(monkeypatch):
    """Ctrl-C while it waits: the running calls end before it raises, the queued ones never start."""
    import concurrent.futures

    real, started, ended = concurrent.futures.wait, [], []

    def interrupted(futures, *args, **kwargs):
        monkeypatch.setattr(concurrent.futures, "wait", real)  # the next wait is a real one
        time.sleep(0.05)  # calls are running
        raise KeyboardInterrupt

    def one(i):
        started.append(i)
        time.sleep(0.1)
        ended.append(i)

    monkeypatch.setattr(concurrent.futures, "wait", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_each("test-interrupt", 2, one, range(10))
    assert sorted(started) == sorted(ended)  # nothing still runs once it has raised
    assert len(started) < 10
    time.sleep(0.3)
    assert len(started) < 10  # and nothing starts afterwards


def _in_child(queue):
    queue.put(run_each("test-fork", 2, lambda x: x + 1, range(3)))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork (POSIX)")
def test_a_forked_child_gets_pools_of_its_own():
    assert run_each("test-fork", 2, lambda x: x, range(3)) == [0, 1, 2]  # the parent's threads are started
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_in_child, args=(queue,))
    child.start()
    child.join(30)
    if child.is_alive():  # it waited for the parent's threads, which a forked child does not have
        child.kill()
        pytest.fail("run_each hung in a forked child")
    assert child.exitcode == 0 and queue.get(timeout=5) == [1, 2, 3]
    assert os.getpid() != child.pid
