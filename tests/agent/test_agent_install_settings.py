"""`satchel-agent install` takes its settings from SATCHEL_AGENT_<NAME> variables, as `usb`
and `run` do: one function builds the config of every command, so a limit set for the device
(here the disk margin) holds whichever way a bundle arrives."""

from __future__ import annotations

import shutil

from satchel.agent.config import CONFIG_ENV_PREFIX, AgentConfig

DISK_MARGIN_ENV = f"{CONFIG_ENV_PREFIX}DISK_MARGIN_BYTES"


def test_install_refuses_a_bundle_the_disk_margin_setting_leaves_no_room_for(
    device, make_bundle
):
    bundle = make_bundle(version="1.0.0", sequence=1)
    free = shutil.disk_usage(device.state_dir).free
    tree = device.tree()

    line = device.spawn("install", str(bundle),
                        env={DISK_MARGIN_ENV: str(free * 1000)}).refusal()

    assert "margin" in line and "free" in line, line  # InsufficientDiskError
    assert f"{free * 1000 / 2**20:.1f} MiB margin" in line
    assert device.tree() == tree
    assert device.active() is None


def test_install_without_the_setting_keeps_the_default_margin_and_installs(
    device, make_bundle
):
    assert AgentConfig().disk_margin_bytes < shutil.disk_usage(device.state_dir).free

    device.spawn("install", str(make_bundle(version="1.0.0", sequence=1)),
                 env={DISK_MARGIN_ENV: ""}).ok()

    assert device.active() == ("1.0.0", 1)
    device.verify_active()


def test_install_with_a_setting_that_is_not_a_number_is_a_usage_error(device, make_bundle):
    tree = device.tree()

    error = device.spawn("install", str(make_bundle(version="1.0.0", sequence=1)),
                         env={DISK_MARGIN_ENV: "lots"}).usage_error()

    assert DISK_MARGIN_ENV in error
    assert device.tree() == tree and device.active() is None
