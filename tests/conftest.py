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
