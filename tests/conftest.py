"""Shared test setup: one CPU thread, a modest Hypothesis profile, seeded generators.

The default Hypothesis profile is derandomized (the same examples every run, so CI is reproducible);
``HYPOTHESIS_PROFILE=thorough`` explores with 300 fresh random examples per property.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(1)

# default: derandomized, so a CI run is reproducible; "thorough" explores with fresh random examples
settings.register_profile(
    "default",
    deadline=None,
    max_examples=25,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "thorough", deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same global RNG state."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def gen() -> torch.Generator:
    """A fresh seeded CPU generator."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
