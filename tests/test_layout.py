"""The house rules, checked on the code itself (docs/architecture.md explains them).

- Imports point one way between the wings: configs <- episodes <- sim <- reward_models <- real
  <- policies <- benchmarks, with the exceptions listed in ALLOWED (real's deploy entry may ask a
  reward model whether an episode succeeded; reward_models never imports real or policies).
- No import circles among the project's modules, function-level imports included (an import
  under ``if TYPE_CHECKING:`` is a type hint, not a dependency, and is not counted).
- No module takes another module's private names (``from x import _y``), and no code outside
  ``sim/`` reads or writes a private attribute of an object that is not its own (``other._x``):
  Meta-World's internals are sim's business alone.
- A module of the packages over 400 lines says in its docstring why it is long; a learning job's
  entry module (``policies/jobs/``) wires stages written elsewhere and stays within 250 lines.

The checks read the source with ``ast``; nothing is imported or run.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WINGS = ("configs", "episodes", "sim", "reward_models", "real", "policies", "benchmarks")
PACKAGES = WINGS[:-1]  # benchmarks are scripts on top, not a package of the library
# What each wing may import besides itself.
ALLOWED = {
    "configs": set(),
    "episodes": {"configs"},
    "sim": {"configs", "episodes"},
    "reward_models": {"configs", "episodes", "sim"},
    "real": {"configs", "episodes", "sim"},
    "policies": {"configs", "episodes", "sim", "reward_models", "real"},
    "benchmarks": {"configs", "episodes", "sim", "reward_models", "real", "policies"},
}
# File-level exceptions to the wing table, each with its reason.
EXCEPTIONS = {
    ("real.deploy", "reward_models"): "the deploy loop's success=reward_model judge loads a classifier",
}
MAX_LINES = 400
JOB_MAX_LINES = 250  # a learning job's entry (policies/jobs/): Hydra main and the wiring of its stages
LONG_REASON = re.compile(r"\blong(er)?\b[^.]*\bbecause\b", re.IGNORECASE | re.DOTALL)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_files() -> dict[str, Path]:
    files = {}
    for wing in WINGS:
        for path in sorted((ROOT / wing).rglob("*.py")):
            if ".venv" not in path.parts:
                files[module_name(path)] = path
    return files


FILES = project_files()


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of import nodes under ``if TYPE_CHECKING:`` (type hints only)."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                for inner in ast.walk(sub):
                    skip.add(id(inner))
    return skip


def imports_of(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported project module, names taken from it, line) for every import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in WINGS:
                    found.append((alias.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] not in WINGS:
                continue
            names = [a.name for a in node.names]
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in FILES]
            found.extend((s, [], node.lineno) for s in subs)
            rest = [n for n in names if f"{target}.{n}" not in FILES]
            if rest or not subs:
                found.append((target, rest, node.lineno))
    return found


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {name: set() for name in FILES}
    for name, path in FILES.items():
        for target, _, _ in imports_of(name, path):
            if target in FILES and target != name:
                edges[name].add(target)
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_is_read():
    """The walker sees the project's real imports (a check that cannot pass on an empty graph)."""
    edges = graph()
    assert len(FILES) > 50
    assert "episodes" in edges["sim.collect"] or any(t.startswith("episodes") for t in edges["sim.collect"])
    assert any(t.startswith("reward_models") for t in edges["policies.jobs.train"])


def test_circles_are_found():
    """The circle finder itself: a made-up loop a -> b -> c -> a is reported, a chain is not."""
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_circles():
    found = circles(graph())
    assert not found, "import circles (each a set of modules that import each other in a loop):\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_imports_follow_the_layering():
    bad = []
    for name, path in FILES.items():
        wing = name.split(".")[0]
        for target, _, line in imports_of(name, path):
            other = target.split(".")[0]
            if other == wing or other in ALLOWED[wing] or (name, other) in EXCEPTIONS:
                continue
            bad.append(f"{path.relative_to(ROOT)}:{line} ({wing}) imports {target} ({other})")
    assert not bad, "imports against the layering (see docs/architecture.md):\n" + "\n".join(bad)


def test_no_private_names_taken_from_other_modules():
    bad = []
    for name, path in FILES.items():
        for target, names, line in imports_of(name, path):
            if target == name:
                continue
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    bad.append(f"{path.relative_to(ROOT)}:{line} takes {target}.{n}")
    assert not bad, "private names imported across modules (make them public where they belong):\n" + "\n".join(bad)


def own_private_attributes(tree: ast.AST) -> set[str]:
    """Private attributes that a class of this module sets on itself (``self._x = ...``) or defines
    (``def _x``): the module owns them, so its own functions may use them on another instance."""
    own = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Name) \
                and node.value.id == "self" and node.attr.startswith("_"):
            own.add(node.attr)
        elif isinstance(node, ast.ClassDef):
            own.update(f.name for f in node.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return own


def test_no_private_attributes_of_others_outside_sim():
    """Outside sim/, code neither reads nor writes another object's private attributes (Meta-World's
    ``env._last_rand_vec``, SimTask's ``task._env``): their owner offers a public method."""
    bad = []
    for name, path in FILES.items():
        if name.split(".")[0] in ("sim", "benchmarks"):
            continue
        tree = ast.parse(path.read_text())
        own = own_private_attributes(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and node.attr not in own
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                verb = "writes" if isinstance(node.ctx, ast.Store) else "reads"
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {verb} {ast.unparse(node)}")
    assert not bad, "private attributes of other objects used (give their owner a public method):\n" + "\n".join(bad)


@pytest.mark.parametrize("name", [n for n in FILES if n.split(".")[0] in PACKAGES])
def test_modules_are_short_or_say_why(name):
    path = FILES[name]
    lines = len(path.read_text().splitlines())
    if lines <= MAX_LINES:
        return
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert LONG_REASON.search(doc), (
        f"{path.relative_to(ROOT)} has {lines} lines (more than {MAX_LINES}): split it along its seams, "
        f"or say in its docstring why it is longer (a sentence with 'long ... because').")


@pytest.mark.parametrize("name", [n for n in FILES if n.startswith("policies.jobs.")])
def test_job_entries_only_wire_stages(name):
    lines = len(FILES[name].read_text().splitlines())
    assert lines <= JOB_MAX_LINES, (
        f"{FILES[name].relative_to(ROOT)} has {lines} lines (more than {JOB_MAX_LINES}): a job's entry holds its "
        "Hydra main and the order of its stages; move a stage's work into its own module under policies/")
