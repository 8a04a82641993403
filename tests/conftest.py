"""Shared fixtures. Rendering runs headless through EGL (set before mujoco is imported)."""

import os

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("MUJOCO_GL", "egl")

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """Tests share 2 cores with other jobs: torch on one thread, the count restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def one_torch_thread_per_module():
    """The same for a whole module (its module-scoped fixtures included): on the shared 2-core machine two
    threads under other jobs' load made SB3's small updates about 20x slower (36 s against 1.9 s)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
