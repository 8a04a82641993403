"""stepwise episode storage: one HDF5 file of many episodes, robomimic layout.

See :mod:`episodes.store` for the on-disk layout and crash-safety notes.
Quick use::

    from episodes import Episode, EpisodeWriter, EpisodeStore
    with EpisodeWriter("data/pick.hdf5", env_args={"task": "pick"}) as w:
        w.add(episode)
    with EpisodeStore("data/pick.hdf5") as st:
        ep = st[0]; frame = st.frames(0, 5)["front"]
"""

from .store import (
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

__all__ = [
    "FORMAT_VERSION",
    "StoreError",
    "MissingCameraError",
    "CorruptStoreError",
    "VersionError",
    "StoreNotFoundError",
    "Episode",
    "EpisodeWriter",
    "EpisodeStore",
    "summarize",
]
