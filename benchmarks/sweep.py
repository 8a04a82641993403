"""The learning benchmarks' runs as Hydra multirun sweeps of `stepwise-train`, through any Hydra launcher.

A benchmark names its runs as sweeps: fixed overrides (a reward's or a variant's settings) and
swept keys (``task``, ``demos``, ``seed``), each sweep placed in a folder of its own with one
sub-folder per job (``hydra.sweep.subdir``, built from the job's own config, e.g.
``${task}/demos${demos}/seed${seed}``). Every job runs with ``resume=true``: launched again, a sweep
continues its killed jobs from their checkpoints and leaves its finished ones (report.json) as they
are, so a benchmark can be run in parts, across sittings, or on a cluster. The tables are built
from the run folders alone (report.json + .hydra/), wherever the jobs ran.

Launchers (``--launcher``): ``basic`` (Hydra's own: the jobs of a sweep one after another),
``submitit_local`` (each job a process, the jobs of a sweep side by side), ``cluster``
(``configs/hydra/launcher/cluster.yaml``: Slurm jobs through submitit; add
``hydra.launcher.partition=...`` and friends as extra overrides), or any other ``hydra/launcher``
option installed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@dataclass
class Sweep:
    """One ``stepwise-train -m`` call: ``fixed`` overrides for every job, ``swept`` key -> values (the
    jobs are their product), the folders ``directory / subdir`` (``subdir`` in Hydra's interpolation
    syntax over the job's config)."""

    name: str
    fixed: list[str]
    swept: dict[str, list]
    directory: Path
    subdir: str
    extra: list[str] = field(default_factory=list)

    def jobs(self) -> int:
        n = 1
        for values in self.swept.values():
            n *= len(values)
        return n

    def command(self, launcher: str) -> list[str]:
        """The command line: swept keys as Hydra's comma lists, one torch thread per job."""
        swept = [f"{k}={','.join(str(v) for v in values)}" for k, values in self.swept.items()]
        return [str(BIN / "stepwise-train"), "-m", *self.fixed, *swept, "threads=1", "offline_threads=1",
                "resume=true", f"hydra/launcher={launcher}", f"hydra.sweep.dir={self.directory}",
                f"hydra.sweep.subdir={self.subdir}", *self.extra]


def run_sweep(sweep: Sweep, launcher: str) -> int:
    """Run one sweep to its end (Hydra waits for every job of it); its output goes to ``sweep.log`` in
    its folder. Returns the exit status (non-zero when a job failed: the others still ran)."""
    sweep.directory.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(sweep.directory / "sweep.log", "a") as log:
        log.write(f"\n$ {' '.join(sweep.command(launcher))}\n")
        log.flush()
        rc = subprocess.run(sweep.command(launcher), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    print(f"{sweep.name}: {sweep.jobs()} job(s), rc {rc} in {time.time() - t0:.0f} s ({sweep.directory / 'sweep.log'})",
          flush=True)
    return rc


def run_sweeps(sweeps: list[Sweep], launcher: str, concurrent: int = 1, after_each=None) -> list[int]:
    """Run ``sweeps`` with at most ``concurrent`` at a time (on a cluster, many: each only waits for its
    Slurm jobs); ``after_each()`` is called after every finished sweep (the benchmark rewrites its table)."""
    codes = []
    with ThreadPoolExecutor(max(1, concurrent)) as pool:
        for rc in pool.map(lambda s: run_sweep(s, launcher), sweeps):
            codes.append(rc)
            if after_each is not None:
                after_each()
    return codes
