"""`pipeline.config`: defaults, every key readable from TOML, strict keys and types."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipeline import config
from pipeline.config import Config, ConfigError, documented_keys, load_config


def write(tmp_path, text: str):
    path = tmp_path / "journeymap.toml"
    path.write_text(text, encoding="utf-8")
    return path


def toml_value(value: Any) -> str:
    """A Python value as a TOML value (JSON strings are valid TOML basic strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(value)


def lookup(cfg: Config, dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


# Non-default values for the string keys that are checked (formats, time zones, ...).
CONSTRAINED = {
    "input.max_quarantined_share": 0.05,
    "input.format": "csv",
    "input.timezone": "Europe/Amsterdam",
    "input.ts_unit": "ms",
    "input.csv_separator": ";",
    "sessions.timezone": "America/New_York",
    "conversion.url_pattern": r"^/bedankt\?order=\d+$",
    "conversion.touchpoint": "/bedankt/:id",  # a template: valid whatever the rules
}

# Keys of the `[[touchpoints]]` array of tables: round-tripped by their own tests below.
SCALAR_KEYS = [k for k in documented_keys() if not k.startswith("touchpoints.")]


def other_value(key: str, default: Any) -> Any:
    """A valid value for `key` that differs from its default."""
    if key in CONSTRAINED:
        return CONSTRAINED[key]
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 7
    if isinstance(default, str):
        return default + "_x"
    if isinstance(default, tuple):
        return ("alpha", "beta")
    raise TypeError(f"{key}: no alternative for {default!r}")


# ------------------------------------------------------------------------------- defaults


def test_defaults_load_without_a_file():
    """load_config(None) gives the documented defaults."""
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.sessions.timeout_s == 1800
    assert cfg.sessions.max_duration_s == 86400
    assert cfg.sessions.split_at_midnight is False
    assert cfg.sessions.split_on_campaign_change is False
    assert cfg.sessions.timezone == "UTC"
    assert cfg.bots.max_steps_per_minute == 60
    assert cfg.input.format == "auto"


def test_an_empty_file_is_the_defaults(tmp_path):
    """Every key has a default, so an empty file is a valid configuration."""
    assert load_config(write(tmp_path, "")) == Config()


def test_documented_keys_are_dotted_leaf_keys():
    """documented_keys() lists leaves (e.g. input.columns.ts), never the sections themselves."""
    keys = documented_keys()
    assert len(keys) == len(set(keys))
    for key in ("sessions.timeout_s", "bots.exclude_from_journeys", "input.columns.ts"):
        assert key in keys
    for section in ("input", "input.columns", "sessions", "bots", "steps", "conversion"):
        assert section not in keys


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("key", SCALAR_KEYS)
def test_every_documented_key_round_trips_through_toml(tmp_path, key):
    """A non-default value written under a documented key is the value read back."""
    default = lookup(Config(), key)
    value = other_value(key, default)
    assert value != default
    cfg = load_config(write(tmp_path, f"{key} = {toml_value(value)}\n"))
    expected = tuple(value) if isinstance(value, list) else value
    assert lookup(cfg, key) == expected


def test_all_documented_keys_in_one_file(tmp_path):
    """Every documented key set at once, as [section] tables, reads back in full."""
    values = {key: other_value(key, lookup(Config(), key)) for key in SCALAR_KEYS}
    sections: dict[str, list[str]] = {}
    for key, value in values.items():
        section, _, name = key.rpartition(".")
        sections.setdefault(section, []).append(f"{name} = {toml_value(value)}")
    top = sections.pop("", [])  # top-level keys come before the first table
    text = "".join(f"{line}\n" for line in top) + "\n".join(
        f"[{s}]\n" + "\n".join(lines) + "\n" for s, lines in sections.items()
    )
    cfg = load_config(write(tmp_path, text))
    assert {key: lookup(cfg, key) for key in values} == values


# ------------------------------------------------------------------------- unknown keys


def test_unknown_section_is_rejected_with_a_hint(tmp_path):
    """`[session]` (singular) is refused: did you mean 'sessions'?"""
    with pytest.raises(ConfigError, match=r"unknown config key 'session'; did you mean 'sessions'"):
        load_config(write(tmp_path, "[session]\ntimeout_s = 60\n"))


def test_unknown_key_is_rejected_with_a_hint(tmp_path):
    """`[sessions] timeout = 60` is refused: did you mean 'sessions.timeout_s'?"""
    with pytest.raises(ConfigError, match=r"did you mean 'sessions\.timeout_s'\?"):
        load_config(write(tmp_path, "[sessions]\ntimeout = 60\n"))


def test_unknown_nested_key_lists_the_known_keys(tmp_path):
    """An unknown key with no close match names itself and lists the keys of its table."""
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, '[input.columns]\nwhen = "time"\n'))
    message = str(raised.value)
    assert "'input.columns.when'" in message
    assert "did you mean" not in message
    assert "known keys here:" in message and "ts" in message


