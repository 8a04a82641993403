"""Fuzzing the robot server on loopback: random and adversarial frames (oversized, truncated, deeply
nested JSON, huge numbers, NaN, wrong types, wrong image frames, several frames) for a bounded
count. The server must keep serving, its memory must stay bounded, and every command its driver
received must lie inside the safety box."""

import gc
import json
import time

import numpy as np
import pytest
import zmq

from real import protocol
from real.remote import remote_robot
from real.server import RobotServer
from real.sim_driver import SimRobot

TASK = "metaworld/drawer-open"
BOX = {"workspace_low": [-0.1, 0.5, 0.1], "workspace_high": [0.1, 0.7, 0.25]}  # tight: actions really push on its walls
N_FRAMES = int(__import__("os").environ.get("FUZZ_N", 2500))
SEED = 20


class RecordingSim(SimRobot):
    """The simulator, recording each command it receives with the set point it starts from."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.received: list[tuple[np.ndarray, np.ndarray]] = []

    def send_action(self, action):
        self.received.append((np.array(action, np.float64), self.ee_position()))
        return super().send_action(action)


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def frames_for(kind: int, rng: np.random.Generator, seq: int) -> list[bytes]:
    """One adversarial request of the given kind."""
    def js(obj) -> bytes:
        return json.dumps(obj).encode()

    base = {"v": 1, "seq": seq}
    if kind == 0:  # random bytes
        return [rng.bytes(int(rng.integers(0, 400)))]
    if kind == 1:  # a valid header cut short
        raw = js({**base, "op": "act", "action": rng.normal(0, 3, 4).tolist()})
        return [raw[: int(rng.integers(0, len(raw)))]]
    if kind == 2:  # nested deeply (lists or objects), within the size limit
        d = int(rng.integers(50, 5000))
        return [b"[" * d + b"]" * d] if rng.random() < 0.5 else [b'{"a":' * (d // 2) + b"1" + b"}" * (d // 2)]
    if kind == 3:  # huge numbers where integers or floats are due
        pick = int(rng.integers(0, 5))
        if pick == 0:
            return [b'{"v": 1, "seq": 1, "op": "act", "action": [1e999, -1e999, 1e308, 0]}']
        if pick == 1:
            return [b'{"v": 1, "seq": ' + b"9" * 5000 + b', "op": "stats"}']  # past Python's int digit limit
        if pick == 2:
            return [js({**base, "op": "reset", "seed": 10**30})]
        if pick == 3:
            return [js({**base, "op": "act", "action": [10**400, 0, 0, 0]})]
        return [js({**base, "op": "select_task", "index": 2**70})]
    if kind == 4:  # NaN and infinities in the action
        a = rng.normal(0, 1, 4)
        a[rng.random(4) < 0.5] = rng.choice([np.nan, np.inf, -np.inf])
        return [js({**base, "op": "act", "action": a.tolist()})]  # json writes NaN / Infinity
    if kind == 5:  # wrong types and lengths
        bad = ["abc", {"x": 1}, [[1, 2], [3]], [True, 0, 0, 0], [1, 2, 3], [0.1] * 3000, None, 5, [None] * 4, ["1"] * 4]
        key = rng.choice(["action", "seed", "index", "arm", "reason", "token", "seq", "v", "op"])
        op = {"action": "act", "seed": "reset", "index": "select_task", "arm": "reset", "reason": "stop"}.get(key, "stats")
        return [js({**base, "op": op, key: bad[int(rng.integers(0, len(bad)))]})]
    if kind == 6:  # unknown ops, extra keys, other versions, unicode junk
        pick = int(rng.integers(0, 4))
        return [[js({**base, "op": "shutdown"}), js({**base, "op": "act", "action": [0, 0, 0, 0], "speed": 9}),
                 js({"v": 99, "seq": seq, "op": "act"}), "\u202e\udcff".encode("utf-8", "surrogatepass")][pick]]
    if kind == 7:  # several frames: image frames of the wrong size, an observation header from a client
        obs = {"proprio": [0] * 4, "images": [["corner", 48, 48]]}
        return [js({**base, "op": "act", "action": [0, 0, 0, 0], "obs": obs}), rng.bytes(int(rng.integers(0, 9000)))]
    if kind == 8:  # valid commands, from gentle to absurd: the safety layer's business
        push = np.append(3 * np.sign(np.sin(np.arange(1, 4) * (1 + seq // 300))), 0)  # a new wall every 300 frames
        a = [rng.uniform(-1, 1, 4), rng.normal(0, 1e6, 4), np.full(4, 1e9 * (-1) ** seq), push, push, push][int(rng.integers(0, 6))]
        return [js({**base, "op": "act", "action": np.asarray(a).tolist()})]
    # kind 9: other valid ops, re-arming now and then (a fuzzed stop disarms)
    op = rng.choice(["arm", "arm", "observe", "stats", "hello", "stop"])
    return [js({**base, "op": op})]


@pytest.fixture
def fuzz_server():
    robot = RecordingSim(TASK, cameras=["corner"], image_size=48, split="train")
    srv = RobotServer(robot, {**SimRobot.DEFAULT_SAFETY, **BOX}, port=0, task=TASK).start()
    yield srv, robot
    srv.shutdown()


def test_fuzzed_frames_never_stop_the_server_nor_leave_the_box(fuzz_server):
    srv, robot = fuzz_server
    rng = np.random.default_rng(SEED)
    client = remote_robot(port=srv.port)
    client.reset(seed=0)  # armed
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{srv.port}")
    codes: dict[str, int] = {}

    def read(wait_ms=0):
        while sock.poll(wait_ms):
            header, _ = protocol.decode(sock.recv_multipart())
            codes[header["code"]] = codes.get(header["code"], 0) + 1
            wait_ms = 0

    gc.collect()
    rss0 = rss_bytes()
    t0 = time.monotonic()
    kinds = rng.choice(10, N_FRAMES, p=[0.07] * 8 + [0.36, 0.08])  # a third are valid commands
    for i, kind in enumerate(kinds):
        sock.send_multipart(frames_for(int(kind), rng, i))
        if i % 8 == 7 or i == N_FRAMES - 1:  # bursts of 8, then their replies (a reader too slow would lose some, by design)
            deadline = time.monotonic() + 5
            while sum(codes.values()) < i + 1 and time.monotonic() < deadline:
                read(50)

    # oversized frames: libzmq drops the connection before buffering them (no reply), and the server serves on
    oversized = 0
    for size in (16385, 100_000, 4 * 2**20):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(f"tcp://127.0.0.1:{srv.port}")
        s.send(b"[" + b"0," * (size // 2) + b"0]")
        assert not s.poll(300)  # never answered
        s.close()
        oversized += 1
    gc.collect()
    growth = rss_bytes() - rss0
    elapsed = time.monotonic() - t0

    # still serving, and the same client acts
    client.arm()
    applied = client.send_action(np.array([0.5, 0, 0, 0], np.float32))
    assert np.isfinite(applied).all() and srv._thread.is_alive()
    stats = client.stats()
    client.close()
    sock.close()

    assert sum(codes.values()) == N_FRAMES  # every frame answered, once
    assert set(codes) <= {"ok", "bad_request", "version", "superseded", "disarmed"}
    assert codes["bad_request"] > 0.4 * N_FRAMES and codes["ok"] > 0.1 * N_FRAMES
    # nothing outside the safety box reached the driver
    low, high = np.array(BOX["workspace_low"]), np.array(BOX["workspace_high"])
    assert len(robot.received) > 100
    for action, set_point in robot.received:
        assert np.isfinite(action).all() and np.abs(action).max() <= 1.0
        target = set_point + action[:3] * robot.action_spec.ee_step_m
        assert np.all(target >= low - 1e-6) and np.all(target <= high + 1e-6), (action, set_point)
    assert stats["safety"]["rejected_nonfinite"] > 0 and stats["safety"]["clamped_workspace"] > 0
    assert growth < 64 * 2**20, f"server process grew by {growth / 2**20:.0f} MiB"
    print(f"fuzz: {N_FRAMES} frames, safety {stats['safety']} + {oversized} oversized in {elapsed:.1f} s, replies {codes}, "
          f"{len(robot.received)} commands reached the driver, RSS growth {growth / 2**20:.1f} MiB")
