"""Settings (SPEC "Settings", docs/configuration.md): sources, profiles, values and errors."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import cas
from cas.errors import ConfigError, UsageError
from cas.settings import KEYS, Config, Settings, load_config
from cas.storage.layout import Layout
from cas.values import (
    MAX_DURATION,
    MAX_SIZE,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)

from tests.conftest import run_cas, run_cas_process
from tests.strategies import byte_sizes, durations

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "configuration.md"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test without the CAS_* variables of whoever runs the suite."""
    import os

    for variable in list(os.environ):
        if variable.startswith("CAS_"):
            monkeypatch.delenv(variable)


# -- precedence ------------------------------------------------------------------------------------

#: Every source, earliest first.
LEVELS = ["default", "root", "root profile", "file", "file profile", "environment", "keyword"]


def arrange(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at: dict[str, str]) -> Config:
    """Set ``max_cache_size`` at each level of ``at`` (level -> value) and load with profile p.

    Both files always exist and define ``[profile.p]``, maybe empty, so only values differ.
    """
    root = tmp_path / "store"
    root.mkdir(exist_ok=True)
    extra = tmp_path / "extra.toml"
    for path, top, profile in ((Layout(root).config, "root", "root profile"),
                               (extra, "file", "file profile")):  # fmt: skip
        lines = [f'max_cache_size = "{at[top]}"'] if top in at else []
        lines.append("[profile.p]")
        lines += [f'max_cache_size = "{at[profile]}"'] if profile in at else []
        path.write_text("\n".join(lines) + "\n")
    if "environment" in at:
        monkeypatch.setenv("CAS_MAX_CACHE_SIZE", at["environment"])
    overrides = {"max_cache_size": at["keyword"]} if "keyword" in at else {}
    return load_config(root, overrides, config_file=extra, profile="p")


def label(tmp_path: Path, level: str) -> str:
    """The source label ``cas config`` shows for a level."""
    root_file, extra = Layout(tmp_path / "store").config, tmp_path / "extra.toml"
    return {
        "default": "default",
        "root": str(root_file),
        "root profile": f"{root_file} [profile.p]",
        "file": str(extra),
        "file profile": f"{extra} [profile.p]",
        "environment": "environment variable CAS_MAX_CACHE_SIZE",
        "keyword": "keyword argument",
    }[level]


@pytest.mark.parametrize(
    ("lower", "higher"), list(itertools.combinations(LEVELS, 2)), ids="{0[0]}<{0[1]}".format
)
def test_later_source_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lower: str, higher: str
) -> None:
    """Of any two sources that set the same key, the later one wins and is named as the source."""
    values = {level: f"{index + 1}MiB" for index, level in enumerate(LEVELS)}
    at = {level: values[level] for level in (lower, higher) if level != "default"}
    config = arrange(tmp_path, monkeypatch, at)
    expected = Settings().max_cache_size if higher == "default" else parse_size(values[higher])
    assert config.settings.max_cache_size == expected
    assert config.sources["max_cache_size"] == label(tmp_path, higher)