def test_a_section_must_be_a_table(tmp_path):
    """`sessions = 5` is refused: a section is a table."""
    with pytest.raises(ConfigError, match=r"\[sessions\] must be a table"):
        load_config(write(tmp_path, "sessions = 5\n"))


# --------------------------------------------------------------------------------- types


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[sessions]\ntimeout_s = true\n", "sessions.timeout_s"),
        ('[sessions]\ntimeout_s = "30"\n', "sessions.timeout_s"),
        ("[sessions]\ntimeout_s = 30.0\n", "sessions.timeout_s"),
        ("[sessions]\nsplit_at_midnight = 1\n", "sessions.split_at_midnight"),
        ('[sessions]\nsplit_at_midnight = "true"\n', "sessions.split_at_midnight"),
        ("[bots]\nexclude_from_journeys = 0\n", "bots.exclude_from_journeys"),
        ("[input]\ntimezone = 1\n", "input.timezone"),
    ],
)
def test_bool_int_and_str_are_not_interchangeable(tmp_path, text, key):
    """An int key refuses a bool, a string or a float; a bool key refuses 0/1 and "true"."""
    with pytest.raises(ConfigError, match=rf"config key '{key}' must be"):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize(
    "value",
    ['"bot"', '["bot", 1]', "[true]", "3"],
)
def test_lists_must_be_lists_of_strings(tmp_path, value):
    """A list key refuses a bare string, mixed lists and non-lists."""
    with pytest.raises(ConfigError, match=r"config key 'bots\.user_agent_patterns' must"):
        load_config(write(tmp_path, f"[bots]\nuser_agent_patterns = {value}\n"))


def test_an_empty_list_is_allowed(tmp_path):
    """`health_check_paths = []` switches health-check filtering off."""
    cfg = load_config(write(tmp_path, "[steps]\nhealth_check_paths = []\n"))
    assert cfg.steps.health_check_paths == ()


# -------------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[sessions]\ntimeout_s = 0\n", "sessions.timeout_s must be a positive number"),
        ("[sessions]\nmax_duration_s = -1\n", "sessions.max_duration_s must be a positive"),
        ("[bots]\nmax_steps_per_minute = 0\n", "bots.max_steps_per_minute must be a positive"),
        ('[sessions]\ntimezone = "Mars/Olympus"\n', "sessions.timezone = 'Mars/Olympus'"),
        ('[input]\ntimezone = "CEST+2"\n', "input.timezone = 'CEST+2'"),
        ('[input]\nformat = "xml"\n', "input.format = 'xml' is unknown"),
        ('[input]\ncsv_separator = ";;"\n', "input.csv_separator must be a single character"),
        ('[conversion]\nurl_pattern = "(unclosed"\n', "conversion.url_pattern = '(unclosed' is"),
    ],
)
def test_bad_values_are_rejected(tmp_path, text, fragment):
    """Values outside their domain are refused with the key in the message."""
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, text))
    assert fragment in str(raised.value)


@pytest.mark.parametrize("key", ["input.timezone", "sessions.timezone"])
@pytest.mark.parametrize("name", ["localtime", "Factory", "posix/Europe/Amsterdam"])
def test_time_zones_polars_cannot_use_are_rejected(tmp_path, key, name):
    """Names some systems' zoneinfo resolves but Polars (which does the conversions) refuses
    are rejected when the config is read, not halfway a run."""
    with pytest.raises(ConfigError, match=rf"{key} = '{name}' is not a known time zone"):
        load_config(write(tmp_path, f"{key} = {toml_value(name)}\n"))


def test_an_unknown_ts_unit_is_rejected(tmp_path):
    """`ts_unit = "sec"` is neither a unit nor a strftime format: refused, instead of every
    timestamp being quarantined."""
    with pytest.raises(ConfigError, match=r"input\.ts_unit = 'sec' is unknown"):
        load_config(write(tmp_path, '[input]\nts_unit = "sec"\n'))


