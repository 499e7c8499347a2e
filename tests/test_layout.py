"""The package layout keeps its promises (README, "Architecture"): stages import only earlier
stages, no module uses another module's private names, there is no import circle, and a module
over 400 lines says at its top why it is one file."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "lora_jax"

# The stages in data-flow order: a package may import its own stage and earlier ones only.
STAGE = {
    "console": 0, "errors": 0, "ranges": 0,
    "lora": 1, "models": 1, "quant": 1, "tasks": 1, "metrics": 1,
    "eval": 2,
    "train": 3,
    "run": 4,
    "report": 5, "analysis": 5, "export": 5, "bench": 5,
}  # fmt: skip
# the entry points: thin shims that call into run/ (python -m lora_jax.train|evaluate|...)
ENTRY = {"lora_jax/__init__.py", "lora_jax/evaluate.py", "lora_jax/analyze.py", "lora_jax/run/entry.py",
         "lora_jax/train/__main__.py", "lora_jax/bench/__main__.py"}  # fmt: skip
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it), for every import in the file (function bodies
    included: an import hidden in a function is still an edge)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names]))
    return [(m, n) for m, n in found if m == "lora_jax" or m.startswith("lora_jax.")]


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


MODULES = _modules()


def test_stages_import_only_earlier_stages():
    bad = []
    for mod, path in MODULES.items():
        if str(path.relative_to(PKG.parent)) in ENTRY:
            continue
        mine = STAGE.get(_stage(mod) or "")
        assert mine is not None, f"{mod}: add its package to STAGE (and the README's table)"
        for imp, names in _imports(path):
            targets = [imp] if imp != "lora_jax" else [f"lora_jax.{n}" for n in names]
            for t in targets:
                theirs = STAGE.get(_stage(t) or "")
                if theirs is not None and theirs > mine:
                    bad.append(f"{mod} imports {t}")
    assert not bad, "\n".join(bad)


def test_no_private_names_across_modules():
    bad = []
    for mod, path in MODULES.items():
        for imp, names in _imports(path):
            if imp != mod and any(n.startswith("_") and not n.startswith("__") for n in names):
                bad.append(f"{mod}: from {imp} import {names}")
            if any(part.startswith("_") and not part.startswith("__") for part in imp.split(".")):
                bad.append(f"{mod} imports the private module {imp}")
    assert not bad, "\n".join(bad)


def test_no_import_circle():
    graph: dict[str, set[str]] = {}
    for mod, path in MODULES.items():
        edges = set()
        # a submodule's parent packages are initialized first by Python: not an edge
        parents = {".".join(mod.split(".")[:i]) for i in range(1, mod.count(".") + 1)}
        for imp, names in _imports(path):
            subs = [f"{imp}.{n}" for n in names if f"{imp}.{n}" in MODULES]
            cands = subs if subs and len(subs) == len(names) else [imp, *subs]
            edges |= {c for c in cands if c in MODULES and c != mod and c not in parents}
        graph[mod] = edges
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                pytest.fail("import circle: " + " -> ".join(stack[stack.index(n) :] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_long_modules_say_why():
    long = []
    for mod, path in MODULES.items():
        text = path.read_text()
        n = text.count("\n")
        if n > MAX_LINES and "Why one file" not in text[:3000]:
            long.append(f"{mod}: {n} lines")
    assert not long, (
        "modules over 400 lines without a 'Why one file' note at the top:\n" + "\n".join(long)
    )
