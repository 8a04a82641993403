"""Training data for the step-discretized progress model: episodes in memory and balanced pairs.

A batch takes E episodes, encodes F frames of each plus a start and a goal anchor, and draws
pairs among them: frame -> frame (incremental, any time gap, both directions), start -> frame
(forward) and goal -> frame (backward). Pairs are drawn with weights inversely proportional to
the joint count of their (hop bin, time-gap bin), so that rare large hops and regressions are seen
as often as common small steps, and a small share are exact zero hops (a frame against itself).
Start anchors are swapped with another episode's of the same task 75% of the time and goal
anchors always come from another episode when the task has one, so the model cannot lean on them;
the goal is dropped (a learned "no goal" vector) 30% of the time so the model works without one.

Failures as negatives. A failed episode (a scripted failure, or a learning policy's episode that did
not succeed) has no progress labels, but one fact holds for every frame of it: the task is not done,
so its progress is below 1. With ``failures`` given, a share of each batch's episodes are failures of
the batch's tasks, and their pairs carry an upper bound instead of a target (censored labels): from
the start anchor the hop lies below the top bin (H(start, s) <= 1 - w, w the bin width) and from a
goal anchor of the task it lies below the zero bin (H(goal, s) <= -w). The trainer maximises the
probability mass at or under the bound, so near-misses stop being rated as done without the model
being told a progress value nobody knows.

Wrong instructions as negatives. A general model that never sees one scene under two instructions
learns progress from the scene alone and ignores the text: on held-out door-open, whose scene is
door-close's, it rated the opening door as door-close going backwards. With
``instruction_negative_share`` q, a share q of batch slots take a successful episode of task A under
the instruction of another training task B (half the time one of A's family, the tasks named alike,
``door-close`` / ``door-lock`` / ``door-unlock``, which share A's scene), with B's goal anchors: the
episode never completes B, so its pairs are censored exactly like a failure's. Pairs whose names
differ only by ``-wall`` (``reach`` / ``reach-wall``) are never used: one's success can be the other's.

Reverse twins. "Not done" does not make the text matter enough: the door-open twin's instruction
moved the model by 0.013. Some training tasks are reverse twins, one scene with opposite goals
(``door-lock`` / ``door-unlock``, ``coffee-push`` / ``coffee-pull``, ``plate-slide`` /
``plate-slide-back``: :func:`reverse_twins`). Their last phase (from the second-to-last keyframe to
the goal: the object moved) runs backwards under the twin's instruction, which is a label with a
sign: with ``reverse_twin_share`` r, a share r of batch slots take task A's success under its twin
B's instruction and goal anchors, with B's "not done" anchor bounds plus frame pairs of that last
phase bounded by their direction: forward in time the hop is at most ``-w``, backward at least
``+w`` (pairs whose A-progress differs by at least ``twin_min_gap``). The same frames then carry
opposite signs under the two instructions, so only the text can tell them apart. The earlier
phases (reaching the object) are progress for both and are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reward_models.progress import hop, hop_to_bin
from reward_models.train_episodes import TrainEpisode


@dataclass
class PairBatch:
    """Arrays for one training step (numpy; the trainer moves them to torch).

    states: uint8 (S, V, H, W, 3) images of every state to encode; the index arrays point into it.
    before, after: int (P,) state indices; start, goal: int (P,) state indices (goal -1 = none);
    hop: float (P,) target hop, or its bound where ``censored``; text: int (P,) index into
    ``instructions``; censored: bool (P,) pairs whose hop is only bounded (failures, wrong
    instructions, reverse twins): above, or below where ``lower`` (reverse twins backward in time).
    state_slot: int (S,) the episode slot of each state; a pair's states are all of one slot.
    """

    states: np.ndarray
    start: np.ndarray
    goal: np.ndarray
    before: np.ndarray
    after: np.ndarray
    hop: np.ndarray
    text: np.ndarray
    instructions: list[str]
    censored: np.ndarray | None = None
    lower: np.ndarray | None = None
    state_slot: np.ndarray | None = None


class PairSampler:
    """Draws :class:`PairBatch` es from episodes (see the module docstring)."""

    def __init__(self, episodes: list[TrainEpisode], num_bins: int, frames_per_episode: int = 12,
                 pairs_per_episode: int = 48, swap_anchor_prob: float = 0.75, drop_goal_prob: float = 0.3,
                 zero_hop_share: float = 0.05, gap_bins: int = 4, seed: int = 0,
                 failures: list[TrainEpisode] | None = None, failure_share: float = 0.25,
                 instruction_negative_share: float = 0.0, reverse_twin_share: float = 0.0,
                 twin_min_gap: float = 0.1) -> None:
        if not 0.0 <= failure_share < 1.0:
            raise ValueError(f"failure_share={failure_share}: the share of failure episodes per batch must be in [0, 1)")
        negatives = failure_share + instruction_negative_share + reverse_twin_share
        if min(instruction_negative_share, reverse_twin_share) < 0.0 or negatives >= 1.0:
            raise ValueError(f"instruction_negative_share={instruction_negative_share}, reverse_twin_share={reverse_twin_share}: "
                             f"must be >= 0 and leave successes in each batch with failure_share={failure_share}")
        self.episodes = episodes
        self.num_bins = num_bins
        self.frames = frames_per_episode
        self.pairs = pairs_per_episode
        self.swap_anchor_prob = swap_anchor_prob
        self.drop_goal_prob = drop_goal_prob
        self.zero_hop_share = zero_hop_share
        self.gap_bins = gap_bins
        self.rng = np.random.default_rng(seed)
        self.by_task: dict[str, list[int]] = {}
        for i, ep in enumerate(episodes):
            self.by_task.setdefault(ep.task, []).append(i)
        self.failures = [f for f in (failures or []) if f.task in self.by_task]  # need a task's success anchors
        self.failures_by_task: dict[str, list[int]] = {}
        for i, ep in enumerate(self.failures):
            self.failures_by_task.setdefault(ep.task, []).append(i)
        self.failure_share = failure_share if self.failures else 0.0
        self.confusable = {t: confusable_tasks(t, list(self.by_task)) for t in self.by_task}
        self.instruction_negative_share = instruction_negative_share if any(self.confusable.values()) else 0.0
        self.twins = {t: reverse_twins(t, list(self.by_task)) for t in self.by_task}
        self.reverse_twin_share = reverse_twin_share if any(self.twins.values()) else 0.0
        self.twin_min_gap = twin_min_gap
        self.instruction_of = {ep.task: ep.instruction for ep in episodes}
        self.width = 2.0 / num_bins
        self.instructions = sorted({ep.instruction for ep in episodes})

    def _other(self, i: int) -> int:
        peers = [j for j in self.by_task[self.episodes[i].task] if j != i]
        return int(self.rng.choice(peers)) if peers else i

    def _failure_pairs(self, states: list, task: str, wrong_instruction: bool = False) -> tuple[list, list, list, list, list, list, str]:
        """Censored pairs of one failure episode of ``task``: start -> frame below the top bin and
        goal -> frame below the zero bin (see the module docstring). ``wrong_instruction``: a
        successful episode of ``task`` under another task's instruction, with that task's goal anchors."""
        rng = self.rng
        goal_task, instruction = task, None
        if wrong_instruction:
            same, other = self.confusable[task]
            goal_task = str(rng.choice(same if same and (rng.random() < 0.5 or not other) else other))
            instruction = self.instruction_of[goal_task]
            ep = self.episodes[int(rng.choice(self.by_task[task]))]
        else:
            ep = self.failures[int(rng.choice(self.failures_by_task[task]))]
        n = len(ep.images)
        idx = np.sort(rng.choice(n, size=min(self.frames, n), replace=False))
        idx[-1] = n - 1 if rng.random() < 0.5 else idx[-1]  # where a failure ends is the frame that matters most
        base = len(states)
        states.extend(ep.images[idx])
        own = rng.random() >= self.swap_anchor_prob
        s_ep = ep if own else self.episodes[int(rng.choice(self.by_task[task]))]
        states.append(s_ep.images[0])
        s_idx = len(states) - 1
        g_ep = self.episodes[int(rng.choice(self.by_task[goal_task]))]
        states.append(g_ep.images[g_ep.goal_index])
        g_idx = len(states) - 1
        half = self.pairs // 2
        frames = base + rng.integers(len(idx), size=self.pairs)
        before = [s_idx] * half + [g_idx] * (self.pairs - half)
        bounds = [1.0 - self.width] * half + [-self.width] * (self.pairs - half)
        # start -> frame pairs keep the goal anchor too (as in success pairs) 70% of the time
        goals = [g_idx if rng.random() >= self.drop_goal_prob else -1 for _ in range(half)] + [g_idx] * (self.pairs - half)
        return before, list(frames), bounds, [False] * self.pairs, [s_idx] * self.pairs, goals, instruction or ep.instruction

    def sample(self, num_episodes: int) -> PairBatch:
        """One batch of pairs from ``num_episodes`` episodes (tasks drawn uniformly); with failures,
        each episode slot is a failure of the drawn task with probability ``failure_share``."""
        rng = self.rng
        tasks = list(self.by_task)
        states, start_i, goal_i, before, after, hops, texts, censored, lower = [], [], [], [], [], [], [], [], []
        slot_starts = []
        for _ in range(num_episodes):
            slot_starts.append(len(states))
            task = tasks[rng.integers(len(tasks))]
            u = rng.random() if (self.failure_share or self.instruction_negative_share or self.reverse_twin_share) else 1.0
            failure = task in self.failures_by_task and u < self.failure_share
            wrong = not failure and any(self.confusable[task]) and u > 1.0 - self.instruction_negative_share
            twin = (not failure and not wrong and bool(self.twins[task])
                    and u > 1.0 - self.instruction_negative_share - self.reverse_twin_share)
            if twin or failure or wrong:  # bounded pairs (see the module docstring)
                b, a, h, lo, s_i, g_i, instruction = (self._twin_pairs(states, task) if twin else
                                                      self._failure_pairs(states, task, wrong_instruction=wrong))
                before += b
                after += a
                hops += h
                lower += lo
                start_i += s_i
                goal_i += g_i
                texts += [self.instructions.index(instruction)] * len(b)
                censored += [True] * len(b)
                continue
            i = int(rng.choice(self.by_task[task]))
            ep = self.episodes[i]
            n = len(ep.phi)
            idx = np.sort(rng.choice(n, size=min(self.frames, n), replace=False))
            idx[0] = 0 if rng.random() < 0.3 else idx[0]  # the start itself is a common query
            base = len(states)
            states.extend(ep.images[idx])
            phi = ep.phi[idx]
            s_ep = self._other(i) if rng.random() < self.swap_anchor_prob else i
            states.append(self.episodes[s_ep].images[0])
            s_idx = len(states) - 1
            g_idx = -1
            if rng.random() >= self.drop_goal_prob:
                g_ep = self.episodes[self._other(i)]
                states.append(g_ep.images[g_ep.goal_index])
                g_idx = len(states) - 1
            # Candidate pairs: all ordered frame pairs, start -> frame, goal -> frame.
            p, q = np.meshgrid(np.arange(len(idx)), np.arange(len(idx)), indexing="ij")
            p, q = p.ravel(), q.ravel()
            keep = p != q
            cand_b = list(base + p[keep])
            cand_a = list(base + q[keep])
            cand_h = list(hop(phi[p[keep]], phi[q[keep]]))
            cand_gap = list(np.abs(idx[p[keep]] - idx[q[keep]]) / max(n - 1, 1))
            cand_b += [s_idx] * len(idx)
            cand_a += list(base + np.arange(len(idx)))
            cand_h += list(phi)
            cand_gap += list(idx / max(n - 1, 1))
            if g_idx >= 0:
                cand_b += [g_idx] * len(idx)
                cand_a += list(base + np.arange(len(idx)))
                cand_h += list(phi - 1.0)
                cand_gap += list(1.0 - idx / max(n - 1, 1))
            cand_b, cand_a, cand_h = np.array(cand_b), np.array(cand_a), np.array(cand_h)
            key = hop_to_bin(cand_h, self.num_bins) * self.gap_bins + np.minimum(
                (np.array(cand_gap) * self.gap_bins).astype(int), self.gap_bins - 1)
            _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
            weights = 1.0 / counts[inverse]
            n_zero = int(round(self.zero_hop_share * self.pairs))
            chosen = rng.choice(len(cand_h), size=self.pairs - n_zero, p=weights / weights.sum())
            zeros = base + rng.integers(len(idx), size=n_zero)
            before.extend(list(cand_b[chosen]) + list(zeros))
            after.extend(list(cand_a[chosen]) + list(zeros))
            hops.extend(list(cand_h[chosen]) + [0.0] * n_zero)
            start_i.extend([s_idx] * self.pairs)
            goal_i.extend([g_idx] * self.pairs)
            texts.extend([self.instructions.index(ep.instruction)] * self.pairs)
            censored += [False] * self.pairs
            lower += [False] * self.pairs
        return PairBatch(np.stack(states), np.array(start_i), np.array(goal_i), np.array(before),
                         np.array(after), np.array(hops, dtype=np.float32), np.array(texts), self.instructions,
                         np.array(censored, dtype=bool), np.array(lower, dtype=bool),
                         np.repeat(np.arange(num_episodes), np.diff([*slot_starts, len(states)])))

    def _twin_pairs(self, states: list, task: str) -> tuple[list, list, list, list, list, list, str]:
        """Bounded pairs of a success of ``task`` under a reverse twin's instruction and goal anchor (see
        the module docstring): frame pairs of the last phase with the sign of their direction in time,
        and twin-goal -> frame below the zero bin for the phase's last third (where the episode has
        undone the twin's goal). Returns (before, after, bounds, lower, start, goal, instruction)."""
        rng = self.rng
        twin = str(rng.choice(self.twins[task]))
        ep = self.episodes[int(rng.choice(self.by_task[task]))]
        k = ep.keyframes
        first = int(k[-2]) if k is not None and len(k) >= 2 else 0
        seg = np.arange(first, ep.goal_index + 1)
        idx = np.sort(rng.choice(seg, size=min(self.frames, len(seg)), replace=False))
        base = len(states)
        states.extend(ep.images[idx])
        states.append(ep.images[0])
        s_idx = len(states) - 1
        g_ep = self.episodes[int(rng.choice(self.by_task[twin]))]
        states.append(g_ep.images[g_ep.goal_index])
        g_idx = len(states) - 1
        phi = ep.phi[idx]
        p, q = np.nonzero(np.abs(phi[:, None] - phi[None, :]) >= self.twin_min_gap)
        late = np.nonzero(idx >= first + 2 * (ep.goal_index - first) / 3)[0]
        n_dir = self.pairs // 2 if len(late) else self.pairs
        before, after, bounds, lower, goals = [], [], [], [], []
        if len(p):
            pick = rng.integers(len(p), size=n_dir)
            for i, j in zip(p[pick], q[pick]):
                forward_in_time = idx[i] < idx[j]
                before.append(base + int(i))
                after.append(base + int(j))
                bounds.append(-self.width if forward_in_time else self.width)
                lower.append(not forward_in_time)
                goals.append(g_idx if rng.random() >= self.drop_goal_prob else -1)
        if len(late):
            m = self.pairs - len(before)
            after += list(base + late[rng.integers(len(late), size=m)])
            before += [g_idx] * m
            bounds += [-self.width] * m
            lower += [False] * m
            goals += [g_idx] * m
        return before, after, bounds, lower, [s_idx] * len(before), goals, self.instruction_of[twin]


