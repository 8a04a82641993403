"""Checkpoints in the hub's layout: config.json + model.safetensors for reward models and policies,
hf://<org>/<name> through a pre-populated huggingface_hub cache with offline mode, old pickles
loading with a deprecation warning (and never running code), the conversion command."""

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import reward_models
from reward_models.base import CheckpointError
from reward_models.hub import WEIGHTS_NAME, load_tree, save_tree

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "reward_models" / "checkpoints"
CAMS = ("corner", "corner2", "gripperPOV")


pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")  # tests/conftest.py


def frames(t=3, seed=0):
    rng = np.random.default_rng(seed)
    return {c: rng.integers(0, 255, (t, 96, 96, 3), dtype=np.uint8) for c in CAMS}


def test_shipped_checkpoints_are_safetensors_and_load_without_warnings():
    for name in ("general", "general-v1", "vlm-general", "tcn", "tcn-v1"):
        files = {p.name for p in (SHIPPED / name).iterdir()}
        assert {"config.json", WEIGHTS_NAME} <= files and not any(f.endswith((".pt", ".pth", ".pkl")) for f in files), name
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        progress, done = reward_models.load("general").score(frames(), "close the drawer")
    assert progress.shape == done.shape == (3,)


def test_save_pretrained_round_trip_and_the_old_pickle_still_loads(tmp_path):
    model = reward_models.load("general")
    want = np.concatenate(model.score(frames(), "close the drawer"))
    out = model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", WEIGHTS_NAME]
    np.testing.assert_array_equal(np.concatenate(reward_models.load(out).score(frames(), "close the drawer")), want)
    # a checkpoint of the old layout: weights.pt next to the same config.json
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(out / "config.json", old / "config.json")
    torch.save(model.net.state_dict(), old / "weights.pt")
    with pytest.warns(DeprecationWarning, match=r"python -m reward_models.hub convert"):
        legacy = reward_models.load(old)
    np.testing.assert_array_equal(np.concatenate(legacy.score(frames(), "close the drawer")), want)
    run = subprocess.run([sys.executable, "-m", "reward_models.hub", "convert", str(old)], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in old.iterdir()) == ["config.json", WEIGHTS_NAME]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        np.testing.assert_array_equal(np.concatenate(reward_models.load(old).score(frames(), "close the drawer")), want)


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['STEPWISE_PWNED']}",))


def test_a_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("STEPWISE_PWNED", str(marker))
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(SHIPPED / "general" / "config.json", bad / "config.json")
    torch.save({"w": _Exploit()}, bad / "weights.pt")
    with pytest.warns(DeprecationWarning), pytest.raises(CheckpointError, match="plain tensors"):
        reward_models.load(bad)
    from policies.deploy import PolicyLoadError, load_policy

    torch.save({"kind": "stepwise-policy", "agent": _Exploit()}, tmp_path / "policy.pt")
    with pytest.warns(DeprecationWarning), pytest.raises(PolicyLoadError, match="plain tensors"):
        load_policy(tmp_path / "policy.pt")
    assert not marker.exists()


def _populate_hub_cache(cache: Path, repo_id: str, files: dict[str, Path], commit: str = "a" * 40) -> None:
    """The layout huggingface_hub writes: blobs, snapshots/<commit>/ symlinks, refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for rel, src in files.items():
        blob = repo / "blobs" / f"blob{abs(hash(rel))}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, blob)
        link = repo / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


def test_hf_reference_loads_from_the_cache_offline(tmp_path):
    cache = tmp_path / "hub"
    files = {n: SHIPPED / "general" / n for n in ("config.json", WEIGHTS_NAME)}
    _populate_hub_cache(cache, "stepwise-test/general", files)
    _populate_hub_cache(cache, "stepwise-test/zoo", {f"prm/{n}": p for n, p in files.items()}, commit="b" * 40)
    code = (
        "import reward_models, numpy as np\n"
        "from reward_models.base import CheckpointError\n"
        "a = reward_models.load('hf://stepwise-test/general')\n"
        "b = reward_models.load('hf://stepwise-test/zoo/prm@' + 'b' * 40)\n"
        "c = reward_models.load('general')\n"
        "f = {k: np.full((2, 96, 96, 3), 90, np.uint8) for k in c.cameras}\n"
        "assert all(np.array_equal(m.progress(f, 'close the drawer'), c.progress(f, 'close the drawer')) for m in (a, b))\n"
        "try:\n"
        "    reward_models.load('hf://stepwise-test/not-cached')\n"
        "except CheckpointError as err:\n"
        "    print('MISS', err)\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "MISS" in run.stdout and "HF_HUB_OFFLINE" in run.stdout and "not in the local cache" in run.stdout
    with pytest.raises(CheckpointError, match="hf://<org>/<name>"):
        reward_models.load("hf://just-a-name")


def test_policy_directory_round_trip_with_optimiser_state(tmp_path):
    from policies.deploy import PolicyLoadError, load_policy, save_policy
    from policies.sac import SAC, SACConfig

    agent = SAC(39, 4, SACConfig(hidden_sizes=(32, 32)))
    obs = torch.randn(16, 39)
    agent.bc_update(obs, torch.rand(16, 4) * 2 - 1)  # fills the actor optimiser's (int-keyed) state
    state = agent.state_dict()
    save_policy(tmp_path / "run" / "policy", {"kind": "stepwise-policy", "task": "metaworld/reach", "policy": "state",
                                              "obs_key": "state", "agent": state})
    assert sorted(p.name for p in (tmp_path / "run" / "policy").iterdir()) == ["config.json", WEIGHTS_NAME]
    assert json.loads((tmp_path / "run" / "policy" / "config.json").read_text())["task"] == "metaworld/reach"
    tree, _ = load_tree(tmp_path / "run" / "policy")
    back = tree["agent"]["actor_opt"]
    assert list(back["state"]) == list(state["actor_opt"]["state"]) and isinstance(next(iter(back["state"])), int)
    torch.testing.assert_close(back["state"][0]["exp_avg"], state["actor_opt"]["state"][0]["exp_avg"])
    pol = load_policy(tmp_path / "run", task="metaworld/reach")  # the run directory finds policy/
    x = np.random.default_rng(1).normal(size=39).astype(np.float32)
    np.testing.assert_array_equal(pol.act({"state": x}), agent.act(x, deterministic=True))
    with pytest.raises(PolicyLoadError, match="not metaworld/push"):
        load_policy(tmp_path / "run" / "policy", task="metaworld/push")
    with pytest.raises(PolicyLoadError, match="not a stepwise-train policy"):
        load_policy(SHIPPED / "general")  # a reward model is not a policy


def test_tree_refuses_what_is_not_tensors_or_json(tmp_path):
    from reward_models.hub import HubError

    with pytest.raises(HubError, match="cannot store a object"):
        save_tree(tmp_path / "t", {"x": object()})
    save_tree(tmp_path / "t", {"t": (1, torch.ones(2)), "m": {3: "int key"}, "n": None})
    tree, _ = load_tree(tmp_path / "t")
    assert tree["m"] == {3: "int key"} and tree["n"] is None and isinstance(tree["t"], tuple)
