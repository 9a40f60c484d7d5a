"""The systemd units that ship in the wheel: `systemd-analyze verify` accepts them (with the
accelerator drop-in too), their service users and state directories come from the shipped
sysusers.d and tmpfiles.d entries, and the README's install recipe starts what they run.

`systemd-analyze verify` checks syntax, dependencies and that ExecStart= is executable, not
that User= exists; so it runs against a scratch root holding the system's units and stand-ins
for the venv's scripts, and the users are checked by running `systemd-sysusers --root` and
`systemd-tmpfiles --root` on the shipped files."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
AGENT = ROOT / "agent" / "systemd"
MANAGER = ROOT / "manager" / "systemd"
UNITS = {"satchel-agent.service": AGENT, "satchel-manager.service": MANAGER}
SYSTEM_UNITS = Path("/usr/lib/systemd/system")

needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or not SYSTEM_UNITS.is_dir(),
    reason="systemd-analyze not installed (Debian package `systemd`, as .ci/run installs it)",
)


def _service(unit: str) -> dict[str, list[str]]:
    """The [Service] settings of a shipped unit, every value of repeated keys kept."""
    settings: dict[str, list[str]] = {}
    section = None
    for line in (UNITS[unit] / unit).read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def _exec_start(unit: str) -> list[str]:
    (command,) = _service(unit)["ExecStart"]
    return command.split()


def _scratch_root(tmp: Path) -> Path:
    root = tmp / "root"
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for unit, folder in UNITS.items():
        shutil.copy(folder / unit, units / unit)
        script = root / _exec_start(unit)[0].lstrip("/")
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text("#!/bin/sh\n")
        script.chmod(0o755)
    dropins = units / "satchel-agent.service.d"
    dropins.mkdir()
    shutil.copy(AGENT / "satchel-agent.accelerator.conf", dropins / "accelerator.conf")
    return root


@needs_systemd
@pytest.mark.parametrize("unit", sorted(UNITS))
def test_systemd_analyze_verify_accepts_the_unit_without_a_warning(
    unit: str, tmp_path: Path,
) -> None:
    root = _scratch_root(tmp_path)
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}", unit],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@needs_systemd
def test_systemd_analyze_verify_refuses_a_unit_whose_command_is_missing(tmp_path: Path) -> None:
    root = _scratch_root(tmp_path)
    (root / "opt/satchel/bin/satchel-agent").unlink()
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}",
                           "satchel-agent.service"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "/opt/satchel/bin/satchel-agent" in done.stderr


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None
                    or shutil.which("systemd-tmpfiles") is None,
                    reason="systemd-sysusers/-tmpfiles not installed (Debian package `systemd`)")
@pytest.mark.parametrize("unit", sorted(UNITS))
def test_service_user_and_state_directory_come_from_sysusers_and_tmpfiles(
    unit: str, tmp_path: Path,
) -> None:
    folder, stem = UNITS[unit], unit.removesuffix(".service")
    (tmp_path / "etc").mkdir()  # where sysusers writes passwd and group
    subprocess.run(["systemd-sysusers", f"--root={tmp_path}",
                    str(folder / f"{stem}.sysusers.conf")],
                   check=True, capture_output=True, timeout=60)
    subprocess.run(["systemd-tmpfiles", f"--root={tmp_path}", "--create",
                    str(folder / f"{stem}.tmpfiles.conf")], check=True, capture_output=True,
                   timeout=60)
    service = _service(unit)
    (user,), (group,), (state,) = service["User"], service["Group"], service["StateDirectory"]
    users = {line.split(":")[0]: line.split(":") for line in
             (tmp_path / "etc/passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in
              (tmp_path / "etc/group").read_text().splitlines()}
    assert user in users and group in groups
    home = users[user][5]
    assert home == f"/var/lib/{state}"
    made = (tmp_path / home.lstrip("/")).stat()
    assert (made.st_uid, made.st_gid) == (int(users[user][2]), int(groups[group][2]))
    assert oct(made.st_mode & 0o777) == oct(int(service["StateDirectoryMode"][0], 8))


@pytest.mark.parametrize("unit,option", [("satchel-agent.service", "--state-dir"),
                                          ("satchel-manager.service", "--data-dir")])
def test_units_keep_state_in_the_state_directory_and_read_an_environment_file(
    unit: str, option: str,
) -> None:
    service = _service(unit)
    command = _exec_start(unit)
    assert command[command.index(option) + 1] == "${STATE_DIRECTORY}"
    (environment_file,) = service["EnvironmentFile"]
    assert re.fullmatch(r"-/etc/default/satchel(-agent)?", environment_file)


def test_the_agent_unit_waits_for_ready_and_feeds_the_watchdog() -> None:
    service = _service("satchel-agent.service")
    assert service["Type"] == ["notify"] and service["NotifyAccess"] == ["main"]
    assert "WatchdogSec" in service
    agent_code = "\n".join(p.read_text() for p in (ROOT / "agent").rglob("*.py"))
    assert "sdnotify.ready(" in agent_code and "sdnotify.watchdog()" in agent_code


def test_the_agent_unit_restarts_on_failure_and_is_hardened() -> None:
    service = _service("satchel-agent.service")
    for key, value in (("Restart", "on-failure"), ("ProtectSystem", "strict"),
                       ("NoNewPrivileges", "yes"), ("PrivateTmp", "yes"),
                       ("ProtectHome", "yes"), ("StateDirectory", "satchel-agent")):
        assert service[key] == [value], key


def test_the_accelerator_drop_in_only_opens_devices() -> None:
    dropin = configparser.ConfigParser(strict=False, interpolation=None)
    dropin.optionxform = str  # type: ignore[assignment,method-assign]
    text = (AGENT / "satchel-agent.accelerator.conf").read_text()
    dropin.read_string("\n".join(line for line in text.splitlines()
                                 if not line.startswith("DeviceAllow=")))
    assert dropin.sections() == ["Service"]
    assert dict(dropin["Service"]) == {"PrivateDevices": "no", "DevicePolicy": "closed"}
    assert "DeviceAllow=char-drm rw" in text


def test_readme_recipe_installs_what_the_units_run() -> None:
    readme = (ROOT / "README.md").read_text()
    venv = re.search(r"python3 -m venv (/\S+)", readme)
    assert venv, "README has no `python3 -m venv /opt/...` recipe"
    for unit in UNITS:
        executable = Path(_exec_start(unit)[0])
        assert executable.parent == Path(venv.group(1)) / "bin", unit
        assert f"{venv.group(1)}/bin/pip install" in readme
    for folder in (AGENT, MANAGER):
        for shipped in folder.iterdir():
            assert shipped.name in readme, f"README does not say how to install {shipped.name}"
    shipped_name = r"satchel-(?:agent|manager)\.(?:service|\w+\.conf)\b"
    for named in set(re.findall(shipped_name, readme)):
        assert (AGENT / named).exists() or (MANAGER / named).exists(), (
            f"README names {named}, which is not shipped"
        )
