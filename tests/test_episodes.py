"""Tests of the episode store (episodes/): round trip, resume, random access, crash safety, errors."""

from __future__ import annotations

import json
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from episodes import (
    FORMAT_VERSION,
    CorruptStoreError,
    Episode,
    EpisodeStore,
    EpisodeWriter,
    MissingCameraError,
    StoreError,
    StoreNotFoundError,
    VersionError,
    summarize,
)

REPO = Path(__file__).resolve().parents[1]


def make_episode(seed: int, T: int = 12, cams=("front", "wrist"), hw=(16, 20), state=True, **kw) -> Episode:
    """Deterministic episode from ``seed`` (so a test can regenerate and compare it)."""
    rng = np.random.default_rng(seed)
    fields = dict(
        images={c: rng.integers(0, 256, (T + 1, *hw, 3), dtype=np.uint8) for c in cams},
        proprio=rng.standard_normal((T + 1, 7)).astype(np.float32),
        actions=rng.standard_normal((T, 4)).astype(np.float32),
        rewards=rng.random(T).astype(np.float32),
        dones=np.arange(T) == T - 1,
        task="pick-place-v3",
        instruction="pick up the puck and place it at the goal",
        fps=12.5,
        success=bool(seed % 2),
        keyframes=np.array([max(1, T // 3), T], dtype=np.int64),
        state=rng.standard_normal((T + 1, 9)).astype(np.float32) if state else None,
        infos={"success": (np.arange(T) > T // 2).astype(np.float32), "near_object": rng.random(T).astype(np.float32)},
        seed=seed,
        kind="expert",
        extra_attrs={"policy": "scripted", "noise_scale": 0.25, "attempt": 3, "handled": True},
    )
    fields.update(kw)
    return Episode(**fields)


def assert_same(a: Episode, b: Episode) -> None:
    assert list(a.images) == list(b.images)
    for c in a.images:
        assert b.images[c].dtype == np.uint8
        np.testing.assert_array_equal(a.images[c], b.images[c])
    for name in ("proprio", "actions", "rewards"):
        assert getattr(b, name).dtype == np.float32, name
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert b.dones.dtype == np.bool_
    np.testing.assert_array_equal(a.dones, b.dones)
    if a.state is None:
        assert b.state is None
    else:
        assert b.state.dtype == np.float32
        np.testing.assert_array_equal(a.state, b.state)
    assert set(a.infos) == set(b.infos)
    for k in a.infos:
        assert b.infos[k].dtype == np.float32
        np.testing.assert_array_equal(a.infos[k], b.infos[k])
    assert b.keyframes.dtype == np.int64
    np.testing.assert_array_equal(a.keyframes, b.keyframes)
    assert (a.task, a.instruction, a.fps, a.success, a.seed, a.kind) == (
        b.task,
        b.instruction,
        b.fps,
        b.success,
        b.seed,
        b.kind,
    )
    assert a.extra_attrs == b.extra_attrs
    assert all(type(a.extra_attrs[k]) is type(b.extra_attrs[k]) for k in a.extra_attrs)
    assert a == b


# ------------------------------------------------------------------ round trip, resume, random access


def test_round_trip(tmp_path):
    path = tmp_path / "sub" / "dir" / "store.hdf5"  # parent dirs are created
    eps = [make_episode(0), make_episode(1, T=5, state=False, infos={}, extra_attrs={}, kind="noise")]
    with EpisodeWriter(path, env_args={"task": "pick-place-v3", "image_size": [16, 20]}) as w:
        assert [w.add(e) for e in eps] == [0, 1]
        assert len(w) == 2
    with EpisodeStore(path) as st:
        assert len(st) == 2
        for e, i in zip(eps, range(2)):
            assert_same(e, st[i])
        assert_same(eps[1], st[-1])
        assert st.cameras == ["front", "wrist"]
        assert st.image_size == (16, 20)
        assert st.env_args == {"task": "pick-place-v3", "image_size": [16, 20]}
        np.testing.assert_array_equal(st.lengths(), [12, 5])
        a = st.episode_attrs(0)
        assert a["num_samples"] == 12 and a["kind"] == "expert" and a["seed"] == 0
        assert a["extra_attrs"] == eps[0].extra_attrs and a["name"] == "demo_0"
        with pytest.raises(IndexError, match="out of range for 2 episodes"):
            st[2]
    # the robomimic layout, readable with bare h5py
    with h5py.File(path, "r") as f:
        assert f["data"].attrs["stepwise_format_version"] == FORMAT_VERSION
        assert f["data"].attrs["total"] == 17
        d = f["data/demo_0"]
        assert d.attrs["num_samples"] == 12
        assert json.loads(d.attrs["cameras"]) == ["front", "wrist"]
        assert d["obs/front_image"].shape == (13, 16, 20, 3) and d["obs/front_image"].chunks == (1, 16, 20, 3)
        assert d["obs/front_image"].compression is not None
        assert d["actions"].shape == (12, 4) and d["dones"].dtype == np.uint8
        assert d["infos/near_object"].shape == (12,)


def test_float64_inputs_are_stored_float32(tmp_path):
    e = make_episode(3)
    e.actions = e.actions.astype(np.float64)
    e.proprio = e.proprio.astype(np.float64)
    with EpisodeWriter(tmp_path / "s.hdf5") as w:
        w.add(e)
    with EpisodeStore(tmp_path / "s.hdf5") as st:
        assert st[0].actions.dtype == np.float32 and st[0].proprio.dtype == np.float32


def test_append_resume(tmp_path):
    path = tmp_path / "s.hdf5"
    with EpisodeWriter(path, env_args={"task": "x"}) as w:
        w.add(make_episode(0))
        w.add(make_episode(1))
    with EpisodeWriter(path, env_args={"task": "x"}) as w:  # reopened: numbering continues
        assert len(w) == 2
        assert w.add(make_episode(2)) == 2
    with EpisodeWriter(path) as w:  # env_args=None: no check
        assert w.add(make_episode(3)) == 3
        assert len(w) == 4
    with pytest.raises(StoreError, match="env_args"):
        EpisodeWriter(path, env_args={"task": "other"})
    with EpisodeStore(path) as st:
        assert len(st) == 4
        assert [st.episode_attrs(i)["seed"] for i in range(4)] == [0, 1, 2, 3]
    with h5py.File(path, "r") as f:
        assert f["data"].attrs["total"] == 48


def test_layout_mismatch_and_second_writer_rejected(tmp_path):
    path = tmp_path / "s.hdf5"
    with EpisodeWriter(path) as w:
        w.add(make_episode(0))
        with pytest.raises(StoreError, match="cameras"):
            w.add(make_episode(1, cams=("front",)))
        with pytest.raises(StoreError, match="image_size"):
            w.add(make_episode(1, hw=(8, 8)))
        with pytest.raises(StoreError, match="another EpisodeWriter"):
            EpisodeWriter(path)
    with EpisodeWriter(path) as w:  # lock released by close
        assert len(w) == 1


def test_stale_incomplete_group_ignored_and_removed(tmp_path):
    path = tmp_path / "s.hdf5"
    with EpisodeWriter(path) as w:
        w.add(make_episode(0))
    with h5py.File(path, "a") as f:  # what a writer killed mid-add() leaves behind
        g = f["data"].create_group("_incomplete_demo_1")
        g.create_dataset("actions", data=np.zeros((3, 4), np.float32))
    with EpisodeStore(path) as st:
        assert len(st) == 1
    with EpisodeWriter(path) as w:
        assert w.add(make_episode(1)) == 1
    with h5py.File(path, "r") as f:
        assert sorted(f["data"]) == ["demo_0", "demo_1"]


def test_random_frame_access_matches_full_load(tmp_path):
    path = tmp_path / "s.hdf5"
    with EpisodeWriter(path) as w:
        for s in range(3):
            w.add(make_episode(s, T=10 + s, cams=("front", "wrist", "side")))
    rng = np.random.default_rng(0)
    with EpisodeStore(path) as st:
        full = [st[i] for i in range(len(st))]
        for _ in range(30):
            i = int(rng.integers(len(st)))
            T1 = full[i].num_steps + 1
            t = int(rng.integers(T1))
            fr = st.frames(i, t)
            assert set(fr) == {"front", "wrist", "side"}
            for c, img in fr.items():
                assert img.shape == (16, 20, 3) and img.dtype == np.uint8
                np.testing.assert_array_equal(img, full[i].images[c][t])
            ts = rng.integers(0, T1, size=5)  # unsorted, may repeat
            fr = st.frames(i, ts, cameras=["wrist"])
            assert list(fr) == ["wrist"] and fr["wrist"].shape == (5, 16, 20, 3)
            np.testing.assert_array_equal(fr["wrist"], full[i].images["wrist"][ts])
        np.testing.assert_array_equal(st.frames(0, -1)["front"], full[0].images["front"][-1])
        with pytest.raises(IndexError, match="frame index"):
            st.frames(0, 11)
        with pytest.raises(MissingCameraError, match="available"):
            st.frames(0, 0, cameras=["top"])
    with EpisodeStore(path, cameras=["side"]) as st:
        assert st.cameras == ["side"] and list(st[0].images) == ["side"]
        st2 = pickle.loads(pickle.dumps(st))  # DataLoader workers receive the store pickled
        assert st2.cameras == ["side"] and len(st2) == 3
        np.testing.assert_array_equal(st2.frames(1, 4)["side"], st.frames(1, 4)["side"])
        st2.close()


# ------------------------------------------------------------------ crash safety

CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    sys.path.insert(0, {tests!r})
    from test_episodes import make_episode
    from episodes import EpisodeWriter
    w = EpisodeWriter({path!r})
    print("open", len(w), flush=True)
    while True:
        n = len(w)
        # biggish, incompressible episodes so that add() takes tens of ms and kills land mid-write
        w.add(make_episode(n, T=40, cams=("front", "wrist", "side"), hw=(96, 96)))
        print("done", len(w), flush=True)
    """
)


def _check_store_intact(path: Path, at_least: int) -> int:
    with EpisodeStore(path) as st:
        n = len(st)
        assert n >= at_least, f"store lost finished episodes: has {n}, child reported {at_least}"
        for i in range(n):
            a = st.episode_attrs(i)
            assert a["seed"] == i and a["name"] == f"demo_{i}"
            assert_same(make_episode(i, T=40, cams=("front", "wrist", "side"), hw=(96, 96)), st[i])
    return n


def test_killed_writer_leaves_store_readable(tmp_path):
    path = tmp_path / "crash.hdf5"
    code = CHILD.format(repo=str(REPO), tests=str(Path(__file__).parent), path=str(path))
    rng = np.random.default_rng(1234)
    reported_total = 0
    for round_ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
        try:
            first = proc.stdout.readline().split()
            assert first[0] == "open", first
            assert int(first[1]) >= reported_total  # resumed with every finished episode
            reported = int(first[1])
            # let it finish 0-2 episodes, then kill at a random moment within the next add()
            for _ in range(int(rng.integers(0, 3))):
                reported = int(proc.stdout.readline().split()[1])
            time.sleep(float(rng.uniform(0.0, 0.08)))
        finally:
            proc.send_signal(signal.SIGKILL)
            out, _ = proc.communicate()
        # complete lines printed before the kill but not yet read also count as finished
        # (a line cut off by the kill is dropped: under-reporting only weakens the check)
        for line in out.split("\n")[:-1]:
            if line.startswith("done"):
                reported = max(reported, int(line.split()[1]))
        reported_total = _check_store_intact(path, reported)
    assert reported_total >= 3
    with h5py.File(path, "r") as f:  # nothing half-written is visible as a demo
        assert all(k.startswith("demo_") or k.startswith("_incomplete") for k in f["data"])


# ------------------------------------------------------------------ clear errors


def _small_store(path: Path, n: int = 3) -> Path:
    with EpisodeWriter(path) as w:
        for s in range(n):
            w.add(make_episode(s))
    return path


def test_truncated_file_is_corrupt(tmp_path):
    path = _small_store(tmp_path / "s.hdf5")
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)
    with pytest.raises(CorruptStoreError) as ei:
        EpisodeStore(path)
    assert str(path) in str(ei.value) and "re-collect" in str(ei.value)
    with pytest.raises(CorruptStoreError):
        EpisodeWriter(path)


def test_random_bytes_and_missing_file(tmp_path):
    path = tmp_path / "junk.hdf5"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 10000, dtype=np.uint8).tobytes())
    with pytest.raises(CorruptStoreError, match="not an HDF5 file") as ei:
        EpisodeStore(path)
    assert str(path) in str(ei.value)
    with pytest.raises(StoreNotFoundError, match="does not exist"):
        EpisodeStore(tmp_path / "nope.hdf5")
    with pytest.raises(CorruptStoreError, match="not a regular file"):
        EpisodeStore(tmp_path)


def test_version_errors(tmp_path):
    path = _small_store(tmp_path / "s.hdf5", n=1)
    with h5py.File(path, "a") as f:
        f["data"].attrs["stepwise_format_version"] = FORMAT_VERSION + 1
    with pytest.raises(VersionError, match="stepwise_format_version=2"):
        EpisodeStore(path)
    with h5py.File(path, "a") as f:
        del f["data"].attrs["stepwise_format_version"]
    with pytest.raises(VersionError, match="stepwise_format_version"):
        EpisodeStore(path)
    plain = tmp_path / "plain.hdf5"
    with h5py.File(plain, "w") as f:
        f.create_group("other")
    with pytest.raises(VersionError, match="/data"):
        EpisodeStore(plain)
    assert issubclass(VersionError, StoreError) and issubclass(StoreError, ValueError)


def test_missing_camera_lists_available(tmp_path):
    path = _small_store(tmp_path / "s.hdf5", n=1)
    with pytest.raises(MissingCameraError) as ei:
        EpisodeStore(path, cameras=["front", "top"])
    msg = str(ei.value)
    assert "top" in msg and "front" in msg and "wrist" in msg


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda e: e.images.update(front=e.images["front"].astype(np.float32) / 255), "images['front']"),
        (lambda e: e.images.update(front=e.images["front"][:, :, :, :1]), "images['front']"),
        (lambda e: e.images.update(front=e.images["front"][:-1]), "images['front']"),
        (lambda e: e.images.clear(), "images"),
        (lambda e: setattr(e, "proprio", e.proprio[:-1]), "proprio"),
        (lambda e: setattr(e, "state", e.state[:, None]), "state"),
        (lambda e: setattr(e, "rewards", e.rewards[:-1]), "rewards"),
        (lambda e: setattr(e, "dones", e.dones[:, None]), "dones"),
        (lambda e: e.actions.__setitem__((2, 1), np.nan), "actions"),
        (lambda e: e.proprio.__setitem__((0, 0), np.inf), "proprio"),
        (lambda e: setattr(e, "keyframes", np.array([5, 3])), "keyframes"),
        (lambda e: setattr(e, "keyframes", np.array([0, 3])), "keyframes"),
        (lambda e: setattr(e, "keyframes", np.array([3, 13])), "keyframes"),
        (lambda e: setattr(e, "keyframes", np.array([1.5, 3.0])), "keyframes"),
        (lambda e: e.infos.update(bad=np.zeros(3)), "infos['bad']"),
        (lambda e: e.extra_attrs.update(task="x"), "extra_attrs"),
        (lambda e: e.extra_attrs.update(cfg={"a": 1}), "extra_attrs"),
    ],
)
def test_validate_names_the_field(tmp_path, change, field):
    e = make_episode(0)
    change(e)
    with pytest.raises(StoreError) as ei:
        e.validate()
    assert field in str(ei.value)
    with EpisodeWriter(tmp_path / "s.hdf5") as w:  # the writer refuses it too and the store stays empty
        with pytest.raises(StoreError):
            w.add(e)
        assert len(w) == 0


# ------------------------------------------------------------------ summary / CLI


def test_summary_and_cli(tmp_path):
    path = tmp_path / "s.hdf5"
    with EpisodeWriter(path, env_args={"task": "pick-place-v3"}) as w:
        w.add(make_episode(1, T=10))  # success (odd seed)
        w.add(make_episode(2, T=20, kind="noise"))
        w.add(make_episode(3, T=30, task="reach-v3", kind="noise"))
    with EpisodeStore(path) as st:
        s = st.summary()
    assert s["episodes"] == 3 and s["transitions"] == 60
    assert s["success_rate"] == pytest.approx(2 / 3)
    assert s["lengths"] == {"min": 10, "mean": 20.0, "max": 30}
    assert s["cameras"] == ["front", "wrist"] and s["image_size"] == (16, 20)
    assert s["tasks"] == {"pick-place-v3": 2, "reach-v3": 1}
    assert s["kinds"] == {"expert": 1, "noise": 2}
    assert s["format_version"] == FORMAT_VERSION
    text = summarize(path)
    assert "66.7%" in text and "reach-v3" in text and "10 / 20.0 / 30" in text

    run = lambda p: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "episodes", str(p)], capture_output=True, text=True, cwd=REPO
    )
    r = run(path)
    assert r.returncode == 0 and "transitions" in r.stdout
    junk = tmp_path / "junk.hdf5"
    junk.write_bytes(b"not hdf5 at all")
    r = run(junk)
    assert r.returncode == 2 and "Traceback" not in r.stderr and str(junk) in r.stderr


def test_empty_store(tmp_path):
    path = tmp_path / "s.hdf5"
    EpisodeWriter(path, env_args={"cameras": ["front"]}).close()
    with EpisodeStore(path) as st:
        assert len(st) == 0 and st.summary()["success_rate"] is None
        assert st.cameras == ["front"] and st.image_size is None
    assert "episodes" in summarize(path)


def test_writer_while_reader_open_in_same_process(tmp_path):
    path = _small_store(tmp_path / "s.hdf5", n=1)
    with EpisodeStore(path) as st, EpisodeWriter(path) as w:
        assert w.add(make_episode(1)) == 1
        assert len(st) == 1  # a reader is a snapshot of the store when it opened
        assert_same(make_episode(0), st[0])
    with EpisodeStore(path) as st:
        assert len(st) == 2


class _Killed(BaseException):
    """Stands in for SIGKILL inside the process (BaseException: nothing catches it on the way out)."""


def test_kill_while_applying_journal_is_recovered(tmp_path, monkeypatch):
    """A writer killed after its journal commit point, mid-apply: readers overlay it, writers replay it."""
    import episodes.journal as store

    path = _small_store(tmp_path / "s.hdf5", n=2)
    real_apply = store._apply

    def torn_apply(fh, pages, size, fsync):  # apply only the first held page, then "die"
        first = dict([sorted(pages.items())[0]])
        real_apply(fh, first, max(size, fh.seek(0, 2)), fsync)
        raise _Killed()

    w = EpisodeWriter(path)
    monkeypatch.setattr(store, "_apply", torn_apply)
    with pytest.raises(_Killed):
        w.add(make_episode(2))
    w.close()
    monkeypatch.setattr(store, "_apply", real_apply)
    assert store._journal_path(path).exists()
    with EpisodeStore(path) as st:  # read through the committed journal
        assert len(st) == 3
        assert_same(make_episode(2), st[2])
    with EpisodeWriter(path) as w:  # replays it
        assert len(w) == 3
    assert not store._journal_path(path).exists()
    with EpisodeStore(path) as st:
        assert len(st) == 3
        for i in range(3):
            assert_same(make_episode(i), st[i])
