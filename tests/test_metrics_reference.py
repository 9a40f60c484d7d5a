"""docs/OPERATIONS.md lists every metric both sides export, generated from the exporters, so
the list cannot drift from the code; and the example alert rules use only metrics that exist."""

from __future__ import annotations

import re

from tests import metrics_reference


def test_committed_metric_list_is_what_the_exporters_give() -> None:
    committed = metrics_reference.OPERATIONS_MD.read_text(encoding="utf-8")

    assert committed == metrics_reference.render(committed), (
        "docs/OPERATIONS.md is stale: run `python -m tests.metrics_reference`"
    )


def test_every_metric_the_alert_rules_use_is_exported() -> None:
    listed = set(re.findall(r"^\| `([a-z_]+)` \|", metrics_reference.generated(), re.M))
    rules = (metrics_reference.OPERATIONS_MD.parent / "satchel-alerts.rules.yml").read_text()

    used = set(re.findall(r"\b(satchel_[a-z_]+|process_[a-z_]+)", rules))
    histogram_parts = {name.rsplit("_", 1)[0] for name in used
                       if name.endswith(("_bucket", "_sum", "_count"))}
    assert used and (used - {n for n in used if n.rsplit("_", 1)[0] in histogram_parts}
                     | histogram_parts) <= listed


def test_manager_and_agent_name_the_http_status_alike() -> None:
    manager, agent = (metrics_reference.table(f()) for f in (
        metrics_reference.manager_families, metrics_reference.agent_families))

    for table in (manager, agent):
        row = next(r for r in table.splitlines() if r.startswith("| `satchel_http_requests_total`"))
        assert "`code`" in row and "`endpoint`" in row and "status" not in row.split("|")[3]
