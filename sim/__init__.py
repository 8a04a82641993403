"""MuJoCo worlds: the task registry, camera rigs, fast offscreen rendering, scripted experts and
demonstration collection. Imports nothing of the project but ``episodes``."""

from sim.randomize import Look, Randomization, RandomizeConfigError, draw_look
from sim.rendering import CameraError, CameraRig, check_image_size
from sim.tasks import TaskSpec, UnknownTaskError, get_task, list_tasks, task_split
from sim.world import DEFAULT_CAMERAS, SPLITS, SimTask, StepSignals, variant_rng

__all__ = [
    "CameraError",
    "CameraRig",
    "DEFAULT_CAMERAS",
    "Look",
    "Randomization",
    "RandomizeConfigError",
    "SPLITS",
    "SimTask",
    "StepSignals",
    "TaskSpec",
    "UnknownTaskError",
    "check_image_size",
    "draw_look",
    "get_task",
    "list_tasks",
    "task_split",
    "variant_rng",
]
