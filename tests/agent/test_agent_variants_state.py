"""The device's state as variant policies read it (agent/variants/state.py), from folders laid
out as /sys/class/power_supply, /sys/class/thermal, /proc/meminfo and /proc/loadavg: missing or
garbled files are unknown figures, never errors; and the hysteretic choice over readings."""

from __future__ import annotations

from pathlib import Path

import pytest

from satchel.agent.config import load_agent_config
from satchel.agent.variants.select import StateSelector
from satchel.agent.variants.settings import VariantSettings
from satchel.agent.variants.state import SysfsState
from satchel.bundles.errors import ConfigError
from satchel.bundles.variants import Conditions, Policy, Reading, Rule


def _settings(root: Path) -> VariantSettings:
    return VariantSettings(power_supply_dir=str(root / "power_supply"),
                           thermal_dir=str(root / "thermal"), meminfo_file=str(root / "meminfo"),
                           loadavg_file=str(root / "loadavg"))


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_every_figure_is_read_from_its_file(tmp_path: Path) -> None:
    _write(tmp_path / "power_supply/BAT0/type", "Battery\n")
    _write(tmp_path / "power_supply/BAT0/capacity", "57\n")
    _write(tmp_path / "power_supply/BAT0/status", "Discharging\n")
    _write(tmp_path / "power_supply/BAT1/type", "Battery\n")
    _write(tmp_path / "power_supply/BAT1/capacity", "91\n")
    _write(tmp_path / "power_supply/AC/type", "Mains\n")
    _write(tmp_path / "power_supply/AC/online", "1\n")
    _write(tmp_path / "thermal/thermal_zone0/temp", "48000\n")
    _write(tmp_path / "thermal/thermal_zone1/temp", "81500\n")
    _write(tmp_path / "meminfo", "MemTotal: 1000000 kB\nMemAvailable:  204800 kB\n")
    _write(tmp_path / "loadavg", "3.00 2.00 1.00 2/300 12345\n")
    r = SysfsState(_settings(tmp_path), cores=4).read()
    assert r == Reading(battery_percent=57.0, charging=True, temperature_c=81.5, load=0.75,
                        memory_free_mb=200.0)


def test_missing_and_garbled_files_are_unknown(tmp_path: Path) -> None:
    assert SysfsState(_settings(tmp_path)).read() == Reading()
    _write(tmp_path / "power_supply/BAT0/type", "Battery\n")
    _write(tmp_path / "power_supply/BAT0/capacity", "lots\n")
    _write(tmp_path / "thermal/thermal_zone0/temp", "\n")
    _write(tmp_path / "meminfo", "MemAvailable: many kB\n")
    _write(tmp_path / "loadavg", "")
    (tmp_path / "power_supply/BAT0/status").mkdir()  # a folder where a file should be
    assert SysfsState(_settings(tmp_path)).read() == Reading()


def test_a_full_battery_counts_as_charging(tmp_path: Path) -> None:
    _write(tmp_path / "power_supply/BAT0/type", "Battery\n")
    _write(tmp_path / "power_supply/BAT0/status", "Full\n")
    assert SysfsState(_settings(tmp_path)).read().charging is True


POLICY = Policy(rules=(Rule(Conditions(battery_below=30), "lite", Conditions(battery_above=80)),
                       Rule(Conditions(temperature_above=75), "int8")), dwell_s=10)
ALL = {"full", "int8", "lite"}


def test_selection_is_hysteretic_and_dwells() -> None:
    s = StateSelector(POLICY, "full")
    assert s.choose(Reading(battery_percent=20), 0.0, ALL).variant == "lite"
    assert s.choose(Reading(battery_percent=85), 5.0, ALL).variant == "lite"  # must dwell
    assert s.choose(Reading(battery_percent=50), 20.0, ALL).variant == "lite"  # in the band
    assert s.choose(Reading(battery_percent=85), 21.0, ALL).variant == "full"
    assert s.choose(Reading(battery_percent=85, temperature_c=90), 40.0, ALL).variant == "int8"


def test_a_rule_whose_variant_is_not_usable_is_skipped() -> None:
    s = StateSelector(POLICY, "full")
    hot_and_low = Reading(battery_percent=20, temperature_c=90)
    assert s.choose(hot_and_low, 0.0, {"full", "int8"}).variant == "int8"
    assert s.choose(hot_and_low, 100.0, {"full"}).variant == "full"


def test_the_settings_file_sets_the_variants_table_and_refuses_a_bad_policy(
    tmp_path: Path,
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[variants]\npoll_s = 0.5\npower_supply_dir = "/srv/ps"\n'
                      'policy = \'{"rules": [{"when": {"load_above": 0.9}, "use": "lite"}]}\'\n')
    settings = load_agent_config(config, environ={}).variants
    assert settings.poll_s == 0.5 and settings.power_supply_dir == "/srv/ps"
    assert settings.policy.startswith('{"rules"')
    config.write_text('[variants]\npolicy = \'{"rules": [{"when": {"cpu": 1}, "use": "x"}]}\'\n')
    with pytest.raises(ConfigError, match="unexpected field 'cpu'") as e:
        load_agent_config(config, environ={})
    assert "\n" not in str(e.value)
    config.write_text("[variants]\npoll_s = 0\n")
    with pytest.raises(ConfigError, match="poll_s"):
        load_agent_config(config, environ={})
