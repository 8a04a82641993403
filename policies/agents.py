"""The learners a job builds from its config: SAC on the state, ImageSAC on camera frames + proprio."""

from __future__ import annotations

from policies.config import image_agent_config, sac_config
from policies.episode import PolicyView


def make_agent(cfg, obs_dim: int, act_dim: int, error: type[Exception] | None = None):
    """SAC over an ``obs_dim`` state from ``cfg.agent``; ``error``: the job's config error class."""
    from policies.sac import SAC

    return SAC(obs_dim, act_dim, sac_config(cfg) if error is None else sac_config(cfg, error))


def make_image_agent(cfg, view: PolicyView, proprio_dim: int, act_dim: int):
    """ImageSAC over ``view``'s cameras at its image size, plus proprio."""
    from policies.image_sac import ImageSAC

    return ImageSAC(view.cameras, view.image_size, proprio_dim, act_dim, image_agent_config(cfg))


def make_learner(cfg, env, view: PolicyView | None, records: list, imitate: bool = False):
    """The agent for ``env``'s spaces, its demonstration buffer sized for ``records`` (plus room for
    imitated online episodes when ``imitate``), and a factory of empty buffers of the same kind:
    (agent, offline buffer, rows -> buffer). ``view``: the image policy's (None: SAC on the state)."""
    from policies.image_replay import ImageReplayBuffer
    from policies.replay import ReplayBuffer

    act_dim = env.action_space.shape[0]
    if view is not None:
        proprio_dim = env.observation_space["proprio"].shape[0]
        agent = make_image_agent(cfg, view, proprio_dim, act_dim)
        layout = (view.cameras, view.image_size, proprio_dim, act_dim)
        new_buffer = lambda rows: ImageReplayBuffer(*layout, max(2, rows))  # noqa: E731
        return agent, new_buffer(sum(len(r.actions) + 1 for r in records)), new_buffer  # T+1 frame rows per episode
    obs_dim = env.observation_space["state"].shape[0]
    agent = make_agent(cfg, obs_dim, act_dim)
    n_step, gamma = agent.cfg.n_step, agent.cfg.gamma  # n-step transitions where the agent reads them
    new_buffer = lambda rows: ReplayBuffer(obs_dim, act_dim, rows, n_step, gamma)  # noqa: E731
    # self-imitation: successful online episodes join the demonstrations, so the buffer has room for them
    offline = new_buffer(sum(len(r.actions) for r in records) + (int(cfg.online.capacity) if imitate else 0))
    return agent, offline, new_buffer
