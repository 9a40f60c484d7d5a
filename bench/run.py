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
    "install": ("bench.bench_install", [], ["--hidden", "12500", "--rounds", "1"]),
    "coldstart": ("bench.bench_coldstart", [], ["--rounds", "3"]),
    "hotswap": ("bench.bench_hotswap", [], []),
    "variants": ("bench.bench_variants", [], ["--requests", "500", "--picks", "5000",
                                              "--switches", "6"]),
    "staging": ("bench.bench_staging", [], ["--seconds", "2", "--phases", "2", "--repeats", "2"]),
    "serving": ("bench.bench_serving", [], ["--seconds", "4", "--probe-seconds", "2"]),
    "batch-costs": ("bench.batch_costs", [], ["--seconds", "0.5"]),
    "checkin-postgres": ("bench.bench_checkin", ["--db", "postgres", "--devices", "100000"],
                         ["--db", "postgres", "--seconds", "8"]),
    "build": ("bench.bench_build", ["--mb", "200", "--repeat", "3"],
              ["--mb", "50", "--repeat", "1"]),
    "checkin-sqlite": ("bench.bench_checkin", ["--db", "sqlite"],
                       ["--db", "sqlite", "--seconds", "8"]),
    "dashboard": ("bench.bench_dashboard", ["--db", "both", "--repeat", "15"],
                  ["--db", "both", "--devices", "10000", "--repeat", "5"]),
    "delta": ("bench.bench_delta", [], ["--dims", "512,4096,4096,512,10"]),
    "encryption": ("bench.bench_encryption", ["--mb", "200", "--repeat", "5"],
                   ["--mb", "50", "--repeat", "2"]),
    "scaleout": ("bench.bench_scaleout", ["--devices", "100000", "--mb", "256"],
                 ["--devices", "10000", "--seconds", "8", "--mb", "64", "--repeat", "3"]),
}


def run_one(module: str, args: list[str]) -> dict[str, Any]:
    """Run a benchmark module in its own process; return its JSON output."""
    workdir = ROOT / "bench" / "out"
    workdir.mkdir(parents=True, exist_ok=True)
    with_workdir = ("bench.bench_bundle", "bench.bench_encryption")
    extra = ["--workdir", str(workdir)] if module in with_workdir else []
    proc = subprocess.run([sys.executable, "-m", module, *args, *extra], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    start = proc.stdout.find("{")
    return json.loads(proc.stdout[start:])


def _f(x: Any, digits: int = 2) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) else str(x)


def _idle(x: dict[str, Any]) -> str:
    return f"{x['idle_share']:.0%}" if "idle_share" in x else "?"


def _cpu(x: dict[str, Any]) -> str:
    return f" (CPU {_f(x['cpu_ratio'])}x)" if "cpu_ratio" in x else ""


def _verdict(ok: Any) -> str:
    return "met" if ok else "**not met in this run**"


