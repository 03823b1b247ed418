"""Settings: defaults, .env, one-line errors naming the setting, and the template and README in step."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import pytest

from tickhub.config import SETTINGS, Settings, SettingsError, env_template

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_match_the_table() -> None:
    settings = Settings.from_env(environ={}, env_file=None)
    assert settings == Settings()
    assert {f.name: f.default for f in dataclasses.fields(Settings)} == {s.field: s.default for s in SETTINGS}


def test_environment_and_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("TICKHUB_PORT=9000\nTICKHUB_HEARTBEAT=2.5\n")
    settings = Settings.from_env(
        environ={"TICKHUB_SOURCES": "a=http://127.0.0.1:1/stream, b=https://x.example/s", "TICKHUB_PORT": "9100"},
        env_file=env_file,
    )
    assert settings.port == 9100, "the environment wins over .env"
    assert settings.heartbeat == 2.5
    assert settings.sources == (("a", "http://127.0.0.1:1/stream"), ("b", "https://x.example/s"))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TICKHUB_PORT", "eighty"),
        ("TICKHUB_PORT", "70000"),
        ("TICKHUB_HEARTBEAT", "0"),
        ("TICKHUB_RING_SIZE", "-1"),
        ("TICKHUB_SOURCES", "nourl"),
        ("TICKHUB_SOURCES", "a=ftp://x"),
        ("TICKHUB_SOURCES", "a=http://x,a=http://y"),
        ("TICKHUB_SOURCES", "Bad Name=http://x"),
        ("TICKHUB_DATABASE_SCHEMA", "public; drop"),
        ("TICKHUB_LOG_LEVEL", "loud"),
        ("TICKHUB_WRITER_HIGH_WATER", "600000"),  # above half the backlog: drops while PostgreSQL is healthy
        *(("TICKHUB_RETENTION", v) for v in ("0d", "-1d", "30x", "1.5d", "30", "30D", "530000w", "999999d")),
        ("TICKHUB_ROLLUP_RETENTION", "1d"),  # rollups shorter than the ticks (here: kept for ever)
    ],
)
def test_a_bad_value_fails_with_one_line_naming_the_setting(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(environ={name: value}, env_file=None)
    message = str(info.value)
    assert message.startswith(name) and "\n" not in message


@pytest.mark.parametrize("digits", ["9" * 5000, "1" + "0" * 4999])
def test_a_retention_of_thousands_of_digits_is_refused_with_the_limit_not_pythons(digits: str) -> None:
    with pytest.raises(SettingsError, match=r"^TICKHUB_RETENTION=.* is invalid: at most 100 years") as info:
        Settings.from_env(environ={"TICKHUB_RETENTION": digits + "d"}, env_file=None)
    assert "int_max_str_digits" not in str(info.value)


def test_a_retention_with_leading_zeros_is_its_number() -> None:
    settings = Settings.from_env(environ={"TICKHUB_RETENTION": "0" * 5000 + "30d"}, env_file=None)
    assert settings.retention == timedelta(days=30)


def test_retentions_read_as_spans_and_rollups_outlive_ticks() -> None:
    settings = Settings.from_env(
        environ={"TICKHUB_RETENTION": "2w", "TICKHUB_ROLLUP_RETENTION": "36500d"}, env_file=None
    )
    assert settings.retention == timedelta(days=14) and settings.rollup_retention == timedelta(days=36500)
    with pytest.raises(SettingsError, match="TICKHUB_ROLLUP_RETENTION must be at least TICKHUB_RETENTION"):
        Settings.from_env(environ={"TICKHUB_RETENTION": "2d", "TICKHUB_ROLLUP_RETENTION": "1d"}, env_file=None)


def test_env_template_lists_every_setting_with_its_default() -> None:
    assert (ROOT / ".env_template").read_text() == env_template()


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [s.name for s in SETTINGS if f"`{s.name}`" not in readme]
    assert not missing, f"README lacks {missing}"


@pytest.mark.parametrize("mode", ["tuned", "python"])
def test_the_collector_setting_of_a_started_hub_process(mode: str) -> None:
    """``tuned`` freezes what start-up left alive and raises the young threshold; ``python`` changes nothing.
    In a process of its own: freezing is for the whole interpreter."""
    import subprocess
    import sys

    code = (
        "import gc; from tickhub import gc_tuning; before = gc.get_threshold(); "
        f"gc_tuning.apply({mode!r}); print(gc.get_freeze_count(), *before, *gc.get_threshold())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout
    frozen, *thresholds = map(int, out.split())
    before, after = thresholds[:3], thresholds[3:]
    if mode == "tuned":
        assert frozen > 1000, "the modules and objects alive after start-up"
        assert after == [10_000, *before[1:]]
    else:
        assert frozen == 0 and after == before
