"""Every model family a user brings, through both gates: good models build and activate on a
real device; broken ones are refused at build, and refused by the device (unchanged) even when
a build without gates signed them. The catalogue is made in the repository (tests/catalogue).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.catalogue.gates import run_gates
from tests.catalogue.kinds import ACTIVATE, CatalogueModel, catalogue


@pytest.fixture(scope="module")
def entries(tmp_path_factory: pytest.TempPathFactory) -> list[CatalogueModel]:
    return catalogue(tmp_path_factory.mktemp("catalogue"))


def _good(entries: list[CatalogueModel], family: str) -> Path:
    return next(e.model for e in entries if e.family == family and e.expect == ACTIVATE)


def _ids() -> list[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return [f"{e.family}/{e.variant}" for e in catalogue(Path(tmp))]


@pytest.mark.parametrize("entry_id", _ids())
def test_catalogue_model_meets_both_gates(entries, keys, tmp_path, entry_id):
    entry = next(e for e in entries if f"{e.family}/{e.variant}" == entry_id)

    result = run_gates(entry, _good(entries, entry.family), keys.signing, keys.root_json,
                       tmp_path / "work")

    if entry.expect == ACTIVATE:
        assert result.build_ok, f"good model refused at build: {result.build_line}"
        assert result.device_ok, f"good model refused on the device: {result.device_line}"
    else:
        assert not result.build_ok, f"broken model ({entry.note}) built: {result.build_line}"
        assert "\n" not in result.build_line and len(result.build_line) < 600
        assert result.device_ok is False, f"device activated a broken model ({entry.note})"
        assert result.device_line.count("\n") == 0, result.device_line
        assert result.device_unchanged
