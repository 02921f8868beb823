"""The house rule of avo/: imports point one way,

    cli -> ui -> ray -> evolve -> operators | apply -> harness | lineage -> config -> tasks -> kernelbench -> schema

A module may import its own package and any package of a lower layer; never a higher one, and never
a package beside it on the same layer (operators and apply, harness and lineage know nothing of each
other). Imports inside functions count too (a lazy import is still a dependency), and so do imports
under `if TYPE_CHECKING:` (an annotation is a dependency of ideas). Modules must not import each
other in a cycle, even inside one package. The graph is read from the source (ast), so
this runs in a second and catches the rule's breaks before anyone sees them at run time."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

AVO = Path(__file__).resolve().parents[1] / "avo"

# Layer of each top-level part of avo/ (a package folder or a top-level module). Equal numbers:
# beside each other, so neither may import the other.
LAYERS = {
    "schema": 0, "kernelbench": 0.5, "tasks": 1, "config": 2,
    "harness": 3, "lineage": 3,
    "operators": 4, "apply": 4,
    "evolve": 5, "ray": 6, "ui": 7, "cli": 8,
}


def module_name(path: Path) -> str:
    rel = path.relative_to(AVO.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every avo module a file imports (`from avo.x import y` names avo.x.y when y is a module)."""
    tree = ast.parse(path.read_text(), str(path))
    out = set()
    pkg = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "avo"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            if base.split(".")[0] != "avo":
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if _exists(sub) else base)
    return out


def _exists(mod: str) -> bool:
    p = AVO.parent.joinpath(*mod.split("."))
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


def graph() -> dict[str, set[str]]:
    g = {}
    for path in sorted(AVO.rglob("*.py")):
        g[module_name(path)] = {m for m in imports_of(path) if m != module_name(path)}
    return g


def part(mod: str) -> str:
    """avo.evolve.loop -> evolve; avo.cli -> cli; avo -> '' (the package root)."""
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_part_of_avo_has_a_layer():
    parts = {part(m) for m in graph()} - {""}
    assert parts <= set(LAYERS), f"parts of avo/ with no layer in this test: {sorted(parts - set(LAYERS))}"


def breaks(g: dict[str, set[str]]) -> list[str]:
    """Imports that point up or sideways."""
    bad = []
    for mod, deps in g.items():
        a = part(mod)
        for dep in deps:
            b = part(dep)
            if a == b or b == "" or a == "":
                continue  # the root package (`avo.__version__`, lazy `avo.apply`) is everyone's
            if LAYERS[b] >= LAYERS[a]:
                bad.append(f"{mod} -> {dep} ({a} is layer {LAYERS[a]}, {b} is {LAYERS[b]})")
    return sorted(bad)


def cycles(g: dict[str, set[str]]) -> list[str]:
    found, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if d not in g:
                continue
            if state.get(d) == 1:
                found.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [])
    return found


def test_imports_point_down():
    bad = breaks(graph())
    assert not bad, "imports that point up or sideways:\n  " + "\n  ".join(bad)


def test_no_import_cycles():
    found = cycles(graph())
    assert not found, "import cycles:\n  " + "\n  ".join(found)


def test_the_checks_see_a_break_and_a_cycle():
    """The checker itself, on a made-up graph: an upward, a sideways import and a loop are seen."""
    g = {"avo.lineage.repo": {"avo.evolve.loop", "avo.tasks"}, "avo.evolve.loop": {"avo.lineage.repo"},
         "avo.operators.base": {"avo.apply.runtime"}, "avo.apply.runtime": set(), "avo.tasks": set()}
    assert breaks(g) == ["avo.lineage.repo -> avo.evolve.loop (lineage is layer 3, evolve is 5)",
                         "avo.operators.base -> avo.apply.runtime (operators is layer 4, apply is 4)"]
    assert cycles(g) == ["avo.evolve.loop -> avo.lineage.repo -> avo.evolve.loop"]
    path = AVO / "evolve" / "loop.py"
    assert "avo.evolve.state" in imports_of(path) and "avo.harness.runner" in imports_of(path)


def test_light_layers_load_without_torch():
    """config, tasks, schema and the lineage are read by the CLI and by tools that never touch a GPU."""
    code = ("import sys\nimport avo.config, avo.tasks, avo.schema, avo.lineage, avo.cli\n"
            "heavy = sorted(m for m in ('torch', 'triton', 'ray', 'openai', 'anthropic') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
