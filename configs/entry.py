"""The one entry-point pattern of Stepwise's console scripts.

Every ``stepwise-*`` command is a Hydra job over a YAML file in this folder. :func:`hydra_job`
wraps a job function the same way for all of them: logging set up once (third-party chatter such
as PyOpenGL's ``No OpenGL_accelerate module loaded`` kept below WARNING), the Hydra output folder
handed to the job, and every user error (a bad key, a missing file, an unknown task) printed as
one line ``<command>: error: <message>`` with exit status 2, never a traceback.

Imports nothing of the project, so every wing may use it::

    def main() -> None:
        hydra_job("stepwise-train", "train", _job, errors=(TrainConfigError, StoreError))

    def _job(cfg, run_dir: Path) -> str:   # returns the closing line to print
        ...
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Loggers that speak at INFO on import or start and say nothing a user of Stepwise needs.
QUIET_LOGGERS = ("OpenGL", "OpenGL.acceleratesupport", "matplotlib", "PIL", "h5py", "urllib3", "timm",
                 "huggingface_hub")

# Always user errors, whatever the job: a missing file is named by its path in the message.
BASE_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError,)


def quiet_third_party_logs() -> None:
    """Keep import-time INFO lines of third-party packages (PyOpenGL, matplotlib) off the terminal."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def one_line(err: BaseException) -> str:
    """The error's message on one line (a KeyError's quotes dropped), whatever its formatting."""
    msg = err.args[0] if isinstance(err, KeyError) and len(err.args) == 1 else str(err)
    return " ".join(str(msg).split())


def report_error(command: str, err: BaseException) -> None:
    """Print ``<command>: error: <message>`` to stderr (the form every Stepwise command uses)."""
    print(f"{command}: error: {one_line(err)}", file=sys.stderr)


def hydra_job(
    command: str,
    config_name: str,
    job: Callable[[Any, Path], str | None],
    errors: tuple[type[BaseException], ...] = (),
) -> None:
    """Run ``job(cfg, run_dir)`` as the Hydra app ``config_name`` (a YAML in ``configs/``).

    Args:
        command: the console script's name, the prefix of every message it prints.
        config_name: the primary config's file name without ``.yaml``.
        job: the job; gets the composed config and Hydra's output folder, returns the closing
            line to print (or None to print nothing more).
        errors: exception classes that mean the user gave a wrong input; each is printed as
            one line and the process exits with status 2. Anything else is a bug and keeps its
            traceback.
    """
    import hydra
    from hydra.core.hydra_config import HydraConfig

    quiet_third_party_logs()
    caught = (*BASE_ERRORS, *errors)

    @hydra.main(config_path=".", config_name=config_name, version_base="1.3")
    def _run(cfg) -> None:
        quiet_third_party_logs()  # Hydra configured logging afresh
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        try:
            line = job(cfg, run_dir)
        except caught as err:
            report_error(command, err)
            sys.exit(2)
        if line:
            print(line, flush=True)

    _run()