def render_bundle(r: dict[str, Any]) -> list[str]:
    p, u = r["pack"], r["verify_unpack"]
    ours_u = u["one_read"]
    lines = [
        "## Bundle format (issues 2 and 14)",
        "",
        "`python -m bench.bench_bundle`: a float32 weights payload (normal values, as a real "
        f"model; zstd gains ~7% on it), {p['payload_mb']:.0f} MB, page cache warm for every side, "
        "each side's median of the runs. Anchors are the fastest stock way to do the same work: "
        "`openssl dgst -sha256` (not coreutils `sha256sum`, ~2.5x slower than the SHA-256 "
        "Satchel uses) and `zstd -d` straight from the payload member to a file. The idle "
        "column is the share of the machine's CPUs idle while each side ran (Satchel / anchor); "
        "CPU is Satchel's CPU seconds over the anchor's, which holds when neighbours are busy.",
        "",
        "| measure | Satchel | anchor | ratio | goal | idle |",
        "|---|---|---|---|---|---|",
        f"| pack vs `tar \\| zstd -3 -T0` + `openssl dgst -sha256` of the payload | "
        f"{_f(p['satchel']['mb_s'], 0)} MB/s | {_f(p['anchor']['mb_s'], 0)} MB/s | "
        f"**{_f(p['ratio'])}x** as fast{_cpu(p)} | >= 1x: {_verdict(p['ok'])} | "
        f"{_idle(p['satchel'])} / {_idle(p['anchor'])} |",
        f"| verify + unpack, fsync'd, one read (what the agent does) vs `openssl dgst -sha256` "
        f"over the bundle + `zstd -d` to a file + fsync | {_f(ours_u['mb_s'], 0)} MB/s | "
        f"{_f(u['anchor']['mb_s'], 0)} MB/s | **{_f(u['time_ratio'])}x** the time{_cpu(u)} | "
        f"<= 1.5x: {_verdict(u['ok'])} | {_idle(ours_u)} / {_idle(u['anchor'])} |",
        f"| the same, two reads (a bundle without chunk index) | "
        f"{_f(u['two_reads']['mb_s'], 0)} MB/s | {_f(u['anchor']['mb_s'], 0)} MB/s | "
        f"{_f(u['two_reads_time_ratio'])}x the time | | {_idle(u['two_reads'])} / "
        f"{_idle(u['anchor'])} |",
        f"| the same, one read, no fsync | {_f(u['one_read_nofsync']['mb_s'], 0)} MB/s | "
        f"{_f(u['anchor']['mb_s'], 0)} MB/s | {_f(u['nofsync_time_ratio'])}x the time | | "
        f"{_idle(u['one_read_nofsync'])} / {_idle(u['anchor'])} |",
    ]
    rauc = r.get("rauc", {})
    if "extract_fsync" in rauc:
        lines += [
            f"| pack vs RAUC `rauc bundle` (plain squashfs, zstd -3) | "
            f"{_f(p['satchel']['mb_s'], 0)} MB/s | {_f(rauc['bundle']['mb_s'], 0)} MB/s | "
            f"{_f(rauc['pack_ratio'])}x as fast | | {_idle(p['satchel'])} / "
            f"{_idle(rauc['bundle'])} |",
            f"| verify + unpack vs `rauc extract` (signature over the whole bundle, then "
            f"unsquashfs) + fsync | {_f(ours_u['mb_s'], 0)} MB/s | "
            f"{_f(rauc['extract_fsync']['mb_s'], 0)} MB/s | {_f(rauc['unpack_time_ratio'])}x "
            f"the time | | {_idle(ours_u)} / {_idle(rauc['extract_fsync'])} |",
        ]
    elif rauc:
        lines += ["", f"RAUC anchor not measured: {rauc.get('error', '?')}."]
    if "rss_1gb" in r:
        m = r["rss_1gb"]
        lines += [
            "",
            f"Peak RSS of verify + unpack (one read, fsync'd) of a {m['bundle_mb']:.0f} MB bundle "
            f"in a fresh process: **{_f(m['peak_rss_mb'], 1)} MB** (goal <= 64 MB: "
            f"{_verdict(m['ok'])}; the interpreter with the `bundles` imports alone: "
            f"{_f(m['interpreter_baseline_rss_mb'], 1)} MB), {_f(m['run']['mb_s'], 0)} MB/s, "
            f"idle {_idle(m['run'])}.",
        ]
    if "machine" in r:
        lines += ["", f"Whole run: {r['machine']['cpus']} CPUs, idle "
                  f"{r['machine']['idle_share']:.0%}, other processes "
                  f"{r['machine']['others_share']:.0%}."]
    lines += [
        "",
        "One read: the signed manifest lists, for each payload, the sha256 of every chunk "
        "(1 MiB, more for bundles over 8 GiB) of its compressed member. The device checks the "
        "signature, then reads each member once, hashing each chunk and handing it to the "
        "zstd decoder only once it matches, so nothing unauthenticated is decompressed; a "
        "second thread hashes the decompressed content and writes it, starting writeback "
        "every 16 MiB so the final fsync is short. Bundles without the index are read twice "
        "(pass 1 hashes every compressed member, pass 2 decompresses).",
    ]
    return lines


def _goal(g: dict[str, Any]) -> str:
    return f"{g['goal']}: {'met' if g['ok'] else '**not met in this run**'}"


def _machine(m: dict[str, Any]) -> str:
    return (f"CPUs idle during the run: {m.get('idle_share', 0):.0%} of {m.get('cpus')}; other "
            f"processes used {m.get('others_share', 0):.0%} (before it: "
            f"{m.get('others_share_before', 0):.0%}).")


