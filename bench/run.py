"""`make bench`: run every benchmark and write docs/BENCHMARKS.md with the measured ratios.

Each benchmark compares against a stock tool or a baseline measured in the same run, so the
ratios hold on a noisy shared machine where absolute timings do not.
Run: `python -m bench.run [--only NAME ...] [--quick]`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "BENCHMARKS.md"
RESULTS = ROOT / "bench" / "out" / "results.json"

# name -> (module, full arguments, quick arguments)
BENCHES: dict[str, tuple[str, list[str], list[str]]] = {
    "bundle": ("bench.bench_bundle", ["--mb", "200", "--big-mb", "1024", "--repeat", "3"],
               ["--mb", "50", "--big-mb", "256", "--repeat", "1"]),
    "install": ("bench.bench_install", [], []),
    "hotswap": ("bench.bench_hotswap", [], []),
    "checkin-postgres": ("bench.bench_checkin", ["--db", "postgres", "--devices", "100000"],
                         ["--db", "postgres", "--seconds", "8"]),
    "checkin-sqlite": ("bench.bench_checkin", ["--db", "sqlite"],
                       ["--db", "sqlite", "--seconds", "8"]),
}


def run_one(module: str, args: list[str]) -> dict[str, Any]:
    """Run a benchmark module in its own process; return its JSON output."""
    workdir = ROOT / "bench" / "out"
    workdir.mkdir(parents=True, exist_ok=True)
    extra = ["--workdir", str(workdir)] if module == "bench.bench_bundle" else []
    proc = subprocess.run([sys.executable, "-m", module, *args, *extra], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    start = proc.stdout.find("{")
    return json.loads(proc.stdout[start:])


def _f(x: Any, digits: int = 2) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) else str(x)


def render_bundle(r: dict[str, Any]) -> list[str]:
    p, u = r["pack"], r["verify_unpack"]
    lines = [
        "## Bundle format (issue 2)",
        "",
        "`python -m bench.bench_bundle`: a float32 weights payload (normal values, as a real "
        "model; zstd gains ~7% on it), page cache warm for both sides.",
        "",
        "| measure | Satchel | stock baseline | ratio (goal >= 1) |",
        "|---|---|---|---|",
        f"| pack {p['payload_mb']:.0f} MB payload vs `tar \\| zstd -3 -T0` + `sha256sum` | "
        f"{_f(p['satchel_mb_s'], 0)} MB/s | {_f(p['stock_mb_s'], 0)} MB/s | "
        f"**{_f(p['ratio'])}x** |",
        f"| verify + unpack, fsync'd (what the agent does) vs `zstd -d \\| sha256sum` | "
        f"{_f(u['satchel_fsync_mb_s'], 0)} MB/s | {_f(u['stock_mb_s'], 0)} MB/s | "
        f"**{_f(u['ratio_fsync'])}x** |",
        f"| verify + unpack, no fsync vs `zstd -d \\| sha256sum` | "
        f"{_f(u['satchel_nofsync_mb_s'], 0)} MB/s | {_f(u['stock_mb_s'], 0)} MB/s | "
        f"{_f(u['ratio_nofsync'])}x |",
    ]
    if "rss_1gb" in r:
        m = r["rss_1gb"]
        lines += [
            "",
            f"Peak RSS of verify + unpack of a {m['bundle_mb']:.0f} MB bundle in a fresh process: "
            f"**{_f(m['peak_rss_mb'], 1)} MB** (goal <= 64 MB; the interpreter with the "
            f"`bundles` imports alone: {_f(m['interpreter_baseline_rss_mb'], 1)} MB), "
            f"{_f(m['mb_s'], 0)} MB/s.",
        ]
    lines += [
        "",
        "Verification reads the file twice: pass 1 hashes every compressed member (nothing is "
        "decompressed before the signature and all member hashes check out); pass 2 "
        "decompresses on one thread while another hashes and writes, starting writeback "
        "every 16 MiB so the final fsync is short.",
    ]
    return lines


def render_install(r: dict[str, Any]) -> list[str]:
    keys = {k: v for k, v in r.items() if isinstance(v, (int, float))}
    lines = [
        "## Agent install (issue 3)",
        "",
        "`python -m bench.bench_install`: everything an install does except the smoke test "
        "itself (verify, unpack with fsync, journal, switch, prune) against "
        "`zstd -d | sha256sum` over the same payload, in the same run. Goal: < 2x.",
        "",
        "| measure | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {_f(v, 4)} |" for k, v in keys.items()]
    return lines


def render_hotswap(r: dict[str, Any]) -> list[str]:
    g, sw, br = r["goals"], r["swap"], r["breach"]
    lines = [
        "## Hot swap and health rollback on the device (issue 5)",
        "",
        f"`python -m bench.bench_hotswap`: {r['model']}; steady predict load from client "
        f"threads while {sw['swaps']} releases are installed by the CLI in its own process.",
        "",
        "| measure | value | goal |",
        "|---|---|---|",
        f"| failed requests during swaps | **{g['failed_requests_during_swaps']['value']}** "
        f"of {sw['during_swaps']['requests']} | 0 |",
        f"| longest pause between responses during swaps | "
        f"**{_f(g['longest_pause_ms']['value'], 1)} ms** (no swap: "
        f"{_f(sw['baseline_no_swap']['longest_gap_ms'], 1)} ms) | < 50 ms |",
        f"| health breach -> previous release serving | median "
        f"{_f(br['breach_to_previous_serving_ms_median'], 0)} ms, **max "
        f"{_f(br['breach_to_previous_serving_ms_max'], 0)} ms** over {br['repeats']} | < 1 s |",
        f"| release load + warm-up | {_f(sw['release_load_and_warmup_ms_median'], 1)} ms "
        "(median) | |",
    ]
    over = r["overhead"]
    base = over["in_process_us"]
    lines += [
        "",
        f"Per-request overhead of the server against calling the runtime in-process "
        f"({_f(base['median'], 1)} us median), {over['requests']} requests from "
        f"{over['client']}:",
        "",
        "| transport | round trip median | overhead median | overhead p95 |",
        "|---|---|---|---|",
    ]
    for name, v in over.items():
        if isinstance(v, dict) and "overhead_median_us" in v:
            lines.append(
                f"| {name} | {_f(v['round_trip_median_us'], 0)} us | "
                f"{_f(v['overhead_median_us'], 0)} us | {_f(v['overhead_p95_us'], 0)} us |"
            )
    return lines


def render_checkin(r: dict[str, Any]) -> list[str]:
    db = r.get("db", "?")
    server, load = r.get("server", {}), r.get("loadgen", {})
    cpu = r.get("cpu_ms_per_checkin", {})
    goal = db == "postgres"
    rate, p99 = r["checkins_per_s"], r["p99_ms"]
    verdict = ("**met**" if rate >= 1700 and p99 < 200 else "**not met in this run**") if goal \
        else "(the goal is set on PostgreSQL)"
    return [
        f"## Manager check-ins on {'PostgreSQL' if db == 'postgres' else 'SQLite'} (issue 4)",
        "",
        f"`python -m bench.bench_checkin --db {db}`: the real `satchel serve` "
        f"({server.get('name')}, {server.get('workers')} worker(s) x {server.get('threads')} "
        f"threads) under load from {load.get('name')} in a separate process, "
        f"{load.get('connections')} keep-alive connections, {r['devices']:,} enrolled devices "
        f"already checked in once, {r['event_ratio']:.0%} of check-ins carrying a new event. "
        "Goal: >= 1,700 check-ins/s with p99 < 200 ms on PostgreSQL.",
        "",
        "| check-ins/s | p50 | p90 | p99 | errors | goal |",
        "|---|---|---|---|---|---|",
        f"| **{rate:,.0f}** | {r['p50_ms']} ms | {r['p90_ms']} ms | **{p99} ms** | "
        f"{r['errors']} | {verdict} |",
        "",
        f"CPU per check-in: server {cpu.get('server')} ms"
        + (f", PostgreSQL {cpu.get('postgres')} ms" if goal else "")
        + f", load generator {cpu.get('loadgen')} ms; cores busy with other processes during "
        f"the run: {r.get('other_cores_busy')} of {r.get('cores')}. The limit is the CPU of "
        "the two cores (the server's Python, "
        + ("PostgreSQL, " if goal else "")
        + "the load generator)"
        + (f"; commits are synchronous (synchronous_commit "
           f"{r.get('postgres_synchronous_commit') or 'on, the default'})." if goal
           else "; SQLite writes one at a time, so one worker serves best."),
    ]


def render_generic(name: str, r: dict[str, Any]) -> list[str]:
    return [f"## {name}", "", "```json", json.dumps(r, indent=2), "```"]


RENDERERS = {
    "bundle": render_bundle,
    "install": render_install,
    "hotswap": render_hotswap,
    "checkin-postgres": render_checkin,
    "checkin-sqlite": render_checkin,
}


def render(results: dict[str, dict[str, Any]]) -> str:
    head = [
        "# Benchmarks",
        "",
        f"Measured by `make bench` (`python -m bench.run`) on {platform.machine()}, "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}. Ratios compare with a stock tool or baseline measured "
        "in the same run; absolute numbers vary with the machine's load.",
        "",
    ]
    body: list[str] = []
    for name, r in results.items():
        if "error" in r:
            body += [f"## {name}", "", f"Not measured: {r['error']}", ""]
            continue
        body += RENDERERS.get(name, lambda r, n=name: render_generic(n, r))(r) + [""]
    return "\n".join(head + body)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--only", nargs="*", choices=sorted(BENCHES))
    p.add_argument("--quick", action="store_true", help="smaller inputs, one repeat")
    args = p.parse_args(argv)
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results: dict[str, dict[str, Any]] = dict(previous)
    for name, (module, full, quick) in BENCHES.items():
        if args.only and name not in args.only:
            continue
        if importlib.util.find_spec(module) is None:
            continue
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        results[name] = run_one(module, quick if args.quick else full)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    OUT.write_text(render({k: results[k] for k in BENCHES if k in results}))
    print(f"wrote {OUT.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