def test_all_sources_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With every source set, each removal from the top hands the value to the next one down."""
    values = {level: f"{index + 1}MiB" for index, level in enumerate(LEVELS)}
    for top in range(len(LEVELS) - 1, -1, -1):
        monkeypatch.delenv("CAS_MAX_CACHE_SIZE", raising=False)
        at = {level: values[level] for level in LEVELS[1 : top + 1]}
        config = arrange(tmp_path, monkeypatch, at)
        assert config.sources["max_cache_size"] == label(tmp_path, LEVELS[top])


#: For each key: a TOML literal, an environment string, a keyword value, and what all three mean.
SAMPLES: dict[str, tuple[str, str, Any, Any]] = {
    "auto_download": ("false", "false", False, False),
    "max_cache_size": ('"3GiB"', "3GiB", "3GiB", 3 * 2**30),
    "low_water": ("0.5", "0.5", 0.5, 0.5),
    "max_age": ('"7d"', "7d", "7d", 7 * 86400.0),
    "cleanup_interval": ('"2h"', "2h", "2h", 7200.0),
    "grace_period": ('"90s"', "90s", 90, 90.0),
    "download_timeout": ("45", "45", 45.0, 45.0),
    "retries": ("2", "2", 2, 2),
    "connections": ("3", "3", 3, 3),
    "parallel_min_size": ('"4MiB"', "4MiB", "4MiB", 4 * 2**20),
    "lease_ttl": ('"30m"', "30m", "30m", 1800.0),
    "remote": ('"s3://bucket/pre/fix"', "s3://bucket/pre/fix", "s3://bucket/pre/fix",
               "s3://bucket/pre/fix"),
    "remote_push": ("false", "no", False, False),
    "shared": ("true", "yes", True, True),
    "offline": ("true", "1", True, True),
    "durable": ("false", "no", False, False),
    "allow_network_fs": ("true", "1", True, True),
    "headers": ('{X-Team = "ci", Authorization = "Bearer ${TOKEN}"}',
                "X-Team: ci\nAuthorization: Bearer ${TOKEN}",
                {"X-Team": "ci", "Authorization": "Bearer ${TOKEN}"},
                (("X-Team", "ci"), ("Authorization", "Bearer ${TOKEN}"))),
}  # fmt: skip


def test_samples_cover_every_key() -> None:
    """The per-key samples below name every setting, so no key escapes the source tests."""
    assert set(SAMPLES) == set(KEYS)
    for key, (_, _, _, meaning) in SAMPLES.items():
        assert getattr(Settings(), key) != meaning, f"sample of {key} equals its default"


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("level", LEVELS[1:])
def test_every_key_from_every_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str, level: str
) -> None:
    """Every key can be set from every source, meaning the same from each."""
    literal, text, keyword, meaning = SAMPLES[key]
    root = tmp_path / "store"
    root.mkdir()
    extra = tmp_path / "extra.toml"
    files = {"root": Layout(root).config, "file": extra}
    for where, path in files.items():
        body = f"{key} = {literal}\n" if level == where else ""
        body += "[profile.p]\n" + (f"{key} = {literal}\n" if level == f"{where} profile" else "")
        path.write_text(body)
    if level == "environment":
        monkeypatch.setenv(f"CAS_{key.upper()}", text)
    overrides = {key: keyword} if level == "keyword" else {}
    config = load_config(root, overrides, config_file=extra, profile="p")
    assert getattr(config.settings, key) == meaning
    assert [k for k, source in config.sources.items() if source != "default"] == [key]


def test_config_flag_beats_cas_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--config`` (the ``config_file`` argument) is read instead of CAS_CONFIG, not as well."""
    by_env, by_flag = tmp_path / "env.toml", tmp_path / "flag.toml"
    by_env.write_text("retries = 1\nlease_ttl = '2h'\n")
    by_flag.write_text("retries = 2\n")
    monkeypatch.setenv("CAS_CONFIG", str(by_env))
    assert load_config(tmp_path).settings.retries == 1
    config = load_config(tmp_path, config_file=by_flag)
    assert (config.settings.retries, config.settings.lease_ttl) == (2, 3600.0)
    assert config.files == (by_flag,)


def test_profile_flag_beats_cas_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--profile`` (the ``profile`` argument) chooses instead of CAS_PROFILE."""
    Layout(tmp_path).config.write_text("[profile.a]\nretries = 1\n[profile.b]\nretries = 2\n")
    monkeypatch.setenv("CAS_PROFILE", "a")
    assert load_config(tmp_path).settings.retries == 1
    assert load_config(tmp_path).profile_source == "environment variable CAS_PROFILE"
    config = load_config(tmp_path, profile="b")
    assert (config.settings.retries, config.profile, config.profile_source) == (
        2, "b", "keyword argument",
    )  # fmt: skip


def test_store_open_reaches_the_loader(tmp_path: Path) -> None:
    """``Store.open`` passes config_file, profile and keyword settings to the one loader."""
    extra = tmp_path / "extra.toml"
    extra.write_text("[profile.ci]\nmax_cache_size = '2GB'\nretries = 1\n")
    with cas.Store.open(tmp_path / "store", config_file=extra, profile="ci", retries=7) as store:
        assert store.settings.max_cache_size == 2 * 10**9
        assert store.settings.retries == 7


# -- profiles --------------------------------------------------------------------------------------

PROFILES = """\
max_cache_size = "1GiB"
retries = 4

