"""The front page and the manual hold together: README.md within 150 lines, every docs/ page starting from a
command, every link between them (and its #anchor) leading somewhere, and every test a page cites existing."""
import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]
pytestmark = pytest.mark.unit


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set:
    text = re.sub(r"(?ms)^```.*?^```", "", page.read_text())  # `# comment` lines in code are not headings.
    return {_anchor(m.group(1)) for m in re.finditer(r"(?m)^#{1,6} (.+)$", text)}


def _tests_defined() -> set:
    names = set()
    for path in (REPO / "tests").rglob("*.py"):
        names.add(path.name)
        names.add(path.stem)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
    return names


def test_the_front_page_is_short_and_every_page_starts_from_a_command():
    assert len((REPO / "README.md").read_text().splitlines()) <= 150
    for page in sorted((REPO / "docs").glob("*.md")):
        if page.name == "flags.md":  # Generated: the reference table itself.
            continue
        text = page.read_text()
        assert text.startswith("# "), page.name
        first_section = re.split(r"(?m)^## ", text, maxsplit=1)[0]
        assert "```" in first_section, f"{page.name}: no command before its first section"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_leads_somewhere(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"^[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        assert destination.exists(), f"{page.name}: link to {target}: no such file"
        if anchor and destination.suffix == ".md":
            assert anchor in _anchors(destination), f"{page.name}: link to {target}: no such heading"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_cited_test_exists(page):
    defined = _tests_defined()
    text = page.read_text()
    for name in re.findall(r"\b(test_\w+?)(?:\.py)?(?=[`:\[\s,;)])", text):
        if name.startswith(("test_tf2", "test_keras300")):  # `make test-tf221` targets, not tests.
            continue
        assert name in defined or f"{name}.py" in defined, f"{page.name} cites {name}, which no test defines"
    for path in re.findall(r"\b(tests/[\w/]+\.py)", text):
        assert (REPO / path).exists(), f"{page.name} cites {path}, which does not exist"
