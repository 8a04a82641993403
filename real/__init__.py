"""The hardware abstraction layer: the `Robot` contract, drivers, and the gymnasium environment."""

from real.env import DRIVERS, RobotEnv, make_env, make_robot, make_safe_robot, make_vec_env
from real.registration import register_envs
from real.robot import ActionSpec, GroundTruth, MultiTask, Observation, ObservationSpec, Robot

register_envs()  # gymnasium.make("stepwise/<task>-v0") for the 50 Meta-World tasks

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
    "register_envs",
]
