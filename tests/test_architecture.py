"""The shape of the package (docs/architecture.md), checked on every `make test`: no import circles between files or
between folders (every import counts, also one inside a function), config stops at the jobs, one name per
component, small modules."""
from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

from conftest import REPO

PKG = REPO / "vlrb"
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(PKG.rglob("*.py")):
        parts = list(f.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _imports(path: Path, me: str, known: set[str]) -> set[str]:
    """The vlrb modules `path` imports (any depth in the file); `from a import b` counts a.b when b is a module."""
    found = set()
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # `import vlrb.a.b` where only vlrb.a is a module here
                name = name.rpartition(".")[0]
            if name and name.startswith("vlrb") and name != me:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(f, m, set(mods)) for m, f in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _folder(mod: str) -> str:
    parts = mod.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


def test_no_file_imports_another_that_imports_it_back():
    """A package's face (__init__) counts as a file: a module that imports its own package's face is a circle."""
    assert _cycles(_graph()) == []


def test_no_two_folders_need_each_other():
    folders: dict[str, set[str]] = defaultdict(set)
    for m, deps in _graph().items():
        folders[_folder(m)] |= {_folder(d) for d in deps if _folder(d) != _folder(m)}
    assert _cycles(folders) == []


def test_config_stops_at_the_jobs():
    """omegaconf only in vlrb/jobs/; hydra in vlrb/jobs/ and the one factory module (vlrb/components.py)."""
    omegaconf, hydra = [], []
    for m, f in _modules().items():
        text = f.read_text()
        if m.startswith("vlrb.jobs"):
            continue
        if re.search(r"^\s*(from|import) omegaconf", text, re.M):
            omegaconf.append(m)
        if re.search(r"^\s*(from|import) hydra", text, re.M) and m != "vlrb.components":
            hydra.append(m)
    assert omegaconf == [] and hydra == []


def test_one_name_per_component_no_registries():
    pattern = re.compile(r"\b(register_router|create_router|register_backbone|create_backbone|register_encoder|"
                         r"ENCODERS|ROUTERS|BACKBONES)\b")
    assert [str(f.relative_to(REPO)) for f in PKG.rglob("*.py") if pattern.search(f.read_text())] == []


def test_modules_stay_small():
    big = {str(f.relative_to(REPO)): n for f in PKG.rglob("*.py") if (n := len(f.read_text().splitlines())) > MAX_LINES}
    assert big == {}


@pytest.mark.parametrize("edges, expected", [
    ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
])
def test_the_circle_finder_finds_circles(edges, expected):
    assert _cycles(edges) == expected
