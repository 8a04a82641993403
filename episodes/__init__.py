"""stepwise episode storage: one HDF5 file of many episodes, robomimic layout.

See :mod:`episodes.format` for the on-disk layout, :mod:`episodes.writer` for the crash-safety
notes (the journal is :mod:`episodes.journal`) and :mod:`episodes.store` for readers next to a writer.
Quick use::

    from episodes import Episode, EpisodeWriter, EpisodeStore
    with EpisodeWriter("data/pick.hdf5", env_args={"task": "pick"}) as w:
        w.add(episode)
    with EpisodeStore("data/pick.hdf5") as st:
        ep = st[0]; frame = st.frames(0, 5)["front"]
"""

from .episode import Episode
from .errors import CorruptStoreError, MissingCameraError, StoreError, StoreNotFoundError, VersionError
from .format import FORMAT_VERSION
from .store import EpisodeStore, summarize
from .writer import EpisodeWriter

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
