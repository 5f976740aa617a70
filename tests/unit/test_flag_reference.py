"""docs/flags.md is generated from the flag definitions (scripts/flag_reference.py): it lists every flag trainer.task
defines, and is what the script prints now."""
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_flag_reference_is_current_and_complete():
    spec = importlib.util.spec_from_file_location("flag_reference", REPO / "scripts" / "flag_reference.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    assert (REPO / "docs" / "flags.md").read_text() == reference.render(), \
        "docs/flags.md is stale: python scripts/flag_reference.py > docs/flags.md"
    from absl import flags

    import trainer.task  # noqa: F401

    ours = {flag.name for flag in flags.FLAGS.get_key_flags_for_module(trainer.task)}
    listed = {name for _, names in reference.sections() for name in names}
    assert ours == listed, ours ^ listed


def test_every_config_field_is_a_flag():
    """One source: trainer.task builds the Config from the flags of the Config's own field names."""
    import dataclasses

    from absl import flags

    import trainer.task
    from trainer.config import Config

    defined = {flag.name for flag in flags.FLAGS.get_key_flags_for_module(trainer.task)}
    assert {f.name for f in dataclasses.fields(Config)} <= defined
    # The console's flag (not the run's), and the margin's former name (an alias of --promote_margin).
    assert defined - {f.name for f in dataclasses.fields(Config)} == {"verbose", "promote_min_delta"}


def test_every_flag_default_is_the_config_default():
    """One source for defaults: each flag's default, parsed as trainer.task parses it, is the Config field's."""
    import dataclasses

    from absl import flags

    import trainer.task
    from trainer.config import Config, parse_augment

    defaults = Config()
    parse = {"classes": tuple, "head_units": lambda v: tuple(int(u) for u in v), "augment": parse_augment}
    for field in dataclasses.fields(Config):
        flag_default = flags.FLAGS[field.name].default
        assert parse.get(field.name, lambda v: v)(flag_default) == getattr(defaults, field.name), field.name
    assert "_DEFAULTS." in Path(trainer.task.__file__).read_text()
