"""Writes docs/flags.md, the reference of every `python -m trainer.task` flag, from the flag definitions themselves
(trainer/task.py: name, default, choices, help, in the sections the file groups them by). tests/unit/
test_flag_reference.py fails when docs/flags.md is not what this prints, so the reference cannot go stale.

    python scripts/flag_reference.py > docs/flags.md
"""
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def sections():
    """[(section, [flag names])] in the order trainer/task.py defines them."""
    found, current = [], None
    for line in (REPO / "trainer" / "task.py").read_text().splitlines():
        heading = re.match(r"^# ([A-Z][\w ,/-]*)\.$", line)
        if heading:
            current = (heading.group(1), [])
            found.append(current)
        defined = re.match(r'^flags\.DEFINE_\w+\(\s*"(\w+)"', line)
        if defined and current is not None:
            current[1].append(defined.group(1))
    return [(name, flags) for name, flags in found if flags]


def _default(flag) -> str:
    value = flag.default
    if value is None or value == [] or value == "":
        return "—"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def render() -> str:
    from absl import flags

    import trainer.task  # noqa: F401 - defines the flags.

    defined = flags.FLAGS
    lines = ["# Flags of `python -m trainer.task`", "",
             "Generated from the flag definitions (`python scripts/flag_reference.py > docs/flags.md`; a test fails "
             "when this page is stale). `python -m trainer.task --helpfull` prints the same; every flag also works "
             "in a `--flagfile`.", ""]
    for section, names in sections():
        lines += [f"## {section}", "", "| flag | default | meaning |", "|---|---|---|"]
        for name in names:
            flag = defined[name]
            meaning = re.sub(r"^<[^>]*>: ", "", " ".join(flag.help.split())).replace("|", "\\|")
            enum = getattr(flag.parser, "enum_values", None)
            if enum:
                meaning += f" One of: {', '.join(f'`{v}`' for v in enum)}."
            lines.append(f"| `--{name}` | {_default(flag).replace('|', chr(92) + '|')} | {meaning} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render())
