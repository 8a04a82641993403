"""The hardware abstraction layer: the `Robot` contract, drivers, and the gymnasium environment."""

from real.env import DRIVERS, RobotEnv, make_env, make_robot, make_safe_robot, make_vec_env
from real.robot import ActionSpec, GroundTruth, MultiTask, Observation, ObservationSpec, Robot

__all__ = [
    "ActionSpec",
    "DRIVERS",
    "GroundTruth",
    "MultiTask",
    "Observation",
    "ObservationSpec",
    "Robot",
    "RobotEnv",
    "make_env",
    "make_robot",
    "make_safe_robot",
    "make_vec_env",
]
