"""How well a trained TCN encoder orders time on held-out video (``time_gap_correlation``)."""

from __future__ import annotations

import numpy as np


def time_gap_correlation(encoder, data, cameras: tuple[str, ...] = ("corner", "corner2", "gripperPOV"),
                         max_episodes_per_task: int | None = None, kinds: tuple[str, ...] = ("expert",)) -> dict[str, float]:
    """How well feature distance tracks time: per episode and camera, the Spearman correlation
    between |t_i - t_j| and the distance of the features of frames i and j (features z-scored per
    dimension within the episode, so no dimension dominates by scale), over all frame pairs.
    Only episodes of ``kinds`` count (failures such as stalls and reversals need not move forward).

    Returns ``{camera: mean over episodes, "mean": mean over cameras}``. A good TCN is clearly
    above the ``pixels`` encoder on held-out tasks."""
    from episodes import EpisodeStore
    from reward_models.data import resolve_stores
    from reward_models.metrics import spearman

    per_cam: dict[str, list[float]] = {c: [] for c in cameras}  # (None when an episode has one frame)
    per_task: dict[str, int] = {}
    for path in resolve_stores(data):
        with EpisodeStore(path, cameras=list(cameras)) as store:
            for i in range(len(store)):
                attrs = store.episode_attrs(i)
                task = attrs["task"]
                if attrs["kind"] not in kinds or (max_episodes_per_task is not None
                                                  and per_task.get(task, 0) >= max_episodes_per_task):
                    continue
                per_task[task] = per_task.get(task, 0) + 1
                ep = store[i]
                for c in cameras:
                    f = encoder.encode(ep.images[c]).astype(np.float64)
                    f = (f - f.mean(0)) / (f.std(0) + 1e-6)
                    iu = np.triu_indices(len(f), k=1)
                    sq = (f * f).sum(1)
                    dist = np.sqrt(np.maximum(sq[:, None] + sq[None] - 2 * f @ f.T, 0))[iu]
                    gap = (iu[1] - iu[0]).astype(np.float64)
                    per_cam[c].append(spearman(gap, dist))
    if not any(per_cam.values()):
        raise ValueError(f"no episodes of kinds {list(kinds)} in {data}")
    result = {c: float(np.mean([x for x in v if x is not None])) for c, v in per_cam.items()}
    result["mean"] = float(np.mean(list(result.values())))
    return result