[profile.dev]
max_cache_size = "5GB"

[profile.ci]
max_cache_size = "2GB"
retries = 1

[profile.prod]
auto_download = false
"""


@pytest.mark.parametrize(
    ("profile", "size", "retries", "auto"),
    [(None, 2**30, 4, True), ("dev", 5 * 10**9, 4, True), ("ci", 2 * 10**9, 1, True),
     ("prod", 2**30, 4, False)],
)  # fmt: skip
def test_each_profile_overrides_its_file(
    tmp_path: Path, profile: str | None, size: int, retries: int, auto: bool
) -> None:
    """A chosen profile overrides the top level of its file, key by key; the rest stays."""
    Layout(tmp_path).config.write_text(PROFILES)
    settings = load_config(tmp_path, profile=profile).settings
    assert (settings.max_cache_size, settings.retries, settings.auto_download) == (
        size, retries, auto,
    )  # fmt: skip


def test_later_file_top_level_beats_earlier_profile(tmp_path: Path) -> None:
    """The --config file's top level overrides a profile of config.toml (files in order)."""
    Layout(tmp_path).config.write_text("[profile.ci]\nretries = 1\nlease_ttl = '2h'\n")
    extra = tmp_path / "extra.toml"
    extra.write_text("retries = 9\n")
    config = load_config(tmp_path, config_file=extra, profile="ci")
    assert (config.settings.retries, config.settings.lease_ttl) == (9, 7200.0)


def test_profile_defined_only_in_the_later_file(tmp_path: Path) -> None:
    """A profile needs to exist in only one of the files."""
    Layout(tmp_path).config.write_text("retries = 1\n")
    extra = tmp_path / "extra.toml"
    extra.write_text("[profile.ci]\nretries = 2\n")
    assert load_config(tmp_path, config_file=extra, profile="ci").settings.retries == 2


@pytest.mark.parametrize("with_files", [True, False])
def test_undefined_profile_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_files: bool
) -> None:
    """A profile chosen but defined in no file is a ConfigError naming it and who chose it."""
    if with_files:
        Layout(tmp_path).config.write_text(PROFILES)
    monkeypatch.setenv("CAS_PROFILE", "staging")
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path)
    assert "'staging'" in str(raised.value)
    assert "CAS_PROFILE" in str(raised.value)


def test_unchosen_profiles_are_validated_too(tmp_path: Path) -> None:
    """A bad value in a profile not chosen is still an error, found on every machine."""
    Layout(tmp_path).config.write_text("[profile.prod]\nmax_cache_size = '10XB'\n")
    with pytest.raises(ConfigError, match=r"\[profile\.prod\]: max_cache_size = \"10XB\""):
        load_config(tmp_path)


# -- errors ----------------------------------------------------------------------------------------

#: (what, key, TOML literal, text the message must show): each one a bad setting.
BAD = [
    ("bad unit", "max_cache_size", '"5XB"', "5XB"),
    ("negative size", "max_cache_size", '"-5GB"', "-5GB"),
    ("negative integer size", "max_cache_size", "-5", "-5"),
    ("bad duration unit", "max_age", '"3 fortnights"', "3 fortnights"),
    ("low_water zero", "low_water", "0", "0"),
    ("low_water above one", "low_water", "1.5", "1.5"),
    ("low_water negative", "low_water", "-0.25", "-0.25"),
    ("not a boolean", "auto_download", '"maybe"', "maybe"),
    ("no connections", "connections", "0", "0"),
    ("too many connections", "connections", "65", "65"),
    ("fractional connections", "connections", "2.5", "2.5"),
    ("negative parallel size", "parallel_min_size", '"-1MiB"', "-1MiB"),
    ("unknown key", "max_cache", '"5GB"', "5GB"),
]
PLACES = ["root", "root profile", "file", "file profile", "environment", "keyword"]


