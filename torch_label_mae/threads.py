"""Torch's CPU threads for a block of work, and the caller's restored after it.

>>> with torch_threads(1):                          # doctest: +SKIP
...     work()                                      # torch's operators on one thread here
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["torch_threads"]


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
