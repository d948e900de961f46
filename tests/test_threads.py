"""torch_threads: torch's threads for a block, the caller's restored after it."""

from __future__ import annotations

import contextlib
import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_label_mae.threads import torch_threads


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
