"""The network's bad days, end to end: a download cut several times resumes and installs;
a manager away for a while finds every event queued on the device, delivered once."""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np

from satchel.agent.event_queue import EventQueue
from tests.e2e.commands import wait_for
from tests.e2e.kit import Kit, expected_outputs, positive
from tests.e2e.sites import ManagerProcess, Site
from tests.service.drop_proxy import DropProxy


def test_a_download_cut_three_times_resumes_and_the_release_is_served(
    site: Site, manager: ManagerProcess, kit: Kit
) -> None:
    proxy = DropProxy(manager.port, after_bytes=700_000, drops=3)
    try:
        agent = site.device("flaky-1", manager, url=proxy.url)
        manager.add("big")
        manager.deploy("vision:3.0.0", ["flaky-1"], "100%")

        wait_for(lambda: agent.serving_version("vision") == "3.0.0", 60, "the install")
    finally:
        proxy.close()

    assert proxy.cut == 3
    assert agent.log.count("resuming vision 3.0.0") == 3
    (downloaded,) = wait_for(
        lambda: [e for e in manager.events("flaky-1") if e["kind"] == "downloaded"], 20,
        "the downloaded event")
    assert downloaded["figures"]["resumes"] == 3
    assert downloaded["bundle_sha256"] == hashlib.sha256(kit.big_bundle.read_bytes()).hexdigest()
    x = positive(3, seed=4)
    np.testing.assert_allclose(agent.infer("vision", x), expected_outputs(kit.big, x),
                               rtol=1e-4, atol=1e-5)


def test_events_made_while_the_manager_is_away_are_delivered_once_when_it_is_back(
    site: Site, kit: Kit, tmp_path_factory
) -> None:
    manager = ManagerProcess(tmp_path_factory.mktemp("e2e-outage"), kit)
    try:
        agent = site.device("remote-1", manager)
        state = agent.state_dir
        manager.add("v1")
        rollout = manager.deploy("vision:1.0.0", ["remote-1"], "100%")
        wait_for(lambda: manager.deployment(rollout)["state"] == "completed", 30, "rollout")
        wait_for(lambda: not EventQueue(state).pending(), 10, "events delivered")
        before = {e["id"] for e in manager.events("remote-1")}

        manager.stop()
        site.agent_cli(state, "install", kit.v1_1)  # a technician on site, meanwhile
        site.agent_cli(state, "rollback", "vision")
        wait_for(lambda: agent.serving_version("vision") == "1.0.0", 10, "the rollback")
        x = positive(4, seed=2)
        served = [agent.infer("vision", x) for _ in range(5)]  # it keeps serving
        agent.wait_for_log("check-in failed", 10)
        queued = EventQueue(state).pending()
        assert {"activated", "rolled_back"} <= {e["kind"] for e in queued}

        manager.start()
        wait_for(lambda: not EventQueue(state).pending(), 30, "the queue drains")
    finally:
        manager.stop()
        manager.start()  # read what it recorded
    try:
        after = manager.events("remote-1")
    finally:
        manager.stop()

    new = Counter(e["id"] for e in after if e["id"] not in before)
    assert set(new) >= {e["id"] for e in queued}
    assert all(n == 1 for n in new.values())
    kinds = Counter(e["kind"] for e in after if e["id"] in {q["id"] for q in queued})
    assert kinds["activated"] == 1 and kinds["rolled_back"] == 1
    for out in served:
        np.testing.assert_allclose(out, expected_outputs(kit.good, x), rtol=1e-5, atol=1e-6)
