"""The docs check: README.md and docs/*.md cannot drift from the code.

- Every ```python block runs (all in one subprocess, each in a fresh namespace); a block whose
  fence says ```python no-run is shown, not run.
- Every ``stepwise-*`` command named in a code block or inline code is a console script of
  pyproject.toml, and its ``key=value`` overrides compose against that script's Hydra config
  (a renamed or removed key fails here); a sweep (``-m``, ``seed=0,1,2``) composes as its first job. Values with placeholders (``<run>``, ``...``) are skipped.
- Every relative link resolves to a file of the repository, and every repository path named in
  inline code (``sim/keyframes.py``, ``benchmarks/learning.py``) exists.
- The README is a front page (at most 260 lines) whose first commands are the two the project
  promises; its test command is the one ``.ci/run`` runs.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Each console script and the Hydra config (configs/<name>.yaml) it runs.
SCRIPT_CONFIGS = {
    "stepwise-collect": "collect",
    "stepwise-train-rm": "train_rm",
    "stepwise-eval-rm": "eval_rm",
    "stepwise-train": "train",
    "stepwise-train-reset-free": "reset_free",
    "stepwise-robot-server": "robot_server",
    "stepwise-deploy": "deploy",
    "stepwise-failures": "failures",
    "stepwise-import": "import_data",
    "stepwise-export": "export_data",
    "stepwise-score": "score",
}
COMMAND = re.compile(r"(?:\.venv/bin/)?(stepwise-[a-z]+(?:-[a-z]+)*)\b((?:[ \t]+[^\s`|;&#]+)*)")
OVERRIDE = re.compile(r"^[A-Za-z_][\w./]*=\S*$")  # key=value, group/option=value (hydra/launcher=cluster)
PLACEHOLDER = re.compile(r"[<>]|\.\.\.|^\w+=[A-Z]+$")
LINK = re.compile(r"\]\(([^)\s]+)\)")
REPO_PATH = re.compile(r"^(?:episodes|sim|reward_models|real|policies|configs|benchmarks|scripts|tests|docs)/[\w./-]*$")


def page_lines(page: Path) -> list[tuple[int, str, bool]]:
    """(line number, text, inside a code block) for each line; fenced and indented code count."""
    out, fenced = [], False
    for i, line in enumerate(page.read_text().splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
            continue
        out.append((i, line, fenced or line.startswith("    ")))
    return out


def python_blocks(page: Path) -> list[tuple[int, str]]:
    """(first line, source) of each runnable ```python block."""
    blocks, current, start = [], None, 0
    for i, line in enumerate(page.read_text().splitlines(), 1):
        if current is None and line.strip() == "```python":
            current, start = [], i + 1
        elif current is not None and line.startswith("```"):
            blocks.append((start, "\n".join(current)))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def commands() -> list[tuple[str, int, str, list[str]]]:
    """(page, line, console script, overrides) for every stepwise-* command the pages name."""
    found = []
    for page in PAGES:
        for i, line, code in page_lines(page):
            for seg in [line] if code else re.findall(r"`([^`]+)`", line):
                for m in COMMAND.finditer(seg.split("#")[0]):
                    args = [a for a in m.group(2).split() if OVERRIDE.match(a)]
                    if {"-m", "--multirun"} & set(m.group(2).split()):  # a sweep composes as its first job
                        args = [a.split(",")[0] if "[" not in a else a for a in args]
                    found.append((page.name, i, m.group(1), args))
    return found


def test_pages_exist_and_readme_is_a_front_page():
    names = {p.name for p in PAGES}
    assert {"README.md", "architecture.md", "getting-started.md", "reward-models.md", "policy-learning.md",
            "robot.md", "benchmarks.md", "design-notes.md"} <= names
    readme = (ROOT / "README.md").read_text().splitlines()
    assert len(readme) <= 260, f"README.md has {len(readme)} lines: move guides to docs/, tables to benchmarks/results/"
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = "./scripts/bootstrap && .venv/bin/python -m pytest"
    assert test_cmd in ci
    head = "\n".join(readme[:15])
    assert test_cmd in head
    assert "./scripts/bootstrap && .venv/bin/stepwise-train" in head


def test_every_named_command_is_a_console_script_and_its_overrides_compose():
    from hydra import compose, initialize_config_module

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(SCRIPT_CONFIGS) == set(scripts), "SCRIPT_CONFIGS must name every console script's config"
    found = commands()
    assert len(found) > 20 and any(args for *_, args in found)
    unknown = [f"{p}:{i} {s}" for p, i, s, _ in found if s not in scripts]
    assert not unknown, "commands named in the docs that are not console scripts:\n" + "\n".join(unknown)
    bad = []
    with initialize_config_module(config_module="configs", version_base="1.3"):
        for page, line, script, args in found:
            args = [a for a in args if not PLACEHOLDER.search(a)]
            try:
                compose(config_name=SCRIPT_CONFIGS[script], overrides=args, return_hydra_config=True)
            except Exception as err:  # hydra's override and config errors have no common base
                bad.append(f"{page}:{line} {script} {' '.join(args)}: {str(err).splitlines()[0]}")
        # The check can fail: a key that does not exist is refused.
        with pytest.raises(Exception):
            compose(config_name="train", overrides=["agent.no_such_key=1"], return_hydra_config=True)
    assert not bad, "documented overrides that no longer compose:\n" + "\n".join(bad)


def test_links_and_named_paths_resolve():
    missing = []
    for page in PAGES:
        text = page.read_text()
        for target in LINK.findall(text):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            if not (page.parent / target.split("#")[0]).resolve().exists():
                missing.append(f"{page.name}: link {target}")
        for span in re.findall(r"`([^`\s]+)`", text):
            if REPO_PATH.match(span) and "*" not in span and not (ROOT / span.rstrip("/")).exists():
                missing.append(f"{page.name}: path {span}")
    assert not missing, "links or paths in the docs that do not exist:\n" + "\n".join(missing)


def test_python_blocks_run(tmp_path):
    blocks = [(p.name, line, src) for p in PAGES for line, src in python_blocks(p)]
    assert blocks, "the README's quick start is a ```python block"
    runner = tmp_path / "run_blocks.py"
    runner.write_text(
        "import json, sys, traceback\n"
        "blocks = json.load(open(sys.argv[1]))\n"
        "failed = []\n"
        "for page, line, src in blocks:\n"
        "    try:\n"
        "        exec(compile(src, f'{page}:{line}', 'exec'), {'__name__': '__docs__'})\n"
        "    except Exception:\n"
        "        failed.append(f'{page}:{line}\\n' + traceback.format_exc(limit=3))\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n")
    data = tmp_path / "blocks.json"
    data.write_text(json.dumps(blocks))
    proc = subprocess.run([sys.executable, str(runner), str(data)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"python blocks of the docs that fail:\n{proc.stdout}\n{proc.stderr[-2000:]}"
