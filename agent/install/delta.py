"""A delta bundle on the device: find the kept release its patches apply to and check its
files before anything is journaled (docs/DELTAS.md).

The patches themselves are applied by the bundle reader as it unpacks into staging
(`bundles/delta.py`), and each rebuilt file is checked against its signed content hash like
any unpacked one; this module only decides whether the device can take the delta at all.
"""

from __future__ import annotations

from pathlib import Path

from satchel.agent.errors import DeltaBaseMissingError, StateCorruptError
from satchel.agent.state import (
    FILES_DIR,
    ChannelRecord,
    DeviceState,
    KeptRelease,
    Layout,
    load_release,
)
from satchel.bundles.errors import DeltaBaseError
from satchel.bundles.manifest import Manifest
from satchel.bundles.plan import Assignment


def kept_base(record: ChannelRecord | None, manifest: Manifest) -> KeptRelease | None:
    """The kept release of the channel that `manifest`'s patches apply to, if any."""
    base = manifest.delta_base
    if base is None or record is None:
        return None
    return next((r for r in record.releases if r.sequence == base.sequence
                 and r.version == base.version), None)


def base_files(layout: Layout, record: ChannelRecord | None,
               manifest: Manifest) -> dict[str, Path]:
    """For a delta bundle, the kept file each patch applies to (payload path -> file), each
    checked against the signed base hash; {} for a full bundle. Raises DeltaBaseMissingError
    (one line: the full bundle is needed) when the base release is not kept here or one of its
    files differs (corrupted on disk); OSError."""
    from satchel.bundles.delta import check_base_file

    base = manifest.delta_base
    if base is None:
        return {}
    what = f"delta bundle {manifest.name} {manifest.version} needs base {base.describe()}"
    kept = kept_base(record, manifest)
    if kept is None:
        raise DeltaBaseMissingError(
            f"{what}, which this device no longer keeps: install the full bundle"
        )
    try:
        signed = {f.path: f.sha256 for f in load_release(layout, manifest.name, kept)
                  .manifest.files}
    except (OSError, StateCorruptError):
        signed = {}
    files = layout.release(manifest.name, kept.name) / FILES_DIR
    bases: dict[str, Path] = {}
    for entry in manifest.files:
        if entry.delta is None:
            continue
        if signed.get(entry.path) != entry.delta.base_sha256:  # another build of that release
            raise DeltaBaseMissingError(
                f"{what}, and this device's {base.version} is another build (its "
                f"{entry.path} is not the patch's base): install the full bundle"
            )
        path = files / entry.path
        try:
            check_base_file(entry, path)
        except DeltaBaseError:
            raise DeltaBaseMissingError(
                f"{what}, whose file {entry.path} on this device is damaged: install the "
                "full bundle"
            ) from None
        bases[entry.path] = path
    return bases


def kept_releases(record: ChannelRecord | None) -> list[dict[str, object]]:
    """What a device reports of a channel's kept releases (bases a delta may patch)."""
    if record is None:
        return []
    return [{"version": r.version, "sequence": r.sequence} for r in record.releases]


def delta_assignment(state: DeviceState, assignment: Assignment) -> Assignment | None:
    """A USB plan assignment's delta bundle against a release this device keeps, if the plan
    has one (None: install the full bundle)."""
    if not assignment.deltas:
        return None
    try:
        record = state.record(assignment.channel)
    except StateCorruptError:
        return None
    if record is None:
        return None
    return assignment.delta_for({(r.version, r.sequence) for r in record.releases})


def delta_problem(state_dir: Path, bundle: Path) -> str | None:
    """Why the delta bundle at `bundle` cannot be applied on this device (its one-line
    refusal), or None (a full bundle, or a delta whose base is here and intact). Read before
    installing a delta that has a full bundle as fallback, so that the fallback is taken
    without a refusal to report. The manifest is read unverified: at worst the full bundle is
    installed instead. Raises nothing."""
    from satchel.bundles.errors import BundleError
    from satchel.bundles.reader import read_unverified

    try:
        with open(bundle, "rb") as f:
            manifest, _ = read_unverified(f)
        if manifest.delta_base is None:
            return None
        state = DeviceState(state_dir)
        base_files(state.layout, state.record(manifest.name), manifest)
    except DeltaBaseMissingError as e:
        return str(e)
    except (OSError, BundleError, StateCorruptError):
        return None  # the installer judges it
    return None
