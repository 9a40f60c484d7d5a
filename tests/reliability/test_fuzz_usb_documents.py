"""Fuzzing the USB plan and report readers (`bundles.plan`), and the manager's import of a
report, with hypothesis: random bytes, random JSON, and mutations of genuine documents,
re-signed so that the parser behind the signature check is reached too.

Whatever the input, only `BundleError` subclasses escape the readers (the manager's import
answers `ReportRefusedError`), each in one line; a document that is accepted is one a signer
meant; a refused report records nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import assume, given
from hypothesis import strategies as st

from satchel.agent.errors import AgentError
from satchel.agent.event_queue import EventQueue
from satchel.agent.provision import init_device
from satchel.agent.sync.usb import process_stick
from satchel.bundles.envelope import sign_envelope
from satchel.bundles.errors import BundleError, MalformedJSONError
from satchel.bundles.keys import SigningKey
from satchel.bundles.plan import (
    Assignment,
    Plan,
    Report,
    bundle_file,
    read_report_unverified,
    root_file,
    sign_plan,
    sign_report,
    verify_plan,
    verify_report,
)
from satchel.bundles.trust import load_root
from satchel.manager.errors import ReportRefusedError
from satchel.manager.models import Event, UsbReport
from satchel.manager.usb import record_report
from tests.factory.device import assert_one_line
from tests.factory.keys import Keyring, make_keys
from tests.manager.helpers import Fleet, SimDevice
from tests.reliability.figures import Recorder
from tests.reliability.kit import CFG, no_health, successor_root
from tests.reliability.sticks import Stick
from tests.reliability.strategies import fuzz_settings, json_values, mutated

NOW = datetime(2026, 3, 2, 12, 0, 0, tzinfo=timezone.utc)
FAST_EXAMPLES, SLOW_EXAMPLES = 150, 3000
AREA = "fuzzing"


class Trial:
    """Runs one input through a reader; counts inputs and the refusals by class."""

    def __init__(self) -> None:
        self.inputs = 0
        self.accepted = 0
        self.refusals: dict[str, int] = {}

    def run(self, read: Callable[[], Any]) -> Any:
        self.inputs += 1
        try:
            result = read()
        except BundleError as e:
            assert_one_line(e)
            name = type(e).__name__
            self.refusals[name] = self.refusals.get(name, 0) + 1
            return None
        self.accepted += 1
        return result

    def result(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.refusals.items()))
        return f"{self.accepted} accepted as signed, the rest refused ({kinds})"


@pytest.fixture(scope="module")
def trust(tmp_path_factory: pytest.TempPathFactory) -> Keyring:
    return make_keys(tmp_path_factory.mktemp("fuzz-usb"))


def _plan() -> Plan:
    sha = "ab" * 32
    return Plan("plan-1", NOW - timedelta(hours=1), NOW + timedelta(days=1), 1, (
        Assignment("vision", "2.0.0", 20, sha, 8192, devices=("dev-1",),
                   device_classes=("edge-box",), deployment_id=4),
        Assignment("audio", "1.0.0", 3, "cd" * 32, 100, devices=(), deployment_id=None),
    ))


def _report_signed() -> dict[str, Any]:
    body = SimDevice("dev-1", "edge-box", SigningKey.generate()).body()
    return Report("r-1", "dev-1", NOW, body, "plan-1").to_signed()


def _resigned(doc: Any, keys: list[SigningKey]) -> bytes:
    try:
        return sign_envelope(doc, keys)
    except MalformedJSONError:
        assume(False)  # not encodable as canonical JSON: nothing a signer could have signed
        raise


# --- the plan -----------------------------------------------------------------------------


def _plan_bytes_fuzz(trust: Keyring, data: bytes, trial: Trial) -> None:
    plan = trial.run(lambda: verify_plan(data, trust.root, NOW))
    assert plan is None or data == sign_plan(plan, trust.signing_keys)


def _plan_mutation_fuzz(trust: Keyring, signed: dict[str, Any], trial: Trial) -> None:
    data = _resigned(signed, trust.signing_keys)
    plan = trial.run(lambda: verify_plan(data, trust.root, NOW))
    if plan is not None:  # what the signer wrote, read back exactly; entries well formed
        assert plan.to_signed() == {k: signed[k] for k in plan.to_signed()}
        assert all(a.file == bundle_file(a.bundle_sha256) for a in plan.assignments)


def _plan_trials(trust: Keyring, examples: int) -> tuple[Trial, Trial]:
    genuine = sign_plan(_plan(), trust.signing_keys)
    raw, edited = Trial(), Trial()

    @fuzz_settings(examples)
    @given(st.one_of(st.binary(max_size=600), _flips(genuine), _json_bytes()))
    def bytes_case(data: bytes) -> None:
        _plan_bytes_fuzz(trust, data, raw)

    @fuzz_settings(examples)
    @given(mutated(_plan().to_signed()))
    def mutation_case(signed: dict[str, Any]) -> None:
        _plan_mutation_fuzz(trust, signed, edited)

    bytes_case()
    mutation_case()
    return raw, edited


def test_plan_reader_only_refuses_with_named_errors(trust: Keyring, measured: Recorder) -> None:
    raw, edited = _plan_trials(trust, FAST_EXAMPLES)
    _record_plan(measured, raw, edited)


@pytest.mark.slow
def test_plan_reader_only_refuses_with_named_errors_long_run(
    trust: Keyring, measured: Recorder
) -> None:
    raw, edited = _plan_trials(trust, SLOW_EXAMPLES)
    _record_plan(measured, raw, edited)


def _record_plan(measured: Recorder, raw: Trial, edited: Trial) -> None:
    assert raw.inputs > 0 and edited.inputs > 0
    measured.row(AREA, "USB plan reader: random bytes, byte flips, random JSON",
                 raw.inputs, raw.result())
    measured.row(AREA, "USB plan reader: genuine plan edited and re-signed", edited.inputs,
                 edited.result())


# --- the report ---------------------------------------------------------------------------


def _report_trials(examples: int) -> tuple[Trial, Trial]:
    key = SigningKey.generate()
    genuine = sign_report(Report.from_signed(_report_signed()), key)
    raw, edited = Trial(), Trial()

    @fuzz_settings(examples)
    @given(st.one_of(st.binary(max_size=600), _flips(genuine), _json_bytes()))
    def bytes_case(data: bytes) -> None:
        try:
            claimed = read_report_unverified(data)  # what `usb import` reads first
        except BundleError as e:
            assert_one_line(e)
            claimed = None
        report = raw.run(lambda: verify_report(data, key.public))
        assert report is None or (data == genuine and claimed == report)

    @fuzz_settings(examples)
    @given(mutated(_report_signed()))
    def mutation_case(signed: dict[str, Any]) -> None:
        data = _resigned(signed, [key])
        report = edited.run(lambda: verify_report(data, key.public))
        assert report is None or report.to_signed() == signed

    bytes_case()
    mutation_case()
    return raw, edited


def test_report_reader_only_refuses_with_named_errors(measured: Recorder) -> None:
    raw, edited = _report_trials(FAST_EXAMPLES)
    _record_report(measured, raw, edited)


@pytest.mark.slow
def test_report_reader_only_refuses_with_named_errors_long_run(measured: Recorder) -> None:
    raw, edited = _report_trials(SLOW_EXAMPLES)
    _record_report(measured, raw, edited)


def _record_report(measured: Recorder, raw: Trial, edited: Trial) -> None:
    measured.row(AREA, "USB report reader: random bytes, byte flips, random JSON",
                 raw.inputs, raw.result())
    measured.row(AREA, "USB report reader: genuine report edited and re-signed",
                 edited.inputs, edited.result())


# --- the manager's import of a report -----------------------------------------------------


def test_manager_import_of_edited_reports_refuses_or_records_and_never_fails(
    fleet: Fleet, measured: Recorder
) -> None:
    device = fleet.enroll("dev-1")
    db = fleet.app.extensions["satchel"].db
    counts = {"inputs": 0, "recorded": 0, "duplicate": 0, "refused": 0}

    def rows() -> tuple[int, int]:
        return db.run(lambda s: (s.scalar(sa.select(sa.func.count()).select_from(Event)),
                                 s.scalar(sa.select(sa.func.count()).select_from(UsbReport))))

    @fuzz_settings(FAST_EXAMPLES)
    @given(mutated(_report_signed()), st.integers(0, 10**9))
    def case(signed: dict[str, Any], n: int) -> None:
        signed = {**signed, "report_id": f"r-{n}"} if "report_id" in signed else signed
        data = _resigned(signed, [device.key])
        before = rows()
        counts["inputs"] += 1
        rel = f"reports/dev-1/{signed.get('report_id')}.json"
        try:
            new = db.run(lambda s: record_report(s, rel, data, NOW, 1000))
        except ReportRefusedError as e:
            assert_one_line(e)
            assert rows() == before  # a refused report records nothing
            counts["refused"] += 1
            return
        counts["recorded" if new else "duplicate"] += 1

    case()
    measured.row(AREA, "manager `usb import`: device reports edited and re-signed",
                 counts["inputs"],
                 f"{counts['recorded']} recorded, {counts['duplicate']} duplicates skipped, "
                 f"{counts['refused']} refused (ReportRefusedError), recording nothing")


# --- strategies ---------------------------------------------------------------------------


def _flips(data: bytes) -> st.SearchStrategy[bytes]:
    """`data` with one byte changed, or cut short."""
    def flip(i: int, mask: int) -> bytes:
        out = bytearray(data)
        out[i % len(data)] ^= mask
        return bytes(out)

    return st.one_of(
        st.builds(flip, st.integers(0, len(data) - 1), st.integers(1, 255)),
        st.builds(lambda n: data[:n], st.integers(0, len(data) - 1)),
    )


def _json_bytes() -> st.SearchStrategy[bytes]:
    return st.one_of(
        json_values.map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries({"signed": json_values, "signatures": json_values}).map(
            lambda v: json.dumps(v).encode()),
    )


# --- the trust roots a stick carries ------------------------------------------------------


def test_stick_trust_root_reader_refuses_damaged_roots_and_keeps_the_trusted_one(
    tmp_path_factory: pytest.TempPathFactory, trust: Keyring, measured: Recorder
) -> None:
    """`satchel-agent usb` reads trust/roots/*.root.json before anything else (a reader the
    bundle-format suite does not cover): a damaged root never replaces the trusted one."""
    genuine = successor_root(trust, trust.signing_keys)
    trial = Trial()

    @fuzz_settings(FAST_EXAMPLES)
    @given(st.one_of(st.binary(max_size=400), _flips(genuine), _json_bytes()))
    def case(data: bytes) -> None:
        work = tmp_path_factory.mktemp("stick-roots")
        state = work / "state"
        init_device(state, trust.root_json, "dev-1", "edge-box")
        stick = Stick(work / "stick")
        stick.roots(trust.root_json)
        stick.file(root_file(2)).write_bytes(data)
        stick.plan([], trust.signing_keys)
        try:
            outcome = trial.run(lambda: process_stick(state, stick.path, EventQueue(state),
                                                      no_health, config=CFG))
        except AgentError as e:  # a stick the agent cannot use at all
            assert_one_line(e)
            outcome = None
        version = load_root((state / "root.json").read_bytes()).version
        if outcome is None:
            assert (state / "root.json").read_bytes() == trust.root_json
        else:
            assert version in (1, 2)
            assert version == 1 or load_root((state / "root.json").read_bytes()) == load_root(
                genuine)

    case()
    measured.row(AREA, "USB stick trust/roots reader: random bytes, flips of a genuine v2, "
                 "random JSON", trial.inputs,
                 trial.result().replace("accepted as signed", "sticks processed"))