_OPPOSITES = (("unlock", "lock"), ("slide-back", "slide"), ("close", "open"), ("pull", "push"), ("press", "push"))


def _direction_free(task: str) -> str:
    name = task.split("/", 1)[-1]
    for word, canonical in _OPPOSITES:
        name = name.replace(word, canonical)
    return name

def reverse_twins(task: str, tasks: list[str]) -> list[str]:
    """Tasks of ``tasks`` with ``task``'s scene and the opposite goal: the names agree once the
    direction words are made equal (lock / unlock, open / close, push / pull / press, slide /
    slide-back): ``door-lock`` -> ``door-unlock``, ``plate-slide-side`` -> ``plate-slide-back-side``."""
    suite, key = (lambda t: t.split("/", 1)[0] if "/" in t else ""), _direction_free(task)  # noqa: E731
    return [t for t in tasks if t != task and suite(t) == suite(task) and _direction_free(t) == key
            and not _wall_twins(t, task)]


def _family(task: str) -> str:
    return task.split("/", 1)[-1].split("-", 1)[0]


def _wall_twins(a: str, b: str) -> bool:
    strip = lambda t: t.split("/", 1)[-1].replace("-wall", "")  # noqa: E731
    return strip(a) == strip(b)


def confusable_tasks(task: str, tasks: list[str]) -> tuple[list[str], list[str]]:
    """Tasks whose instruction an episode of ``task`` never fulfils: (same family, other families).
    A family is the name's first word (``door-close`` / ``door-lock``: one scene); tasks that differ
    only by ``-wall`` are left out of both (one's success can be the other's)."""
    others = [t for t in tasks if t != task and not _wall_twins(t, task)]
    same = [t for t in others if _family(t) == _family(task)]
    return same, [t for t in others if _family(t) != _family(task)]
