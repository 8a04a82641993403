"""The task registry: every Meta-World v3 task under a stable name, with its instruction.

Names are `metaworld/<task>` (Meta-World's own id without the `-v3` suffix). The registry is
the one place that knows which simulator class, scripted expert and instruction belong to a task.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib import resources

import yaml

# One instruction per task: what a person would say to ask for it.
_METAWORLD_INSTRUCTIONS: dict[str, str] = {
    "assembly": "put the ring on the peg",
    "basketball": "dunk the ball into the basket",
    "bin-picking": "move the cube from one bin to the other",
    "box-close": "put the lid on the box",
    "button-press-topdown": "press the button from the top",
    "button-press-topdown-wall": "press the button behind the wall from the top",
    "button-press": "press the button",
    "button-press-wall": "press the button behind the wall",
    "coffee-button": "press the button on the coffee machine",
    "coffee-pull": "pull the mug out from the coffee machine",
    "coffee-push": "push the mug under the coffee machine",
    "dial-turn": "turn the dial",
    "disassemble": "take the ring off the peg",
    "door-close": "close the door",
    "door-lock": "lock the door by turning the lock",
    "door-open": "open the door",
    "door-unlock": "unlock the door by turning the lock",
    "hand-insert": "put the hand into the hole",
    "drawer-close": "close the drawer",
    "drawer-open": "open the drawer",
    "faucet-open": "turn the faucet on",
    "faucet-close": "turn the faucet off",
    "hammer": "hammer the nail into the wall",
    "handle-press-side": "press the handle down from the side",
    "handle-press": "press the handle down",
    "handle-pull-side": "pull the handle up from the side",
    "handle-pull": "pull the handle up",
    "lever-pull": "pull the lever up",
    "peg-insert-side": "insert the peg into the hole from the side",
    "pick-place-wall": "pick up the puck and place it at the goal behind the wall",
    "pick-out-of-hole": "pick the peg out of the hole",
    "reach": "reach the goal position",
    "push-back": "push the puck back to the goal",
    "push": "push the puck to the goal",
    "pick-place": "pick up the puck and place it at the goal",
    "plate-slide": "slide the plate into the cabinet",
    "plate-slide-side": "slide the plate into the cabinet from the side",
    "plate-slide-back": "slide the plate out of the cabinet",
    "plate-slide-back-side": "slide the plate out of the cabinet from the side",
    "peg-unplug-side": "unplug the peg from the side",
    "soccer": "kick the ball into the goal",
    "stick-push": "grab the stick and push the box with it",
    "stick-pull": "grab the stick and pull the box with it",
    "push-wall": "push the puck to the goal behind the wall",
    "reach-wall": "reach the goal position behind the wall",
    "shelf-place": "place the puck on the shelf",
    "sweep-into": "sweep the puck into the hole",
    "sweep": "sweep the puck off the table",
    "window-open": "open the window",
    "window-close": "close the window",
}


class UnknownTaskError(KeyError):
    """A task name that is not in the registry."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


@dataclass(frozen=True)
class TaskSpec:
    """One registered task.

    Attributes:
        name: stable project name, e.g. ``metaworld/drawer-open``.
        suite: simulator suite (``metaworld``).
        env_id: the suite's own id, e.g. ``drawer-open-v3``.
        instruction: natural-language instruction, e.g. ``open the drawer``.
        max_episode_steps: the suite's own time limit.
    """

    name: str
    suite: str
    env_id: str
    instruction: str
    max_episode_steps: int = 500

    @property
    def short_name(self) -> str:
        """The name without the suite prefix (``drawer-open``), safe for file names."""
        return self.name.split("/", 1)[1]


_REGISTRY: dict[str, TaskSpec] = {
    f"metaworld/{key}": TaskSpec(f"metaworld/{key}", "metaworld", f"{key}-v3", text)
    for key, text in _METAWORLD_INSTRUCTIONS.items()
}


def list_tasks(suite: str | None = None) -> list[str]:
    """All registered task names, sorted; optionally only those of one suite."""
    return sorted(n for n, s in _REGISTRY.items() if suite is None or s.suite == suite)


def get_task(name: str) -> TaskSpec:
    """The spec of a registered task; a bare Meta-World id (``drawer-open``) is accepted too.

    Raises:
        UnknownTaskError: naming the task, the closest registered names and `sim.list_tasks()`.
    """
    if not isinstance(name, str):
        raise UnknownTaskError(f"task must be a string like 'metaworld/drawer-open', got {name!r}")
    key = name if name in _REGISTRY else f"metaworld/{name.removesuffix('-v3')}"
    if key in _REGISTRY:
        return _REGISTRY[key]
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownTaskError(
        f"unknown task {name!r}.{hint} Run `python -c 'import sim; print(sim.list_tasks())'` "
        f"for the {len(_REGISTRY)} registered names (form 'metaworld/<task>')."
    )


def task_split(name: str = "default") -> dict[str, list[str]]:
    """The train / held-out task split stored in ``configs/task_split/<name>.yaml``.

    Returns a dict with keys ``train`` and ``heldout``, each a list of registered task names.
    General reward-model pre-training must only ever see ``train``.
    """
    path = resources.files("configs").joinpath("task_split", f"{name}.yaml")
    if not path.is_file():
        raise FileNotFoundError(f"no task split {name!r}: expected {path}")
    raw = yaml.safe_load(path.read_text())
    split = {k: [get_task(t).name for t in raw[k]] for k in ("train", "heldout")}
    overlap = set(split["train"]) & set(split["heldout"])
    if overlap:
        raise ValueError(f"task split {name!r} lists {sorted(overlap)} as both train and heldout")
    return split
