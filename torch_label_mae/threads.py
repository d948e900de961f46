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
    """Run the block with ``n`` torch intra-op threads (None: as they are) and restore the number the
    calling thread had after it, even when the block raises. torch's setting is the calling thread's, and
    the default of threads that start using torch while the block runs; so tasks run side by side on
    threads of their own each take a share of the cores, instead of each starting as many threads as
    there are cores and oversubscribing them."""
    if n is not None and n < 1:
        raise ValueError(f"torch_threads: n must be at least 1, got {n}")
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
