"""The code's layers as its imports draw them (scripts/import_layers.py): no import runs back up, docs/layout.md
shows the current picture, and no module reaches into another's private names."""
import ast
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("import_layers", REPO / "scripts" / "import_layers.py")
import_layers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(import_layers)


def test_imports_flow_down_only():
    found = import_layers.imports()
    assert import_layers.upward(found) == []
    assert "engines" in found["stages"] and "stages" not in found["engines"]
    assert "engines" not in found["policy"] and "engines" not in found["run"]


def test_the_layout_page_shows_the_current_layers():
    assert import_layers.render(import_layers.imports()) in (REPO / "docs" / "layout.md").read_text(), \
        "docs/layout.md's layer diagram is stale: paste `python scripts/import_layers.py`'s output"


def test_no_private_name_is_used_across_modules():
    found = []
    for path in sorted((REPO / "trainer").rglob("*.py")):
        tree = ast.parse(path.read_text())
        modules = set()  # Names bound to trainer modules in this file.
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("trainer"):
                for alias in node.names:
                    if alias.name.startswith("_"):
                        found.append(f"{path.relative_to(REPO)}: from {node.module} import {alias.name}")
                    modules.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                modules.update(a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("trainer"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules \
                    and node.attr.startswith("_") and not node.attr.startswith("__"):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value.id}.{node.attr}")
    assert found == []


def test_test_modules_mark_their_layer_at_module_level():
    """The TF 2.21 leg collects modules by their `tf221` mark without importing them (tests/conftest.py): each mark
    must be the module's own `pytestmark`, not text inside a child program's source."""
    for path in sorted((REPO / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text())
        marks = [n for n in tree.body if isinstance(n, ast.Assign) and any(
            getattr(t, "id", None) == "pytestmark" for t in n.targets)]
        in_strings = [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                      and "pytest.mark." in n.value]
        assert not in_strings, path.name
        if "pytest.mark.tf221" in path.read_text():
            assert marks and "tf221" in ast.unparse(marks[0].value), path.name