@pytest.mark.parametrize(
    ("place", "key", "literal", "shown"),
    [
        pytest.param(place, key, literal, shown, id=f"{what}-{place}")
        for (what, key, literal, shown), place in itertools.product(BAD, PLACES)
        # An unknown CAS_ variable is a warning instead (test_unknown_variable_warns).
        if not (what == "unknown key" and place == "environment")
    ],
)
def test_bad_setting_names_source_key_and_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, place: str, key: str, literal: str, shown: str
) -> None:
    """A bad value or unknown key is a one-line ConfigError naming its source, key and value."""
    root = tmp_path / "store"
    root.mkdir()
    extra = tmp_path / "extra.toml"
    files = {"root": Layout(root).config, "file": extra}
    for where, path in files.items():
        body = f"{key} = {literal}\n" if place == where else ""
        body += "[profile.p]\n" + (f"{key} = {literal}\n" if place == f"{where} profile" else "")
        path.write_text(body)
    if place == "environment":
        monkeypatch.setenv(f"CAS_{key.upper()}", shown)
    value = tomllib.loads(f"v = {literal}")["v"]
    overrides = {key: value} if place == "keyword" else {}
    with pytest.raises(ConfigError) as raised:
        load_config(root, overrides, config_file=extra, profile="p")
    message = str(raised.value)
    source = {
        "root": str(files["root"]),
        "root profile": f"{files['root']} [profile.p]",
        "file": str(extra),
        "file profile": f"{extra} [profile.p]",
        "environment": f"CAS_{key.upper()}",
        "keyword": "keyword argument",
    }[place]
    assert source in message
    assert key in message
    assert shown in message
    assert "\n" not in message


@pytest.mark.parametrize("which", ["root", "file"])
def test_bad_toml_names_the_file(tmp_path: Path, which: str) -> None:
    """A file that is not TOML is a ConfigError naming the file and the place of the mistake."""
    path = Layout(tmp_path).config if which == "root" else tmp_path / "extra.toml"
    path.write_text("max_cache_size = 5GB\n")  # unquoted: not TOML
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path, config_file=None if which == "root" else path)
    assert str(path) in str(raised.value)
    assert "line 1" in str(raised.value)


def test_missing_config_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CAS_CONFIG file that does not exist is an error naming it and the variable."""
    monkeypatch.setenv("CAS_CONFIG", str(tmp_path / "nowhere.toml"))
    with pytest.raises(ConfigError, match=r"nowhere\.toml \(from environment variable CAS_CONFIG"):
        load_config(tmp_path)


def test_profile_must_be_a_table(tmp_path: Path) -> None:
    """``profile = "ci"`` at the top level is an error: profiles are [profile.NAME] tables."""
    Layout(tmp_path).config.write_text('profile = "ci"\n')
    with pytest.raises(ConfigError, match=r'profile = "ci"'):
        load_config(tmp_path)


def test_unknown_variable_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A CAS_ variable that names no setting is logged as a warning, not silently dropped."""
    monkeypatch.setenv("CAS_MAX_CACHESIZE", "1GB")
    with caplog.at_level(logging.WARNING, logger="cas"):
        settings = load_config(tmp_path).settings
    assert settings == Settings()
    assert "CAS_MAX_CACHESIZE" in caplog.text


