"""What each op of the robot server does, once a request is admitted (``real.server`` reads,
checks and queues requests, and runs the watchdog; ``real.protocol`` defines the ops).

A mixin of :class:`real.server.RobotServer`: it uses the server's ``robot`` (behind its safety
layer), ``_reply``, ``_arm``, ``_halt``, ``counts`` and the served task's names.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np

from real.robot import GroundTruth, MultiTask


class ServedOps:
    """The op handlers ``_op_<name>(ident, request)``; each answers with ``self._reply``."""

    def _observe(self) -> dict:
        obs = self.robot.observe()
        obs.setdefault("t_robot", time.monotonic())
        return obs

    def _signals(self) -> dict | None:
        return {k: float(v) for k, v in self.robot.task_signals().items()} if isinstance(self.robot, GroundTruth) else None

    def _tasks(self) -> dict:
        """What the robot is asked now: its task and instruction (all of them for a `MultiTask` robot)."""
        if isinstance(self.robot, MultiTask):
            i = int(self.robot.task_index)
            return {"task": self.robot.tasks[i], "instruction": self.robot.instructions[i], "task_index": i,
                    "tasks": list(self.robot.tasks), "instructions": list(self.robot.instructions)}
        return {"task": self.task, "instruction": self.instruction}

    def _op_hello(self, ident, req) -> None:
        o, a = self.robot.observation_spec, self.robot.action_spec
        self._reply(
            ident, req, **self._tasks(), ground_truth=isinstance(self.robot, GroundTruth),
            watchdog_ms=self.watchdog_s * 1000.0, armed=self.armed, curve=self.keys is not None,
            safety={k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.robot.limits).items()},
            observation_spec={"cameras": list(o.cameras), "image_size": list(o.image_size), "proprio_dim": o.proprio_dim,
                              "state_dim": o.state_dim, "proprio_names": list(o.proprio_names)},
            action_spec={"dim": a.dim, "names": list(a.names), "low": a.low, "high": a.high,
                         "ee_step_m": a.ee_step_m, "control_hz": a.control_hz},
        )

    def _op_reset(self, ident, req) -> None:
        seed = req.get("seed")
        obs = self.robot.reset(seed=seed)
        obs.setdefault("t_robot", time.monotonic())
        if req.get("arm"):
            self._arm(ident)
        self._reply(ident, req, obs=obs, signals=self._signals(), armed=self.armed)

    def _arm(self, ident: bytes) -> None:
        """Allow motion; the arming client becomes the one whose requests feed the watchdog."""
        self.armed, self.disarm_reason, self.controller = True, "", ident
        self._feed(ident)

    def _op_arm(self, ident, req) -> None:
        self._arm(ident)
        self._reply(ident, req, armed=True)

    def _op_stop(self, ident, req) -> None:
        self._halt(f"stop requested by a client: {req.get('reason', '')}".rstrip(": "))
        self._reply(ident, req, armed=False)

    def _op_observe(self, ident, req) -> None:
        self._reply(ident, req, obs=self._observe(), signals=self._signals())

    def _op_stats(self, ident, req) -> None:
        self._reply(ident, req, safety=self.robot.summary(), counts=self.counts, events=self.events[-20:], armed=self.armed,
                    handshakes=self.handshakes)

    def _op_select_task(self, ident, req) -> None:
        if not isinstance(self.robot, MultiTask):
            raise ValueError(f"this robot serves one task ({self.task}); select_task needs one set up for several "
                             "(e.g. stepwise-robot-server robot=sim_pair)")
        self.robot.select_task(req["index"])  # raises ValueError naming the served tasks for an index out of range
        self._reply(ident, req, obs=self._observe(), signals=self._signals(), **self._tasks())

    def _op_act(self, ident, req) -> None:
        if not self.armed:
            self.counts["refused_disarmed"] += 1
            return self._reply(ident, req, "disarmed", f"robot is stopped ({self.disarm_reason}); re-arm it (robot.arm(), or reset with arm)")
        self.counts["acts"] += 1
        applied = self.robot.send_action(req["action"])  # float32 (A,), checked by protocol.check_request
        obs = self._observe()
        target = self.robot.last_target
        self._reply(ident, req, obs=obs, applied=np.asarray(applied, np.float32).tolist(),
                    events=list(self.robot.last_events), signals=self._signals(),
                    target=None if target is None else target.tolist())

