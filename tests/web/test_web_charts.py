"""Server-side SVG charts: well-formed, escaped, rollbacks marked, limits drawn."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone

from satchel.manager import charts
from satchel.manager.charts import Marker, Point

T0 = datetime(2026, 3, 2, 0, 0, tzinfo=timezone.utc)
NS = "{http://www.w3.org/2000/svg}"


def _parse(svg: str) -> ET.Element:
    return ET.fromstring(svg.replace("<svg ", f'<svg xmlns="{NS[1:-1]}" ', 1))


def _series(n: int, value: float = 2.0) -> list[Point]:
    return [Point(T0 + timedelta(hours=h), value + h % 3) for h in range(n)]


def test_each_rollback_is_a_vertical_marker_with_its_reason() -> None:
    markers = [Marker(T0 + timedelta(hours=5), "rollback", "1.1.0 health: error rate 0.4")]
    svg = charts.line_chart(
        "c", "Latency p95", _series(12), unit=charts.MILLISECONDS, markers=markers
    )
    root = _parse(svg)
    groups = [g for g in root.iter(f"{NS}g") if "rollback-marker" in g.get("class", "")]
    assert len(groups) == 1
    line = groups[0].find(f"{NS}line")
    assert line is not None and line.get("x1") == line.get("x2")
    assert "health: error rate 0.4" in (groups[0].findtext(f"{NS}title") or "")
    assert len([p for p in root.iter(f"{NS}path") if p.get("class") == "point"]) == 12


def test_markers_stay_inside_the_time_axis_and_in_time_order() -> None:
    points = _series(10)
    early, late = T0 + timedelta(hours=1), T0 + timedelta(hours=9)
    svg = charts.line_chart(
        "c", "x", points, unit=charts.MILLISECONDS, markers=[Marker(late, "b"), Marker(early, "a")]
    )
    xs = [
        float(line.get("x1", "").rstrip("%"))
        for g in _parse(svg).iter(f"{NS}g")
        for line in g.iter(f"{NS}line")
    ]
    assert len(xs) == 2 and xs[0] < xs[1]
    assert all(0 < x < 100 for x in xs)


def test_every_text_is_escaped() -> None:
    evil = "</text><script>alert(1)</script>"
    svg = charts.line_chart(
        'c"<', evil, _series(3), unit=charts.PERCENT, markers=[Marker(T0, evil, evil)]
    )
    assert "<script>" not in svg
    _parse(svg)  # still well-formed


def test_no_samples_says_so_and_still_marks_rollbacks() -> None:
    empty = charts.line_chart("c", "Error rate", [], unit=charts.PERCENT)
    assert "No health samples yet" in empty
    _parse(empty)
    marked = charts.line_chart(
        "c", "Error rate", [], unit=charts.PERCENT, markers=[Marker(T0, "rollback")]
    )
    assert "No health samples yet" in marked and "rollback-marker" in marked


def test_limit_line_is_drawn_and_axis_covers_it() -> None:
    svg = charts.line_chart(
        "c",
        "Error rate",
        [Point(T0, 0.01), Point(T0 + timedelta(1), 0.0)],
        unit=charts.PERCENT,
        limit=0.05,
    )
    assert 'class="limit"' in svg and "limit 5%" in svg
    labels = [t.text for t in _parse(svg).iter(f"{NS}text") if "y-label" in t.get("class", "")]
    assert labels[-1] is not None and float(labels[-1].rstrip("%")) >= 5


def test_rate_axis_never_goes_past_100_percent() -> None:
    svg = charts.line_chart("c", "Error rate", [Point(T0, 1.0)], unit=charts.PERCENT)
    labels = [t.text for t in _parse(svg).iter(f"{NS}text") if "y-label" in t.get("class", "")]
    assert labels[-1] == "100%"


def test_nice_ceiling_rounds_up_to_one_two_two_and_a_half_or_five() -> None:
    assert [charts.nice_ceiling(v) for v in (0.03, 1.2, 2.2, 4.0, 7.0, 120.0)] == [
        0.05,
        2.0,
        2.5,
        5.0,
        10.0,
        200.0,
    ]


def test_a_single_instant_gets_an_hour_of_axis() -> None:
    start, end = charts.time_range([Point(T0, 1.0)], [])  # type: ignore[misc]
    assert end - start == timedelta(hours=1)
    assert charts.time_range([], []) is None
