"""A power cut during shadow or ramp: the device comes back serving the previous release,
and the candidate starts its staged activation again from the beginning."""

from __future__ import annotations

from pathlib import Path

import pytest

from satchel.agent.install.installer import recover
from satchel.agent.install.journal import OP_INSTALL, Journal, read_journal, write_journal
from satchel.agent.install.states import PROMOTED
from satchel.agent.staging.record import read_candidate
from satchel.bundles.events import ACTIVATED, RAMP_STEP
from satchel.bundles.timeutil import format_time, utcnow
from tests.agent.staged import StagedModels, field_inputs, make_models, rig, shadow
from tests.factory.keys import Keyring
from tests.server.servers import wait_for


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> StagedModels:
    return make_models(tmp_path_factory.mktemp("restart-models"))


def test_server_stopped_mid_ramp_comes_back_on_the_previous_release_and_starts_over(
    tmp_path: Path, keys: Keyring, models: StagedModels
) -> None:
    with rig(tmp_path, keys, models) as r:
        r.install(models.good, version="1.0.0", sequence=1)
        server = r.start()
        r.install(models.twin, version="2.0.0", sequence=2,
                  activation=shadow(5, ramp="50,100", step_requests=1000))
        wait_for(lambda: server.registry.candidate("vision") is not None)
        for x in field_inputs(30):
            r.infer(x)
        wait_for(lambda: bool(r.events.of_kind(RAMP_STEP)))
        server.stop()  # the power goes: nothing decided, nothing written but figures
        r.server = None
        assert recover(r.state_dir) == []
        status = r.status()
        assert status["active"]["version"] == "1.0.0"
        assert status["candidate"]["version"] == "2.0.0"
        server = r.start()
        wait_for(lambda: server.registry.candidate("vision") is not None)
        status = r.status()
        assert status["candidate"]["stage"] == "shadow"  # from the beginning
        assert status["candidate"]["shadow"]["compared"] == 0
        assert r.infer(field_inputs(1)[0])["model_version"] == "1.0.0"
        assert not r.events.of_kind(ACTIVATED)


def test_install_cut_after_the_candidate_was_written_keeps_it(
    tmp_path: Path, keys: Keyring, models: StagedModels
) -> None:
    with rig(tmp_path, keys, models) as r:
        r.install(models.good, version="1.0.0", sequence=1)
        r.install(models.twin, version="2.0.0", sequence=2, activation=shadow(5))
        candidate = read_candidate(r.state.layout, "vision")
        assert candidate is not None
        # the journal an install leaves when the power goes before it is cleared
        write_journal(r.state.layout, Journal(
            op=OP_INSTALL, id="x", channel="vision", target=candidate.name, version="2.0.0",
            sequence=2, previous="1-1.0.0", step=PROMOTED, started=format_time(utcnow()),
        ))
        done = recover(r.state_dir)
        assert any("kept candidate" in line for line in done)
        assert read_journal(r.state.layout, "vision") is None
        assert (r.state_dir / "channels/vision/releases" / candidate.name).is_dir()
        status = r.status()
        assert status["active"]["version"] == "1.0.0" and status["stage"] == "shadow"


def test_same_release_offered_again_while_judged_is_refused_and_nothing_changes(
    tmp_path: Path, keys: Keyring, models: StagedModels
) -> None:
    from satchel.agent.errors import SequenceRollbackError

    with rig(tmp_path, keys, models) as r:
        r.install(models.good, version="1.0.0", sequence=1)
        r.install(models.twin, version="2.0.0", sequence=2, activation=shadow(5))
        with pytest.raises(SequenceRollbackError, match="judged on field requests"):
            (r.work / "2.0.0.satchel").unlink()
            r.install(models.twin, version="2.0.0", sequence=2, activation=shadow(5))
        assert r.status()["candidate"]["version"] == "2.0.0"
        assert (r.state_dir / "channels/vision/releases/2-2.0.0").is_dir()


def test_newer_release_activated_meanwhile_drops_the_candidate(
    tmp_path: Path, keys: Keyring, models: StagedModels
) -> None:
    with rig(tmp_path, keys, models) as r:
        r.install(models.good, version="1.0.0", sequence=1)
        r.install(models.twin, version="2.0.0", sequence=2, activation=shadow(5))
        r.install(models.good, version="3.0.0", sequence=3)
        status = r.status()
        assert status["active"]["version"] == "3.0.0" and status["candidate"] is None
        assert not (r.state_dir / "channels/vision/releases/2-2.0.0").exists()
        r.install(models.twin, version="4.0.0", sequence=4, activation=shadow(5))
        r.install(models.good, version="5.0.0", sequence=5, activation=shadow(5))
        assert r.status()["candidate"]["version"] == "5.0.0"  # the newer candidate wins
        assert not (r.state_dir / "channels/vision/releases/4-4.0.0").exists()
        assert r.status()["active"]["version"] == "3.0.0"


def test_offers_of_the_release_being_judged_are_skipped_by_the_transports(
    tmp_path: Path, keys: Keyring, models: StagedModels
) -> None:
    from satchel.agent.sync.install_events import active_sequence

    with rig(tmp_path, keys, models) as r:
        r.install(models.good, version="1.0.0", sequence=1)
        assert active_sequence(r.state, "vision") == 1
        r.install(models.twin, version="2.0.0", sequence=2, activation=shadow(5))
        assert active_sequence(r.state, "vision") == 2  # an offer of 2 is not taken again