@pytest.mark.parametrize("unit", ["iso", "s", "ms", "us", "%d/%m/%Y %H:%M:%S"])
def test_known_ts_units_and_strftime_formats_are_accepted(tmp_path, unit):
    """iso, s, ms, us and any strftime format are valid ts_unit values."""
    cfg = load_config(write(tmp_path, f"[input]\nts_unit = {toml_value(unit)}\n"))
    assert cfg.input.ts_unit == unit


# ---------------------------------------------------------------------------------- files


def test_a_file_that_is_not_toml_is_rejected(tmp_path):
    """Non-TOML content: a ConfigError naming the file (exit code 2 in the CLI)."""
    path = write(tmp_path, '{"sessions": {"timeout_s": 60}}\n')
    with pytest.raises(ConfigError, match="is not valid TOML") as raised:
        load_config(path)
    assert str(path) in str(raised.value)
    assert raised.value.exit_code == 2


def test_a_missing_file_is_rejected(tmp_path):
    """A config path that does not exist: a ConfigError naming it."""
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_the_column_mapping_covers_every_mappable_column():
    """The column mapping has a key for every mappable canonical column."""
    mapped = {k.removeprefix("input.columns.") for k in documented_keys() if ".columns." in k}
    assert mapped == set(config.MAPPABLE_COLUMNS)


# ---------------------------------------------------------------------------- touchpoints

PAYMENT_RULES = """
[[touchpoints]]
name = "payment_error"
match = "^/nl/afrekenen/betalen"
status = "5xx"
stage = "purchase"

[[touchpoints]]
name = "add_to_cart"
event_type = "add_to_cart"
stage = "purchase"
"""


def test_touchpoint_rules_round_trip(tmp_path):
    """Each [[touchpoints]] table becomes a TouchpointRule, in file order; unset criteria are
    None; the defaults stay on."""
    cfg = load_config(write(tmp_path, PAYMENT_RULES))
    assert cfg.touchpoints == (
        config.TouchpointRule(
            name="payment_error", match="^/nl/afrekenen/betalen", status="5xx", stage="purchase"
        ),
        config.TouchpointRule(name="add_to_cart", event_type="add_to_cart", stage="purchase"),
    )
    assert cfg.default_touchpoints is True


def test_default_touchpoints_and_conversion_touchpoint(tmp_path):
    """`default_touchpoints = false` (top level) and `conversion.touchpoint` naming a rule of
    the file are read back."""
    text = (
        "default_touchpoints = false\n"
        '[conversion]\ntouchpoint = "bedankt"\n'
        '[[touchpoints]]\nname = "bedankt"\nmatch = "^/bedankt"\nstage = "purchase"\n'
    )
    cfg = load_config(write(tmp_path, text))
    assert cfg.default_touchpoints is False
    assert cfg.conversion.touchpoint == "bedankt"


