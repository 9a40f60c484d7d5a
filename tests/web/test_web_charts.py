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


def test_a_minute_of_data_fills_the_axis_instead_of_an_hour() -> None:
    minute = [Point(T0 + timedelta(seconds=10 * i), 0.1) for i in range(7)]
    start, end = charts.time_range(minute, [])  # type: ignore[misc]
    assert timedelta(seconds=60) <= end - start < timedelta(seconds=70)
    svg = charts.line_chart("c", "x", minute, unit=charts.PERCENT)
    labels = [t.text or "" for t in _parse(svg).iter(f"{NS}text") if t.get("class") == "axis-label"]
    assert any(label.count(":") == 2 for label in labels)  # seconds on a short axis


def test_a_single_instant_gets_a_minute_of_axis() -> None:
    start, end = charts.time_range([Point(T0, 1.0)], [])  # type: ignore[misc]
    assert end - start == timedelta(minutes=1)
    assert charts.time_range([], []) is None


def test_a_window_shows_its_span_ending_at_the_newest_data_and_drops_older_points() -> None:
    day = _series(24)
    span = charts.time_range(day, [], window_s=3600)
    assert span is not None
    assert span[0] == T0 + timedelta(hours=22)
    svg = charts.line_chart("c", "x", day, unit=charts.MILLISECONDS, span=span)
    assert len([p for p in _parse(svg).iter(f"{NS}path") if p.get("class") == "point"]) == 2


def test_each_release_is_its_own_line_in_its_own_colour() -> None:
    old = charts.Series("1.0.0", _series(5, 0.0), 0)
    bad = charts.Series("1.1.0 (rolled back)", [Point(T0 + timedelta(hours=5), 0.3)], 1)
    svg = charts.line_chart("c", "NaN/Inf rate", unit=charts.PERCENT, series=[old, bad])
    groups = {g.get("data-series"): g.get("class") for g in _parse(svg).iter(f"{NS}g")}
    assert groups["1.0.0"] == "series-0"
    assert groups["1.1.0 (rolled back)"] == "series-1"
    assert "1.1.0 (rolled back): 1 samples, latest 30%" in svg


def test_the_breach_that_caused_a_rollback_is_a_labelled_point() -> None:
    at = T0 + timedelta(hours=5)
    svg = charts.line_chart(
        "c",
        "NaN/Inf rate",
        _series(5, 0.0),
        unit=charts.PERCENT,
        markers=[Marker(at, "rollback 1.1.0")],
        breaches=[charts.Breach(at, 0.3, "NaN/Inf 30% > 0%: 1.1.0 rolled back")],
        limit=0.05,
    )
    root = _parse(svg)
    rings = [p for p in root.iter(f"{NS}path") if p.get("class") == "breach-ring"]
    assert len(rings) == 1
    labels = [t.text for t in root.iter(f"{NS}text") if t.get("class") == "breach-label"]
    assert labels == ["NaN/Inf 30% > 0%: 1.1.0 rolled back"]
    y_labels = [t.text for t in root.iter(f"{NS}text") if "y-label" in t.get("class", "")]
    assert float((y_labels[-1] or "0").rstrip("%")) >= 30  # the axis reaches the breach
