"""Shared fixtures. Rendering runs headless through EGL (set before mujoco is imported)."""

import os

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("MUJOCO_GL", "egl")

# pytest-xdist runs test files on several worker processes (pyproject's addopts): each worker gets its
# share of the cores, and so do the processes its tests start (they inherit OMP_NUM_THREADS). Without
# this, two workers each running torch on every core spin against each other and run slower than one.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    _share = str(max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = _share

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


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