def test_settings_validate_and_freeze() -> None:
    """Settings normalise values on construction, refuse bad ones, and cannot be changed."""
    assert Settings(max_cache_size="5GB", max_age="7d").max_cache_size == 5 * 10**9  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="low_water"):
        Settings(low_water=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().retries = 3  # type: ignore[misc]


# -- values ----------------------------------------------------------------------------------------


@given(byte_sizes)
def test_size_round_trip(size: int) -> None:
    """Every size in bytes is spelled exactly by format_size and read back by parse_size."""
    assert parse_size(format_size(size)) == size


@given(durations)
def test_duration_round_trip(seconds: float) -> None:
    """Every duration is spelled exactly by format_duration and read back by parse_duration."""
    assert parse_duration(format_duration(seconds)) == seconds


UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KiB": 2**10,
         "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "K": 2**10, "G": 2**30}  # fmt: skip


@given(st.integers(0, 10**6), st.sampled_from(sorted(UNITS)), st.booleans(), st.booleans())
def test_size_units(number: int, unit: str, lower: bool, space: bool) -> None:
    """A number with a size unit, in any case and with or without a space, is exact bytes."""
    text = f"{number}{' ' if space else ''}{unit.lower() if lower else unit}"
    assert parse_size(text) == number * UNITS[unit]


@given(st.integers(0, 10**6), st.sampled_from([("s", 1), ("m", 60), ("h", 3600), ("d", 86400),
                                               ("w", 604800)]))  # fmt: skip
def test_duration_units(number: int, unit: tuple[str, int]) -> None:
    """A number with a duration unit is that many seconds, minutes, hours, days or weeks."""
    assert parse_duration(f"{number}{unit[0]}") == number * unit[1]


@given(st.integers(1, 10**9), st.sampled_from(["", "B", "GiB"]), st.sampled_from(["", "s", "h"]))
def test_negative_quantities_are_refused(number: int, size_unit: str, time_unit: str) -> None:
    """No size or duration may be negative, however written."""
    for parse, text in ((parse_size, f"-{number}{size_unit}"),
                        (parse_duration, f"-{number}{time_unit}")):  # fmt: skip
        for value in (text, -number):
            with pytest.raises(ValueError, match="cannot be negative"):
                parse(value)


# -- the documented configurations -----------------------------------------------------------------


def documented_config() -> str:
    """The TOML block of docs/configuration.md, which the README shows too."""
    blocks = re.findall(r"```toml\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert len(blocks) == 1, "docs/configuration.md should hold exactly one TOML block"
    readme = re.findall(r"```toml\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    assert blocks[0] in readme, "README.md should show the configurations of the docs"
    return str(blocks[0])


@pytest.fixture
def documented_root(tmp_path: Path) -> Iterator[Path]:
    """A store root whose config.toml is the one docs/configuration.md shows."""
    Layout(tmp_path).config.write_text(documented_config())
    yield tmp_path


@pytest.mark.parametrize(
    ("profile", "size", "interval", "timeout", "auto"),
    [("dev", 5 * 10**9, 12 * 3600, 300, True), ("ci", 2 * 10**9, 3600, 120, True),
     ("prod", 10 * 10**9, 24 * 3600, 600, False)],
)  # fmt: skip
def test_documented_configurations_load(
    documented_root: Path, profile: str, size: int, interval: int, timeout: int, auto: bool
) -> None:
    """Each ready configuration of docs/configuration.md loads with the values it promises."""
    settings = load_config(documented_root, profile=profile).settings
    assert settings.max_cache_size == size
    assert settings.cleanup_interval == interval
    assert settings.download_timeout == timeout
    assert settings.auto_download is auto


def test_documented_table_matches_the_code() -> None:
    """The settings table of docs/configuration.md lists every key with its true default."""
    rows = re.findall(r"^\| `(\w+)` \| (.+?) \|", DOCS.read_text(), flags=re.M)
    documented = {key: default.strip("`") for key, default in rows}
    assert list(documented) == list(KEYS)
    defaults = Settings()
    for key, text in documented.items():
        raw: Any = None if text == "none" else tomllib.loads(f"v = {text}")["v"] if text in (
            "true", "false") else text  # fmt: skip
        assert Settings(**{key: raw}) == defaults, key


# -- the command line ------------------------------------------------------------------------------


def test_cas_config_json_shows_sources(tmp_path: Path) -> None:
    """``cas config --json`` gives each effective value and the file, variable or default of it."""
    root = tmp_path / "store"
    root.mkdir()
    Layout(root).config.write_text("retries = 1\n[profile.ci]\nmax_age = '2d'\n")
    done = run_cas("--profile", "ci", "config", "--json", root=root,
                   env={"CAS_LEASE_TTL": "10m"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    settings = document["settings"]
    assert settings["retries"] == {"value": 1, "text": "1", "source": str(Layout(root).config)}
    assert settings["max_age"]["value"] == 2 * 86400
    assert settings["max_age"]["source"] == f"{Layout(root).config} [profile.ci]"
    assert settings["lease_ttl"]["source"] == "environment variable CAS_LEASE_TTL"
    assert settings["max_cache_size"] == {
        "value": 10 * 2**30, "text": "10GiB", "source": "default",
    }  # fmt: skip
    assert document["root"] == {"value": str(root), "source": "--root"}
    assert document["profile"] == {"value": "ci", "source": "command line"}
    assert set(settings) == set(KEYS)


def test_cas_config_table(tmp_path: Path) -> None:
    """``cas config`` prints one line per setting with its value and source."""
    done = run_cas("config", root=tmp_path, env={"CAS_RETRIES": "3"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert any(re.fullmatch(r"retries\s+3\s+environment variable CAS_RETRIES", x) for x in lines)
    assert any(re.fullmatch(r"max_cache_size\s+10GiB\s+default", x) for x in lines)


def test_cli_bad_setting_is_one_line_and_status_2(tmp_path: Path) -> None:
    """A bad --config file stops any command with one ``cas: error:`` line and usage status 2."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[profile.ci]\nlow_water = 1.5\n")
    done = run_cas("--config", str(bad), "--profile", "ci", "ls", root=tmp_path / "store")
    assert done.returncode == 2
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cas: error:")
    assert str(bad) in lines[0] and "low_water" in lines[0] and "1.5" in lines[0]


def test_cli_profile_reaches_the_store(tmp_path: Path) -> None:
    """``cas --profile`` and ``--config`` choose the settings of the store every command opens."""
    extra = tmp_path / "extra.toml"
    extra.write_text(documented_config())
    done = run_cas("--config", str(extra), "--profile", "prod", "stats", "--json",
                   root=tmp_path / "store")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["water_marks"]["high"] == 10 * 10**9


def test_only_settings_reads_the_environment() -> None:
    """No module but cas/settings.py reads the environment, and TOML only settings and manifests."""
    environment = re.compile(r"os\.environ|getenv\(")
    toml = re.compile(r"\btomllib\b")
    sources = {path.name: path.read_text() for path in (REPO / "cas").glob("*.py")}
    assert [name for name, text in sources.items() if environment.search(text)] == ["settings.py"]
    assert {name for name, text in sources.items() if toml.search(text)} <= {
        "settings.py", "manifest.py",
    }  # fmt: skip


# -- value ranges ----------------------------------------------------------------------------------

#: Odd spellings of numbers: overflow, not-a-number, signed zero, huge exponents and digits.
odd_numbers = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "NaN", "-0", "+0", "-0.0", "1e400", "1e300", "1e-400",
                     "1e999999999", "1e99999999999999999999999999", "9" * 5000, ".5", "1.",
                     "-1e-9", "0x10", "1_000", "١٢", "1e", "e5", "--1", "+1"]),
    st.integers(-(10**500), 10**500).map(str),
    st.floats().map(repr),
    st.builds("{}e{}".format, st.integers(-99, 99), st.integers(-(10**12), 10**12)),
    st.text(alphabet="0123456789.eE+-_ ", max_size=12),
)
odd_units = st.sampled_from(["", "s", "m", "h", "d", "w", "b", "KiB", "GB", "T", "x", "µs"])


@given(st.one_of(st.builds("{}{}".format, odd_numbers, odd_units), st.integers(-(10**500),
                 10**500), st.floats(), st.none(), st.booleans()))  # fmt: skip
def test_odd_quantities_are_values_or_usage_errors(value: object) -> None:
    """Any spelling is a finite size or duration within its range, or a UsageError: never an
    OverflowError, a float infinity or nan, or an exception from deeper down."""
    for parse, most in ((parse_size, MAX_SIZE), (parse_duration, MAX_DURATION)):
        try:
            parsed = parse(value)
        except UsageError:
            continue
        assert math.isfinite(parsed) and 0 <= parsed <= most, (value, parsed)
        assert not (isinstance(parsed, float) and math.copysign(1, parsed) < 0)  # no -0.0


@given(st.sampled_from(KEYS), odd_numbers, odd_units)
def test_odd_values_of_every_setting_are_config_errors(key: str, number: str, unit: str) -> None:
    """Every setting takes an odd value either as a sane value or with a ConfigError naming the
    key and the value."""
    text = f"{number}{unit}"
    try:
        value = getattr(Settings(**{key: text}), key)
    except ConfigError as error:
        assert key in str(error) and "\n" not in str(error)
        return
    if isinstance(value, float):
        assert math.isfinite(value)


@pytest.mark.parametrize(
    ("key", "literal", "mentions"),
    [
        ("download_timeout", '"1e300d"', "at most"),
        ("lease_ttl", '"1e300d"', "at most"),
        ("lease_ttl", '"0.1s"', "at least"),
        ("max_age", '"1e400"', "at most"),
        ("grace_period", "1e300", "at most"),
        ("max_cache_size", '"1e400"', "at most"),
        ("max_cache_size", "18446744073709551616", "at most"),
        ("cleanup_interval", '"0s"', "at least"),
        ("cleanup_interval", '"1e300d"', "at most"),
        ("retries", "1000000", "from 0 to"),
        ("low_water", "nan", "(0, 1]"),
        ("download_timeout", "inf", "finite"),
    ],
)
def test_out_of_range_settings_are_config_errors(
    tmp_path: Path, key: str, literal: str, mentions: str
) -> None:
    """A value outside a setting's documented range is a ConfigError naming file, key and value."""
    Layout(tmp_path).config.write_text(f"{key} = {literal}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path)
    message = str(raised.value)
    assert str(Layout(tmp_path).config) in message and key in message and mentions in message


@pytest.mark.parametrize(
    ("key", "literal", "args"),
    [
        ("download_timeout", '"1e300d"', ["fetch", "http://127.0.0.1:9/x"]),
        ("lease_ttl", '"1e300d"', ["lease", "kept", "--", "true"]),
        ("max_cache_size", '"1e400"', ["put", "-"]),
        ("cleanup_interval", '"0s"', ["maintain"]),
    ],
)
def test_cli_out_of_range_setting_is_one_line(
    tmp_path: Path, key: str, literal: str, args: list[str]
) -> None:
    """Out-of-range settings stop a command with one line and status 2 before anything runs."""
    root = tmp_path / "store"
    assert run_cas("put", "-", "--name", "kept", root=root, input=b"kept").returncode == 0
    Layout(root).config.write_text(f"{key} = {literal}\n", encoding="utf-8")
    done = run_cas_process(*args, root=root, input=b"new")
    lines = done.stderr.decode().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("cas: error:"), lines
    assert key in lines[0] and str(Layout(root).config) in lines[0]


def test_cli_non_utf8_config_is_one_line(tmp_path: Path) -> None:
    """A config.toml that is not UTF-8 text is one error line naming the file, status 2."""
    root = tmp_path / "store"
    root.mkdir()
    Layout(root).config.write_bytes(b"max_age = \"7d\"\n# caf\xe9\n")
    done = run_cas("ls", root=root)
    lines = done.stderr.decode().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "UTF-8" in lines[0] and str(Layout(root).config) in lines[0]


@pytest.mark.parametrize("interval", ["0s", "0", "0.5s", "1e300d", "-1s", "nan"])
def test_maintain_interval_out_of_range(tmp_path: Path, interval: str) -> None:
    """``cas maintain --interval`` below 1 s or beyond 100 years is one line and status 2 (it
    would otherwise clean in a tight loop, or crash)."""
    done = run_cas_process("maintain", "--interval", interval, root=tmp_path / "store")
    lines = done.stderr.decode().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "--interval" in lines[0], lines


@pytest.mark.parametrize("interval", [0, 0.5, float("inf"), 1e300, "0s"])
def test_maintenance_interval_is_checked(store: cas.Store, interval: object) -> None:
    """``Store.maintenance(interval)`` refuses what ``cleanup_interval`` refuses."""
    with pytest.raises(UsageError, match="interval"), store.maintenance(interval):  # type: ignore[arg-type]
        pass