def render_install(r: dict[str, Any]) -> list[str]:
    lines = [
        "## Agent install of a 200 MB model (issues 3 and 14)",
        "",
        "`python -m bench.bench_install`: `satchel-agent install` of a float32 ONNX MLP with "
        "random weights, in a fresh process on a freshly initialised device, against the stock "
        "work of an image updater (`openssl dgst -sha256` over the bundle, `tar -xO | zstd -d` "
        "of every payload to a file, `sync`) plus one session load of the model in a fresh "
        "`python -c` that imports onnxruntime, and against `rauc install` of a plain RAUC "
        "bundle of the same model file into a file-backed slot. Medians of "
        f"{r['rounds']} interleaved rounds. Peak RSS from GNU time.",
        "",
        "| layout | model | install | anchor | ratio | goal | peak RSS | / model | goal | "
        "rauc install |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for layout in ("external", "single"):
        x = r.get(layout)
        if not x:
            continue
        m, ratios, goals = x["median"], x["ratios"], x["goals"]
        rauc = f"{_f(m['rauc_install_s'])} s" if "rauc_install_s" in m else "-"
        lines.append(
            f"| {'weights in external data' if layout == 'external' else 'one .onnx file'} | "
            f"{_f(x['model_mb'], 0)} MB | {_f(m['wall_s'])} s | {_f(x['anchor_s'])} s | "
            f"**{_f(ratios['install_vs_verify_copy_fsync_plus_session_load'])}x** | "
            f"{_goal(goals['time'])} | {_f(m['peak_rss_mb'], 0)} MB | "
            f"**{_f(ratios['peak_rss_vs_model'])}x** | {_goal(goals['peak_rss'])} | {rauc} |")
    lines += ["", "`satchel bundle build` ships a single-file ONNX model above 16 MB in the first "
              "layout (manager/external_data.py: onnxruntime maps the weights, so they are "
              "held once); the second is what a bundle packed by other means carries."]
    lines += ["", "Without the inferences its smoke test runs (samples, warm-up, timed runs), "
              "which the anchor does not do, the install takes "
              + ", ".join(f"{_f(r[k]['ratios']['install_without_smoke_runs_vs_anchor'])}x "
                          f"({k})" for k in ("external", "single") if k in r)
              + " the anchor's time."]
    lines += ["", "Where an install's time goes (seconds, medians):", "",
              "| layout | start + imports | verify | check (finds the runtime) | unpack + fsync | "
              "smoke test (session load) | activate | smoke-test memory growth |",
              "|---|---|---|---|---|---|---|---|"]
    for layout in ("external", "single"):
        x = r.get(layout)
        if not x:
            continue
        m = x["median"]
        lines.append(
            f"| {layout} | {_f(m['start_and_imports_s'])} | {_f(m['verify_s'])} | "
            f"{_f(m['check_s'])} | {_f(m['unpack_s'])} | {_f(m['smoke_test_s'])} "
            f"({_f(m['session_load_s'])}) | {_f(m['activate_s'])} | "
            f"{_f(m['smoke_memory_growth_mb'], 0)} MB |")
    if "rauc" in r:
        lines += ["", f"RAUC {r['rauc']}."]
    lines += ["", _machine(r.get("machine", {}))]
    return lines


def render_coldstart(r: dict[str, Any]) -> list[str]:
    ms, ratios, goals = r["median_ms"], r["ratios"], r["goals"]
    rows = [
        ("`python -c pass`", "python_pass"),
        ("`python -c 'import onnxruntime'`", "python_import_onnxruntime"),
        ("`satchel-agent status`", "agent_status"),
        ("`satchel-agent --help`", "agent_help"),
        ("`satchel-agent install` of a small bundle", "agent_install"),
        ("... of which its smoke test", "agent_install_smoke_test"),
        ("`satchel --help`", "admin_help"),
        ("`satchel keys init`", "admin_keys_init"),
        ("`satchel bundle verify` of a small bundle", "admin_bundle_verify"),
        ("`rauc install` of a small plain bundle (anchor)", "rauc_install"),
    ]
    lines = [
        "## Cold start of the command lines (issue 14)",
        "",
        "`python -m bench.bench_coldstart`: each command in a fresh process, interleaved, "
        f"median of {r['rounds']} rounds.",
        "",
        "| command | median |",
        "|---|---|",
    ]
    lines += [f"| {label} | {_f(ms[key], 0)} ms |" for label, key in rows if key in ms]
    lines += [
        "",
        "| ratio | value | goal |",
        "|---|---|---|",
        f"| status / `python -c pass` | **{_f(ratios['status_vs_python_pass'])}x** | "
        f"{_goal(goals['status_vs_python_pass'])} |",
        f"| install / (`import onnxruntime` + smoke test) | "
        f"**{_f(ratios['install_vs_import_onnxruntime_plus_smoke_test'])}x** | "
        f"{_goal(goals['install_vs_import_onnxruntime_plus_smoke_test'])} |",
        f"| `--help` / `python -c pass` | {_f(ratios['help_vs_python_pass'])}x | |",
    ]
    if "install_vs_rauc_install" in ratios:
        lines.append(f"| install / `rauc install` | {_f(ratios['install_vs_rauc_install'])}x | |")
    if "rauc" in r:
        lines += ["", f"RAUC {r['rauc']}."]
    lines += ["", _machine(r.get("machine", {}))]
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


def render_variants(r: dict[str, Any]) -> list[str]:
    p, rt, sw, m = r["pick"], r["round_trip"], r["switches"], r.get("machine", {})
    lines = [
        "## Variants: choosing the model per request, switching by device state (issue 20)",
        "",
        "`python -m bench.bench_variants`: one channel without variants and one with two "
        "(its default the same model), requests interleaved in the same run.",
        "",
        "| measure | value | goal |",
        "|---|---|---|",
        f"| choosing by device state, server side | {_f(p['state_only']['median_ns'], 0)} ns "
        "(median) | |",
        f"| choosing by max_latency_ms and accuracy_level | {_f(p['both']['median_ns'], 0)} ns "
        "(median) | |",
        f"| round trip, no variants | {_f(rt['no_variants']['median_us'], 0)} us (median) | |",
        f"| round trip, variants by state | {_f(rt['variants_by_state']['median_us'], 0)} us "
        f"({_f(rt['variants_by_state']['over_no_variants_median_us'], 0)} us more) | |",
        f"| round trip, variants by request | {_f(rt['variants_by_request']['median_us'], 0)} us "
        f"({_f(rt['variants_by_request']['over_no_variants_median_us'], 0)} us more) | |",
        f"| failed requests during {sw['switches']} switches | **{sw['failed']}** of "
        f"{sw['requests']} | 0 |",
        f"| longest pause between responses, switching | {_f(sw['longest_gap_ms'], 1)} ms (no "
        f"switch: {_f(sw['baseline_no_switch']['longest_gap_ms'], 1)} ms) | |",
    ]
    return lines + ["", f"Machine: idle {_idle(m)}, others took {m.get('others_share', '?')} "
                        "of the CPUs."]


def render_serving(r: dict[str, Any]) -> list[str]:
    lines = [
        "## Serving against MLServer (issue 14)",
        "",
        f"`python -m bench.bench_serving`: each server in its own process on 127.0.0.1, load "
        f"from {r['load']}; {r['mlserver']}; both on onnxruntime, intra-op threads per run: "
        f"{r.get('runtime_threads')}.",
        "",
        "| model | server | clients | requests/s | p50 | p90 | p99 | p99/p50 | peak RSS | "
        "ready after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in r["models"].values():
        for server in ("satchel", "mlserver"):
            if server not in m:
                continue
            s = m[server]
            for key in sorted(k for k in s if k.startswith("c") and k[1:].isdigit()):
                c = s[key]
                lines.append(
                    f"| {m['model']} ({m['model_mb']} MB) | {server} | {c['connections']} | "
                    f"{c['rps']:,.0f} | {_f(c['p50_ms'])} ms | {_f(c['p90_ms'])} ms | "
                    f"{_f(c['p99_ms'])} ms | {_f(c['p99_over_p50'], 1)} | "
                    f"{_f(s['memory']['peak_rss_mb'], 0)} MB | {_f(s['startup_to_ready_s'])} s |"
                )
    lines += ["", "| goal | value | target | met |", "|---|---|---|---|"]
    for name, g in r.get("goals", {}).items():
        if isinstance(g, dict):
            lines.append(f"| {name} | {g['value']} | {g['goal']} | "
                         f"{'**yes**' if g['ok'] else '**no**'} |")
    shares = [m[s]["machine"]["others_share"] for m in r["models"].values()
              for s in ("satchel", "mlserver") if s in m]
    lines += ["", f"Share of the machine other processes used during the runs: at most "
              f"{max(shares, default=0):.0%} (p99 at one client is the first figure to suffer)."]
    if r.get("notes"):  # bench_serving.notes: the arithmetic of the ratio against MLServer
        lines += ["", *r["notes"]]
    return lines


def render_checkin(r: dict[str, Any]) -> list[str]:
    db = r.get("db", "?")
    server, load = r.get("server", {}), r.get("loadgen", {})
    goal = db == "postgres"
    machine = r.get("machine", {})
    limit = r.get("max_others")
    shares = (
        f"{_f(machine.get('idle_share', 0) * 100, 0)}% of the {machine.get('cpus', '?')} CPUs "
        f"idle, {_f(machine.get('others_share', 0) * 100, 0)}% used by other processes"
    )
    lines = [
        f"## Manager check-ins on {'PostgreSQL' if goal else 'SQLite'} (issues 4 and 14)",
        "",
        f"`python -m bench.bench_checkin --db {db}`: the real `satchel serve` "
        f"({server.get('name')}, {server.get('workers')} worker(s) x {server.get('threads')} "
        f"threads) under load from {load.get('name')} in a separate process, "
        f"{load.get('connections')} keep-alive connections, {r.get('devices', 0):,} enrolled "
        f"devices already checked in once, {r.get('event_ratio', 0):.0%} of check-ins carrying "
        "a new event. Goal: >= 1,700 check-ins/s with p99 < 200 ms on PostgreSQL. The figure "
        "that does not depend on the machine is the server's CPU per check-in (every `satchel "
        "serve` process, from /proc); rate and latency depend on the cores and on who else "
        "uses them, so every run records how busy the machine was and none is reported when "
        f"other processes took more than {_f((limit or 0) * 100, 0)}% of it.",
        "",
    ]
    if "refused" in r:
        tried = ", ".join(f"{_f(a['others_share'] * 100, 0)}%" for a in r.get("attempts", []))
        return lines + [
            f"**Not measured in this run**: {r['refused']} (other processes' share in each "
            f"attempt: {tried}).",
        ]
    cpu = r.get("cpu_ms_per_checkin", {})
    rate, p99 = r["checkins_per_s"], r["p99_ms"]
    verdict = ("**met**" if rate >= 1700 and p99 < 200 else "**not met in this run**") if goal \
        else "(the goal is set on PostgreSQL)"
    server_ms = r["server_cpu_s_per_checkin"] * 1000
    return lines + [
        "| check-ins/s | p50 | p90 | p99 | server CPU per check-in | errors | goal | machine |",
        "|---|---|---|---|---|---|---|---|",
        f"| **{rate:,.0f}** | {r['p50_ms']} ms | {r['p90_ms']} ms | **{p99} ms** | "
        f"**{_f(server_ms, 3)} ms** | {r['errors']} | {verdict} | {shares} |",
        "",
        "CPU per check-in besides the server's: "
        + (f"PostgreSQL {cpu.get('postgres')} ms, " if goal else "")
        + f"load generator {cpu.get('loadgen')} ms. The limit is the CPU of the two cores "
        "(the server's Python, "
        + ("PostgreSQL, " if goal else "")
        + "the load generator)"
        + (f"; commits are synchronous (synchronous_commit "
           f"{r.get('postgres_synchronous_commit') or 'on, the default'})." if goal
           else "; SQLite writes one at a time, so one worker serves best."),
    ]


def render_build(r: dict[str, Any]) -> list[str]:
    b, a, load, m = r["satchel"], r["anchor"], r["session_load"], r["machine"]
    phases = ", ".join(f"{k} {_f(v)}" for k, v in b["phases_s"].items() if k != "total")
    return [
        "## Bundle build (issue 14)",
        "",
        f"`python -m bench.bench_build`: `satchel bundle build` of a {r['model_mb']:.0f} MB ONNX "
        "model (an MLP, float32 He-normal weights inside the .onnx), run as a user types it "
        "(fresh process, cold start included, no `--reference`), against `tar -cf - model | "
        "zstd -3 -T0` plus `openssl dgst -sha256` of the model and of the bundle, interleaved, "
        f"medians of {r['repeat']}. The onnxruntime session load, which the build needs and "
        "no packer does, is measured alone in a fresh process and left out of the ratio: the "
        "session alone (the strict reading), and as a fresh process pays it, with the import "
        "of onnxruntime and numpy, which no packer needs either. "
        f"Machine idle {m['idle_share']:.0%}, others {m['others_share']:.0%}.",
        "",
        "| measure | value | goal |",
        "|---|---|---|",
        f"| build wall | {_f(b['wall_s'])} s (startup {_f(b['startup_s'])} s) | |",
        f"| session load alone (the model file, as the build loads it; shipped as "
        f"{r.get('shipped_layout', 'single file')}) | {_f(load['s'])} s (import "
        f"{_f(load['import_s'])} s), "
        f"peak RSS {_f(load['peak_rss_mb'], 0)} MB | |",
        f"| anchors | {_f(a['s'])} s (tar \\| zstd {_f(a['tar_zstd_s'])} s, sha256 "
        f"{_f(a['sha256_model_s'])} + {_f(a['sha256_bundle_s'])} s) | |",
        f"| (build - session load) / anchors | **{_f(r['ratio'])}x** | <= "
        f"{_f(r['goal_ratio_at_most'], 1)}x, {_verdict(r['ok_time'])} |",
        *([f"| (build - session load with the runtime's import) / anchors | "
           f"**{_f(r['ratio_cold_session'])}x** | <= {_f(r['goal_ratio_at_most'], 1)}x, "
           f"{_verdict(r['ok_time_cold_session'])} |"] if "ratio_cold_session" in r else []),
        f"| (build - session load - the model's runs) / anchors: the build's own overhead "
        f"(reference runs on the sample feeds, which give the host latency too, "
        f"{_f(r.get('model_runs_s'))} s, taken out too) | {_f(r.get('overhead_ratio'))}x | |",
        f"| CPU: (build - session load) / anchors | {_f(r.get('cpu_ratio'))}x "
        f"({_f(b.get('cpu_s'))} s vs {_f(a.get('cpu_s'))} s; what a busy machine distorts least) "
        "| |",
        f"| peak RSS / model size | **{_f(r['rss_ratio'])}x** ({_f(b['peak_rss_mb'], 0)} MB) | "
        f"<= {_f(r['goal_rss_ratio_at_most'], 1)}x, {_verdict(r['ok_rss'])} |",
        "",
        f"Phases inside the build (s; `pack` runs on its own thread beside load and run): "
        f"{phases}.",
    ]


def render_dashboard(r: dict[str, Any]) -> list[str]:
    names = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
    first = next(iter(r.values()), {})
    lines = [
        "## Fleet page with 10,000 devices (issue 16)",
        "",
        f"`python -m bench.bench_dashboard`: {first.get('devices', 0):,} devices seeded in bulk "
        f"SQL as check-ins leave them ({first.get('events', 0):,} events: hourly health, "
        "activations, rollbacks; 1% each rolled back, failing its health policy, not seen, "
        "never seen, on probation), a real `satchel serve` (one worker), GET of the fleet page "
        f"logged in, {first.get('repeat')} times each after a warm-up; median and p90. Goal: "
        "every median under 300 ms.",
        "",
        "| database | page | median | p90 | page size | goal | machine |",
        "|---|---|---|---|---|---|---|",
    ]
    for db, x in r.items():
        m = x.get("machine", {})
        shares = (f"idle {m.get('idle_share', 0):.0%}, others {m.get('others_share', 0):.0%} "
                  f"(before: {m.get('others_share_before', 0):.0%})")
        for name, p in x.get("pages", {}).items():
            ok = "met" if p["median_ms"] < x.get("goal_ms", 300) else "**not met in this run**"
            lines.append(f"| {names.get(db, db)} | {name} | **{p['median_ms']} ms** | "
                         f"{p['p90_ms']} ms | {p['bytes'] // 1024} KiB | {ok} | {shares} |")
    return lines


def render_scaleout(r: dict[str, Any]) -> list[str]:
    c, d = r.get("checkins", {}), r.get("downloads", {})
    lines = [
        "## Past one host: two managers, one PostgreSQL, an object store (issue 17)",
        "",
        "`python -m bench.bench_scaleout`: check-ins with one manager process (`satchel serve`, "
        "one worker), then with two on separate data dirs sharing one PostgreSQL, under the "
        f"same load (two wrk, {c.get('connections')} connections in all, "
        f"{c.get('devices', 0):,} settled devices, {c.get('event_ratio', 0):.0%} of check-ins "
        "with a new event); the rate is the sum of both generators, p50/p99 the worse of the "
        f"two. **This machine has {c.get('cores')} cores shared by both managers, PostgreSQL "
        "and the load generators: the ratio below shows what a second manager process costs "
        "here (overhead), not the speed-up a second host would give.**",
        "",
        "| managers | check-ins/s | p50 | p99 | server CPU per check-in | PostgreSQL CPU per "
        "check-in | errors | machine |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in ("one", "two"):
        x = c.get(key)
        if not x:
            continue
        m = x["machine"]
        lines.append(
            f"| {x['managers']} | **{x['checkins_per_s']:,.0f}** | {x['p50_ms']} ms | "
            f"**{x['p99_ms']} ms** | {_f(x['server_cpu_ms_per_checkin'], 3)} ms | "
            f"{_f(x['postgres_cpu_ms_per_checkin'], 3)} ms | {x['errors']} | idle "
            f"{m['idle_share']:.0%}, others {m['others_share']:.0%} |")
    if c:
        lines += ["", f"Two managers / one: {_f(c.get('rate_ratio'))}x the check-ins/s."]
    st = c.get("storage")
    if st:
        lines += [
            "",
            f"Storage (docs/SCALING.md sizes from it): one health sample (an event of kind "
            f"`health`, the agent's figures) takes **{st['bytes_per_health_sample']} bytes** "
            f"of the PostgreSQL events table with its indexes, over {st['rows']:,} inserted "
            f"through the check-in's INSERT ({st['insert_rows_per_s']:,} rows/s, 500 per "
            f"transaction); retention (`satchel db prune`) deleted them at "
            f"{st['prune_rows_per_s']:,} rows/s in batches of {st['prune_batch']:,}.",
        ]
    if "error" in d:
        return lines + ["", f"Downloads not measured: {d['error']}."]
    if d:
        mb, m = d["mb_s"], d["machine"]
        lines += [
            "",
            f"Downloads of a {_f(d['bundle_mb'], 0)} MB bundle from SeaweedFS (`weed server "
            f"-s3`), `curl` to /dev/null, medians of {d['repeat']}, interleaved; idle "
            f"{m['idle_share']:.0%}, others {m['others_share']:.0%}:",
            "",
            "| way | MB/s | vs plain curl from the store |",
            "|---|---|---|",
            f"| plain `curl` of the object from the store (the anchor) | {mb['store']} | 1x |",
            f"| device: manager answers 302 to a pre-signed URL, then the store | "
            f"{mb['presigned']} | **{_f(d['presigned_vs_store'])}x** |",
            f"| proxied by the manager (Range/ETag as from its folder) | {mb['proxied']} | "
            f"**{_f(d['proxied_vs_store'])}x** (manager CPU "
            f"{_f(d['manager_cpu_s_per_gb_proxied'])} s per GB) |",
        ]
    return lines


def render_generic(name: str, r: dict[str, Any]) -> list[str]:
    return [f"## {name}", "", "```json", json.dumps(r, indent=2), "```"]


def render_encryption(r: dict[str, Any]) -> list[str]:
    v = r["verify_unpack"]
    m = r.get("machine", {})
    return [
        "## Encrypted bundles (issue 19)",
        "",
        "`python -m bench.bench_encryption`: verify + unpack (one read, fsync'd, as a device "
        f"installs) of the same {r['payload_mb']:.0f} MB float32 payload, encrypted for one "
        "device (X25519 unwrap, AES-256-GCM in 64 KiB segments) and not, interleaved in one "
        "run; each side's median.",
        "",
        "| side | plain | encrypted | encrypted / plain |",
        "|---|---|---|---|",
        f"| verify + unpack, fsync'd | {_f(v['plain']['s'], 3)} s | "
        f"{_f(v['encrypted']['s'], 3)} s | **{_f(r['time_ratio'], 3)}x** |",
        f"| verify + unpack, no fsync | {_f(v['plain_nofsync']['s'], 3)} s | "
        f"{_f(v['encrypted_nofsync']['s'], 3)} s | {_f(r['time_ratio_nofsync'], 3)}x |",
        f"| pack | {_f(r['pack']['plain']['s'], 3)} s | {_f(r['pack']['encrypted']['s'], 3)} s"
        " | |",
        "",
        f"Goal at most {r['goal_time_ratio_at_most']}x: {_verdict(r['ok'])}. CPU "
        f"{_f(r['cpu_ratio'], 3)}x; peak RSS of an encrypted install in a fresh process "
        f"{_f(r['encrypted_peak_rss_mb'], 1)} MB; idle {_idle(m)}, others took "
        f"{m.get('others_share', '?')} of the CPUs.",
    ]


def render_delta(r: dict[str, Any]) -> list[str]:
    m = r.get("machine", {})
    lines = [
        "## Delta bundles (issue 19)",
        "",
        "`python -m bench.bench_delta`: a float32 MLP (layers "
        f"{r['dims'].replace(',', '-')}) and a copy whose last two layers were fine-tuned, and "
        "both requantized to INT8; the delta bundle against the full one, and `satchel-agent "
        "install` of each on a device that keeps the old release (fresh processes, median).",
        "",
        "| model | changed weights | full bundle | delta | delta / full | build full / delta "
        "| install full / delta | install peak RSS full / delta |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind in ("float32", "int8"):
        k = r.get(kind)
        if not k:
            continue
        b, f, d = k["build"], k["install_full"], k["install_delta"]
        lines.append(
            f"| {kind} {_f(k['model_mb'], 0)} MB | {k['changed_weight_share']:.1%} | "
            f"{_f(k['full_bundle_mb'], 1)} MB | {_f(k['delta_bundle_mb'], 1)} MB | "
            f"**{k['delta_share_of_full']:.1%}** | {_f(b['full_s'])} / {_f(b['delta_s'])} s | "
            f"{_f(f['wall_s'])} / {_f(d['wall_s'])} s | {_f(f['peak_rss_mb'], 0)} / "
            f"{_f(d['peak_rss_mb'], 0)} MB |")
    lines += ["", "Patch methods on the same pairs (each in its own process):", "",
              "| model | method | patch | build | build peak RSS | apply | apply peak RSS |",
              "|---|---|---|---|---|---|---|"]
    for kind in ("float32", "int8"):
        for method, x in (r.get(kind) or {}).get("methods", {}).items():
            if "apply_s" in x:
                lines.append(
                    f"| {kind} | {method} | {_f(x['patch_mb'])} MB | {_f(x['build_s'])} s | "
                    f"{_f(x['build_peak_rss_mb'], 0)} MB | {_f(x['apply_s'])} s | "
                    f"{_f(x['apply_peak_rss_mb'], 0)} MB |")
    goals = [f"{kind} {_verdict(r[kind]['goal']['ok'])}" for kind in ("float32", "int8")
             if kind in r]
    lines += ["", f"Goal delta at most 10% of the full bundle: {', '.join(goals)}; idle "
              f"{_idle(m)}, others took {m.get('others_share', '?')} of the CPUs."]
    return lines


def render_batch_costs(r: dict[str, Any]) -> list[str]:
    machine = r.get("machine", {})
    layouts = [k for k in r if k.startswith(("prepacked", "not prepacked"))]
    batches = list(next(iter(r[layouts[0]].values()))) if layouts else []
    lines = [
        "## What a batch costs the runtime (issue 14)",
        "",
        f"`python -m bench.batch_costs`: onnxruntime in-process on the {r.get('model')}, "
        f"{r.get('intra_op_threads')} intra-op thread per session, rows per second by batch "
        "size, one or two threads calling `run` on the same session. The agent maps large "
        "models' weights from the file; where one tensor holds over 1/8 of them (this "
        "model: one matrix) it runs them with prepacking off, so a batched product packs "
        "the weight matrix again: why the inference pool learns per model whether a batch "
        "pays (agent/server/batching.py) instead of batching whatever waits.",
        "",
        "| weights | callers | " + " | ".join(batches) + " |",
        "|---|---|" + "---|" * len(batches),
    ]
    for layout in layouts:
        for callers, by_batch in r[layout].items():
            single = by_batch.get("batch 1") or 1
            cells = [f"{v:,} ({v / single:.2f}x)" for v in by_batch.values()]
            lines.append(f"| {layout} | {callers} | " + " | ".join(cells) + " |")
    stack = r.get("stack")
    if stack:
        ways = [k for k in stack if k != "model"]
        lines += ["", f"A model of many like layers, {stack['model']}, loaded "
                  "by the agent's own loader (weights mapped from the file) in a fresh "
                  "process, prepacked as the agent decides (no tensor over 1/8 of the "
                  "weights) and with prepacking forced off:", "",
                  "| loading | grows by at its peak | grows by in use | " + " | ".join(batches)
                  + " |", "|---|---|---|" + "---|" * len(batches)]
        for way in ways:
            w = stack[way]
            lines.append(f"| {way} | {w['peak_growth_mib']} MiB | {w['in_use_growth_mib']} MiB | "
                         + " | ".join(f"{w[b]:,}" for b in batches) + " |")
    lines += ["", f"Rows/s (against batch 1). CPUs idle during the run: "
              f"{machine.get('idle_share', 0):.0%} of {machine.get('cpus', '?')}; other "
              f"processes used {machine.get('others_share', 0):.0%}."]
    return lines


RENDERERS = {
    "delta": render_delta,
    "encryption": render_encryption,
    "bundle": render_bundle,
    "install": render_install,
    "coldstart": render_coldstart,
    "hotswap": render_hotswap,
    "variants": render_variants,
    "serving": render_serving,
    "batch-costs": render_batch_costs,
    "checkin-postgres": render_checkin,
    "checkin-sqlite": render_checkin,
    "build": render_build,
    "dashboard": render_dashboard,
    "scaleout": render_scaleout,
}


# The heading each benchmark's section starts with: a benchmark with no result in this run's
# results.json (a fresh checkout, a run with --only) keeps its section of docs/BENCHMARKS.md
# as it is.
SECTION_HEADINGS: dict[str, str] = {
    "bundle": "## Bundle format",
    "install": "## Agent install",
    "coldstart": "## Cold start",
    "hotswap": "## Hot swap",
    "variants": "## Variants",
    "staging": "## staging",
    "serving": "## Serving against MLServer",
    "batch-costs": "## What a batch costs",
    "checkin-postgres": "## Manager check-ins on PostgreSQL",
    "build": "## Bundle build",
    "checkin-sqlite": "## Manager check-ins on SQLite",
    "dashboard": "## Fleet page",
    "delta": "## Delta bundles",
    "encryption": "## Encrypted bundles",
    "scaleout": "## Past one host",
}


def previous_sections(text: str) -> dict[str, list[str]]:
    """The sections of an existing docs/BENCHMARKS.md by benchmark name, trailing blanks cut."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("## "):
            name = next((n for n, h in SECTION_HEADINGS.items() if line.startswith(h)), None)
            current = sections.setdefault(name, []) if name else None
            if current is not None:
                current.clear()
        if current is not None:
            current.append(line)
    for lines in sections.values():
        while lines and not lines[-1].strip():
            lines.pop()
    return sections


def render(results: dict[str, dict[str, Any]], kept: dict[str, list[str]] | None = None) -> str:
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
    for name in BENCHES:
        if name not in results:
            if kept and name in kept:
                body += kept[name] + [""]
            continue
        r = results[name]
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
    kept = previous_sections(OUT.read_text()) if OUT.exists() else {}
    OUT.write_text(render({k: results[k] for k in BENCHES if k in results}, kept))
    print(f"wrote {OUT.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
