"""Prints the layers of trainer/ as its imports draw them: for each part (a subpackage, split where a package holds
two layers), the parts it imports, bottom first. docs/layout.md shows this output, and
tests/unit/test_layout.py fails when the two differ or when an import runs back up (a part importing one listed
above it).

    python scripts/import_layers.py
"""
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "trainer"
# Parts, bottom first: trainer/run/ is the state below the engines (phases, preemption, distribution, checkpoints),
# trainer/stages/ the stages above them (prepare, experiment, finish, preflight).
ORDER = ["errors", "util", "config", "cloud", "data", "model", "outputs", "run", "retrain", "policy", "engines",
         "stages", "serve", "entry points", "pipeline"]


def part_of(path: Path) -> str:
    rel = path.relative_to(ROOT).as_posix()
    if "/" not in rel:
        return {"config.py": "config", "metric_registry.py": "config", "augmentations.py": "config", "augment_policies.py": "config",
                "augment_mixing.py": "config", "errors.py": "errors",
                "__init__.py": "config"}.get(rel, "entry points")
    return rel.split("/")[0]


def module_part(module: str) -> str:
    parts = module.split(".")[1:]
    if not parts:
        return "config"
    path = ROOT.joinpath(*parts)
    candidates = [path.with_suffix(".py"), path / "__init__.py"]
    for candidate in candidates:
        if candidate.exists():
            return part_of(candidate)
    return part_of(ROOT.joinpath(*parts[:-1]).with_suffix(".py")) if len(parts) > 1 else "config"


def imports() -> dict:
    """{part: {parts it imports at module level or inside functions}}."""
    found = {part: set() for part in ORDER}
    for path in sorted(ROOT.rglob("*.py")):
        src = part_of(path)
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("trainer"):
                names = [f"{node.module}.{a.name}" for a in node.names] if node.module.count(".") < 2 or \
                    (ROOT.joinpath(*node.module.split(".")[1:]) / "__init__.py").exists() else [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("trainer")]
            for name in names:
                dst = module_part(name)
                if dst != src:
                    found[src].add(dst)
    return found


def upward(found: dict) -> list:
    """(part, imported part) pairs where the import runs back up the order."""
    return [(src, dst) for src, dsts in found.items() for dst in dsts if ORDER.index(dst) > ORDER.index(src)]


def render(found: dict) -> str:
    lines = []
    for part in reversed(ORDER):
        below = [p for p in ORDER if p in found[part]]
        lines.append(f"{part:<13} -> {', '.join(below) if below else '(nothing of trainer)'}")
    return "\n".join(lines)


if __name__ == "__main__":
    found = imports()
    print(render(found))
    bad = upward(found)
    if bad:
        print("imports running back up: " + ", ".join(f"{a} -> {b}" for a, b in bad), file=sys.stderr)
        sys.exit(1)