@pytest.mark.parametrize("value", ["order_confirmation", "/bedankt/:id"])
def test_conversion_touchpoint_may_be_a_default_name_or_a_template(tmp_path, value):
    """conversion.touchpoint names a default touchpoint or a URL template (`/…`)."""
    cfg = load_config(write(tmp_path, f"[conversion]\ntouchpoint = {toml_value(value)}\n"))
    assert cfg.conversion.touchpoint == value


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            '[conversion]\ntouchpoint = "order_confirmaton"\n',
            "conversion.touchpoint = 'order_confirmaton' is not a touchpoint name: "
            "did you mean 'order_confirmation'?",
        ),
        (
            'default_touchpoints = false\n[conversion]\ntouchpoint = "order_confirmation"\n',
            "conversion.touchpoint = 'order_confirmation' is not a touchpoint name",
        ),
        (
            '[[touchpoints]]\nnam = "x"\nmatch = "^/x"\nstage = "service"\n',
            "unknown config key 'touchpoints[1].nam'; did you mean 'touchpoints[1].name'?",
        ),
        (
            '[[touchpoints]]\nname = "x"\nmatch = "^/x"\nstage = "service"\n'
            '[[touchpoints]]\nname = "y"\nstatus = "404"\n',
            "config table touchpoints[2] needs the key 'stage'",
        ),
        (
            '[[touchpoints]]\nmatch = "^/x"\nstage = "service"\n',
            "config table touchpoints[1] needs the key 'name'",
        ),
        (
            '[[touchpoints]]\nname = "x"\nmatch = "^/x"\nstage = "buying"\n',
            "touchpoints[1].stage = 'buying' is unknown: use one of orientation, purchase, service",
        ),
        (
            '[[touchpoints]]\nname = "x"\nstatus = "50"\nstage = "purchase"\n',
            "touchpoints[1].status = '50' is not an HTTP status or class",
        ),
        (
            '[[touchpoints]]\nname = "x"\nstatus = "6xx"\nstage = "purchase"\n',
            "touchpoints[1].status = '6xx' is not an HTTP status or class",
        ),
        (
            '[[touchpoints]]\nname = "x"\nstatus = 404\nstage = "purchase"\n',
            "config key 'touchpoints[1].status' must be str, got int 404",
        ),
        (
            '[[touchpoints]]\nname = "x"\nmatch = "(?<=/)x"\nstage = "purchase"\n',
            "touchpoints[1].match = '(?<=/)x' is not a valid regular expression (look-around",
        ),
        (
            '[[touchpoints]]\nname = "x"\nmatch = "[z-a]"\nstage = "purchase"\n',
            "touchpoints[1].match = '[z-a]' is not a valid regular expression (invalid char",
        ),
        (
            '[[touchpoints]]\nname = "x"\nmatch = ""\nstage = "purchase"\n',
            "touchpoints[1].match is empty",
        ),
        (
            '[[touchpoints]]\nname = "x"\nevent_type = ""\nstage = "purchase"\n',
            "touchpoints[1].event_type is empty",
        ),
        (
            '[[touchpoints]]\nname = "x"\nstage = "purchase"\n',
            "touchpoints[1] ('x') has no criterion: give match, event_type or status",
        ),
        (
            '[[touchpoints]]\nname = "EXIT"\nmatch = "^/bye"\nstage = "service"\n',
            "touchpoints[1].name = 'EXIT' is reserved",
        ),
        (
            '[[touchpoints]]\nname = "/cart"\nmatch = "^/cart"\nstage = "purchase"\n',
            "touchpoints[1].name = '/cart' is not a usable name",
        ),
        (
            '[[touchpoints]]\nname = "x"\nmatch = "^/a"\nstage = "purchase"\n'
            '[[touchpoints]]\nname = "x"\nmatch = "^/b"\nstage = "service"\n',
            "touchpoints[2]: touchpoint 'x' has stage 'purchase' in an earlier rule and "
            "'service' here",
        ),
        (
            '[touchpoints]\nname = "x"\nmatch = "^/a"\nstage = "purchase"\n',
            "config key 'touchpoints' must be a list of tables: write each one as [[touchpoints]]",
        ),
        (
            'touchpoints = ["x"]\n',
            "config key 'touchpoints' must be a list of tables",
        ),
        (
            '[[touchpoints]]\nname = "x"\nmatch = "^/a"\nstage = "purchase"\n'
            "default_touchpoints = false\n",
            "unknown config key 'touchpoints[1].default_touchpoints'; top-level keys like "
            "'default_touchpoints' must come before the first [table]",
        ),
        ("default_touchpoints = 0\n", "config key 'default_touchpoints' must be bool"),
        (
            '[conversion]\nurl_pattern = "(?<!x)/bedankt"\n',
            "conversion.url_pattern = '(?<!x)/bedankt' is not a valid regular expression",
        ),
    ],
)
def test_bad_touchpoint_config_is_rejected(tmp_path, text, fragment):
    """Bad [[touchpoints]] tables and conversion.touchpoint values are refused with a
    one-line message naming the table (counted from 1) and key."""
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, text))
    message = str(raised.value)
    assert fragment in message
    assert "\n" not in message


def test_a_rule_name_may_repeat_with_one_stage(tmp_path):
    """Two rules may name the same touchpoint (two URL shapes) when they agree on its stage."""
    text = (
        '[[touchpoints]]\nname = "pdp"\nmatch = "^/p/"\nstage = "orientation"\n'
        '[[touchpoints]]\nname = "pdp"\nmatch = "^/item/"\nstage = "orientation"\n'
    )
    assert [r.name for r in load_config(write(tmp_path, text)).touchpoints] == ["pdp", "pdp"]


def test_touchpoint_keys_are_documented_once():
    """documented_keys() lists the keys of a [[touchpoints]] table once, as touchpoints.<key>."""
    keys = documented_keys()
    for key in (
        "touchpoints.name",
        "touchpoints.match",
        "touchpoints.event_type",
        "touchpoints.status",
        "touchpoints.stage",
        "default_touchpoints",
        "conversion.touchpoint",
    ):
        assert keys.count(key) == 1
    assert "touchpoints" not in keys
