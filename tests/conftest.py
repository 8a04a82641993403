"""Shared fixtures. Rendering runs headless through EGL (set before mujoco is imported)."""

import os

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("MUJOCO_GL", "egl")
