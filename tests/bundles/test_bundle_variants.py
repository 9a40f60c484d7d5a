"""Releases with variants: `satchel bundle build --variant`, the manifest's `variants` section,
its refusals, and the selection policy's hysteresis (bundles/variants.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from satchel.bundles.canonical import decode_canonical
from satchel.bundles.errors import ManifestError
from satchel.bundles.manifest import Manifest, parse_manifest
from satchel.bundles.reader import read_unverified, verify_and_unpack
from satchel.bundles.timeutil import utcnow
from satchel.bundles.variants import Conditions, Policy, Reading, Rule, parse_policy
from satchel.manager.build import BuildRequest, build_bundle
from satchel.manager.build_variants import VariantSpec, parse_variant
from satchel.manager.errors import BuildError
from tests.cli.invoke import Cli
from tests.factory.keys import Keyring
from tests.factory.variants import FAST, VariantModels, make_variant_models, variant_bundle


@pytest.fixture(scope="module")
def vmodels(tmp_path_factory: pytest.TempPathFactory) -> VariantModels:
    return make_variant_models(tmp_path_factory.mktemp("variant-models"), slow_steps=0)


def _manifest(path: Path) -> Manifest:
    with open(path, "rb") as f:
        return read_unverified(f)[0]


def test_cli_builds_one_signed_bundle_with_every_variant_smoke_tested(
    tmp_path: Path, keys: Keyring, vmodels: VariantModels
) -> None:
    out = tmp_path / "kws.satchel"
    policy = '{"rules": [{"when": {"battery_below": 25}, "use": "lite"}], "dwell_s": 5}'
    done = Cli(tmp_path).run(
        "bundle", "build", "--name", "kws", "--version", "2.0", "--sequence", "7",
        "--variant", f"full:{vmodels.full}", "--variant", f"int8:{vmodels.int8}:{vmodels.full}",
        "--variant", f"lite:{vmodels.lite}", "--default-variant", "int8",
        "--variant-policy", policy, "--variant-accuracy", "lite=0",
        "--variant-budget-ms", "lite=40", "--latency-budget-ms", "50",
        "--samples", vmodels.samples, "--key", tmp_path / "keys" / "signing.key", "-o", out,
    )
    assert done.exit_code == 0, done.stderr
    assert "variant lite" in done.stdout
    target = tmp_path / "unpacked"
    target.mkdir()
    m = verify_and_unpack(out, keys.root, target, utcnow(), fsync=False).manifest
    assert m.variants is not None
    assert m.variants.default == "int8"
    assert [x.name for x in m.models] == ["int8", "full", "lite"]  # the default first
    assert [t.model for t in m.smoke_tests] == ["int8", "full", "lite"]
    assert {v.name: v.accuracy_level for v in m.variants.variants} == {
        "full": 3, "int8": 2, "lite": 0}
    assert m.models[0].quantization == "dynamic-int8"
    assert m.models[0].reference_sha256 is not None  # int8 judged against the float model
    assert m.variants.policy.dwell_s == 5
    assert m.variants.policy.rules[0].use == "lite"
    for entry in m.models:
        assert (target / entry.file).is_file()
        assert entry.file.startswith(f"variants/{entry.name}/")
    assert set(m.build["variants"]) == {"full", "int8", "lite"}
    budgets = {t.model: t.p95_latency_budget_ms for t in m.smoke_tests}
    assert budgets == {"int8": 50.0, "full": 50.0, "lite": 40.0}
    shown = Cli(tmp_path).run("bundle", "inspect", out)
    assert shown.exit_code == 0
    assert "variants: int8 (accuracy 2), full (accuracy 3), lite (accuracy 0); default int8" \
        in shown.stdout
    assert "rule battery_below=25 -> lite" in shown.stdout


def test_bundle_without_variants_has_no_variants_section(
    tmp_path: Path, keys: Keyring, vmodels: VariantModels
) -> None:
    req = BuildRequest(name="kws", version="1", model=vmodels.full, sequence=1)
    result = build_bundle(req, [keys.signing], tmp_path / "one.satchel", defaults=FAST)
    with open(tmp_path / "one.satchel", "rb") as f:
        raw = f.read()
    doc = decode_canonical(raw[512 : 512 + int(raw[124:135], 8)], "manifest.json")
    assert "variants" not in doc
    assert result.manifest.variants is None
    assert parse_manifest(result.manifest.to_bytes()).to_bytes() == result.manifest.to_bytes()


def test_default_policy_drops_to_the_last_variant_on_low_battery(
    tmp_path: Path, keys: Keyring, vmodels: VariantModels
) -> None:
    result = variant_bundle(tmp_path / "b.satchel", keys,
                            [VariantSpec("full", vmodels.full), VariantSpec("lite", vmodels.lite)])
    variants = result.manifest.variants
    assert variants is not None and variants.default == "full"
    (rule,) = variants.policy.rules
    assert rule.use == "lite" and rule.when.battery_below == 30
    assert rule.leave is not None and rule.leave.battery_above == 80
    again = parse_manifest(result.manifest.to_bytes())
    assert again.to_bytes() == result.manifest.to_bytes()


@pytest.mark.parametrize("change, message", [
    (lambda d: d["variants"].update(default="nope"), "default variant 'nope' is not listed"),
    (lambda d: d["variants"]["policy"]["rules"].append({"when": {"battery_below": 5},
                                                        "use": "ghost"}), "not a variant"),
    (lambda d: (d["variants"]["variants"].pop(), d["variants"]["policy"].update(rules=[])),
     "is not a variant of the release"),
    (lambda d: d["smoke_tests"].pop(), "has no smoke test"),
    (lambda d: d["models"].reverse(), "must be the manifest's first"),
    (lambda d: d["variants"]["policy"]["rules"][0]["when"].update(battery_low=3),
     "unexpected field 'battery_low'"),
    (lambda d: d["variants"]["policy"]["rules"][0].update(when={}), "names no condition"),
    (lambda d: d["variants"]["policy"].update(dwell_s=-1), "dwell_s"),
    (lambda d: d["variants"]["variants"][0].update(name="Full!"), "invalid value"),
    (lambda d: d["variants"]["variants"][1].update(model="full"), "same model"),
])
def test_manifest_with_broken_variants_is_refused_in_one_line(
    tmp_path: Path, keys: Keyring, vmodels: VariantModels, change: Any, message: str
) -> None:
    result = variant_bundle(tmp_path / "b.satchel", keys,
                            [VariantSpec("full", vmodels.full), VariantSpec("lite", vmodels.lite)])
    doc = json.loads(result.manifest.to_bytes())
    change(doc)
    with pytest.raises(ManifestError, match=message) as e:
        Manifest.from_dict(doc)
    assert "\n" not in str(e.value)


def test_variants_that_take_other_inputs_are_refused(
    tmp_path: Path, keys: Keyring, vmodels: VariantModels
) -> None:
    out = tmp_path / "b.satchel"
    with pytest.raises(BuildError, match="every variant must take the same inputs"):
        variant_bundle(out, keys, [VariantSpec("full", vmodels.full),
                                   VariantSpec("odd", vmodels.other_inputs)])
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--variant", "Big:{full}"], "is invalid"),
    (["--variant", "full"], "expected NAME:MODEL"),
    (["--variant", "full:/no/such.onnx"], "no such model file"),
    (["--variant", "full:{full}", "--variant", "full:{lite}"], "given twice"),
    (["--variant", "full:{full}", "--default-variant", "lite"], "is not a --variant"),
    (["--variant", "full:{full}", "--model", "{full}"], "not --model as well"),
    (["--variant", "full:{full}", "--variant-policy", '{"rules": [{"when": {"load_above": 1},'
      ' "use": "lite"}]}'], "not a variant"),
    (["--variant", "full:{full}", "--variant-policy", "{nope"], "is not JSON"),
    (["--variant", "full:{full}", "--variant-accuracy", "full=high"], "expected NAME=LEVEL"),
    (["--variant", "full:{full}", "--variant-budget-ms", "lite=3"], "not a --variant"),
    (["--variant", "full:{full}", "--variant-budget-ms", "full=0"], "must be > 0"),
])
def test_cli_refuses_bad_variant_options_and_writes_nothing(
    tmp_path: Path, keys: Keyring, vmodels: VariantModels, args: list[str], message: str
) -> None:
    out = tmp_path / "b.satchel"
    args = [a.replace("{full}", str(vmodels.full)).replace("{lite}", str(vmodels.lite))
            for a in args]
    done = Cli(tmp_path).run(
        "bundle", "build", "--name", "kws", "--version", "1", *args,
        "--key", tmp_path / "keys" / "signing.key", "-o", out,
    )
    assert done.exit_code != 0
    assert message in done.stderr + done.stdout
    assert not out.exists()


def test_parse_variant_takes_an_optional_reference(vmodels: VariantModels) -> None:
    spec = parse_variant(f"int8:{vmodels.int8}:{vmodels.full}")
    assert spec == VariantSpec("int8", vmodels.int8, vmodels.full)
    assert parse_variant(f"lite:{vmodels.lite}").reference is None


# --- the policy's arithmetic ------------------------------------------------------------------

LOW = Reading(battery_percent=20.0, charging=False)


def test_a_rule_applies_only_when_every_condition_holds() -> None:
    rule = Rule(Conditions(battery_below=30, temperature_above=70), "lite")
    assert not rule.applies(LOW)  # temperature unknown: the condition does not hold
    assert rule.applies(Reading(battery_percent=20, temperature_c=80))
    assert not rule.applies(Reading(battery_percent=40, temperature_c=80))


def test_a_rule_with_leave_holds_until_leave_holds() -> None:
    rule = Rule(Conditions(battery_below=30), "lite", Conditions(battery_above=80))
    assert not rule.released(Reading(battery_percent=50))
    assert not rule.released(Reading())  # unknown: keep what runs
    assert rule.released(Reading(battery_percent=81))


def test_a_rule_without_leave_lets_go_past_its_margin() -> None:
    rule = Rule(Conditions(battery_below=30), "lite")
    assert not rule.released(Reading(battery_percent=35))  # inside the 10-point margin
    assert rule.released(Reading(battery_percent=41))
    hot = Rule(Conditions(temperature_above=75), "lite")
    assert not hot.released(Reading(temperature_c=72))
    assert hot.released(Reading(temperature_c=69))


def test_charging_is_a_condition() -> None:
    rule = Rule(Conditions(battery_below=30, charging=False), "lite")
    assert rule.applies(LOW)
    assert not rule.applies(Reading(battery_percent=20.0, charging=True))


def test_policy_text_round_trips() -> None:
    text = ('{"rules": [{"when": {"memory_below_mb": 200}, "use": "lite", '
            '"leave": {"memory_above_mb": 400}}], "dwell_s": 2}')
    policy = parse_policy(text)
    assert policy == Policy.from_dict(policy.to_dict())
    assert policy.rules[0].leave == Conditions(memory_above_mb=400)
