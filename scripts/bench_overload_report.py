#!/usr/bin/env python3
"""JSON arithmetic for scripts/bench-overload.sh (standard library only).

  field REPORT KEY[.KEY...]          print one field of a shardpay-bench JSON report
  record --kind K --target T ...     print one runs.jsonl line (the report and what the script knows)
  report --runs R --meta M --json J --md M [--check]
                                     the summary JSON, the Markdown report, the PASS/FAIL table on
                                     stdout (--check: one line `overload PASS|FAIL ...`); exit
                                     status 0 if every verdict passed, 1 if not
"""

import argparse
import json
import statistics
import sys

GOODPUT_MIN_SHARE = 0.90  # of capacity, at 2x, admission control on
P99_GROWTH_MAX = 2.0  # ok p99 at 2x over ok p99 at 0.5x
RECOVERY_MAX_S = 5.0
RECOVERY_P99_FACTOR = 2.0  # a recovered second: ok p99 at most this times the baseline, no shed


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def get(obj, dotted):
    for key in dotted.split("."):
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def cmd_field(args):
    value = get(load(args.report), args.key)
    print("" if value is None else value)


def cmd_record(args):
    report = load(args.report) if args.report else None
    line = {
        "kind": args.kind,
        "target": args.target,
        "factor": float(args.factor) if args.factor else None,
        "rate": float(args.rate) if args.rate else None,
        "exit_status": int(args.exit_status) if args.exit_status not in (None, "") else None,
        "note": args.note or None,
        "client_command": args.client_command,
        "server_command": args.server_command,
        "server_died": args.server_died == "1",
        "report": report,
    }
    print(json.dumps(line))


def row_of(run, capacity):
    r = run["report"] or {}
    ok = r.get("requests_per_second")
    server = r.get("server_cpu") or {}
    return {
        "target": run["target"],
        "factor": run["factor"],
        "offered_per_second": run["rate"],
        "sent_per_second": r.get("sent_per_second"),
        "ok_per_second": ok,
        "goodput_share_of_capacity": (ok / capacity) if (ok is not None and capacity) else None,
        "shed_per_second": r.get("shed_per_second"),
        "ok_p50_us": get(r, "latency_us.p50"),
        "ok_p99_us": get(r, "latency_us.p99"),
        "shed_p99_us": get(r, "shed_latency_us.p99") if r.get("shed") else None,
        "server_cpu_us_per_answer": server.get("cpu_us_per_answer"),
        "server_cores_busy": server.get("cores_busy"),
        "client_send_lag_p99_us": get(r, "client_send_lag_us.p99"),
        "errors": r.get("errors"),
        "exit_status": run["exit_status"],
        "note": run["note"],
    }


def recovery_of(probe, overload):
    """Recovery time of the probe's timeline after the overload client's load ended.

    Both reports carry load_started_monotonic_ns (CLOCK_MONOTONIC of the same machine), so the
    overload's start and end are placed on the probe's timeline exactly, whenever their set-ups
    ended."""
    out = {"ok": False}
    if not probe or not overload or not probe.get("timeline"):
        out["why"] = "the probe or the overload client produced no report (or no timeline)"
        return out
    timeline = probe["timeline"]
    start = (overload["load_started_monotonic_ns"] - probe["load_started_monotonic_ns"]) / 1e9
    end = start + overload["warmup_s"] + overload["duration_s"]
    warmup = probe["warmup_s"]
    before = [e["ok_p99_us"] for e in timeline
              # (a few ms of tolerance: the two clients' starts are set from the wall clock)
              if e["second"] >= warmup and e["second"] + 1 <= start + 0.01 and e["ok_p99_us"] is not None]
    out.update({
        "overload_start_s": round(start, 3),
        "overload_end_s": round(end, 3),
        "probe_seconds": len(timeline),
        "baseline_seconds": len(before),
    })
    if not before:
        out["why"] = (f"no whole probe second between its warm-up ({warmup:g} s) and the overload's "
                      f"start ({start:.2f} s) to take a baseline from")
        return out
    baseline = statistics.median(before)
    limit = RECOVERY_P99_FACTOR * baseline
    out["baseline_ok_p99_us"] = baseline
    out["limit_ok_p99_us"] = limit

    def good(e):
        return (e["ok"] > 0 and e["shed"] == 0 and e["errors"] == 0
                and e["ok_p99_us"] is not None and e["ok_p99_us"] <= limit)

    def first_good_of(good):
        """The first second from which every later second is good (None: not even the last)."""
        first = None
        for e in reversed(timeline):
            if not good(e):
                break
            first = e["second"]
        return first

    first_good = first_good_of(good)
    # Diagnostic only (not the verdict): the same rule on latency alone, shed and errors ignored.
    latency_only = first_good_of(lambda e: e["ok"] > 0 and e["ok_p99_us"] is not None and e["ok_p99_us"] <= limit)
    out["recovery_latency_only_s"] = None if latency_only is None else max(0.0, round(latency_only - end, 3))
    out["probe_shed_share_before_overload"] = (
        sum(e["shed"] for e in timeline if e["second"] + 1 <= start + 0.01)
        / max(1, sum(e["ok"] + e["shed"] for e in timeline if e["second"] + 1 <= start + 0.01)))
    out["probe_seconds_after_overload"] = round(len(timeline) - end, 3)
    if first_good is None:
        last = timeline[-1]
        out["why"] = (f"not recovered: the probe's last second (ok p99 {fmt(last['ok_p99_us'])} µs, limit "
                      f"{fmt(limit)} µs; shed {last['shed']}; errors {last['errors']}) does not meet the rule; "
                      f"on latency alone (shed ignored) recovery took {out['recovery_latency_only_s']} s; the probe "
                      f"was shed {100 * out['probe_shed_share_before_overload']:.0f}% before the overload")
        out["recovered_at_s"] = None
        out["recovery_s"] = None
        return out
    out["recovered_at_s"] = first_good
    out["recovery_s"] = max(0.0, round(first_good - end, 3))
    out["ok"] = True
    return out


def fmt(value, digits=0, suffix=""):
    if value is None:
        return "—"
    return f"{value:,.{digits}f}{suffix}".replace(",", " ")


def cmd_report(args):
    runs = [json.loads(line) for line in open(args.runs) if line.strip()]
    meta = json.load(open(args.meta))
    capacity_run = next((r for r in runs if r["kind"] == "capacity"), None)
    capacity = get(capacity_run, "report.requests_per_second") if capacity_run else None
    rows = [row_of(r, capacity) for r in runs if r["kind"] == "factor"]
    probe = next((r for r in runs if r["kind"] == "probe"), None)
    overload = next((r for r in runs if r["kind"] == "overload"), None)
    recovery = recovery_of(probe and probe["report"], overload and overload["report"]) if probe else None

    def row(target, factor):
        return next((x for x in rows if x["target"] == target and x["factor"] == factor), None)

    verdicts = []
    at2, at05 = row("shardpay", 2.0), row("shardpay", 0.5)
    good = at2 and at2["ok_per_second"]
    verdicts.append({
        "check": f"goodput at 2x >= {GOODPUT_MIN_SHARE:.0%} of C",
        "pass": bool(good and capacity and at2["ok_per_second"] >= GOODPUT_MIN_SHARE * capacity),
        "detail": (f"{fmt(at2['ok_per_second'])} ok/s = {fmt(100 * at2['ok_per_second'] / capacity, 1)}% of "
                   f"C = {fmt(capacity)}") if good and capacity else "no run",
    })
    p2 = at2 and at2["ok_p99_us"]
    p05 = at05 and at05["ok_p99_us"]
    verdicts.append({
        "check": f"ok p99 at 2x <= {P99_GROWTH_MAX:g} x ok p99 at 0.5x",
        "pass": bool(p2 and p05 and p2 <= P99_GROWTH_MAX * p05),
        "detail": (f"{fmt(p2)} µs vs {fmt(p05)} µs ({p2 / p05:.1f}x)") if p2 and p05 else "no run",
    })
    if recovery is not None:
        rs = recovery.get("recovery_s")
        verdicts.append({
            "check": f"recovery <= {RECOVERY_MAX_S:g} s",
            "pass": bool(recovery["ok"] and rs is not None and rs <= RECOVERY_MAX_S),
            "detail": (f"{rs:g} s (baseline ok p99 {fmt(recovery['baseline_ok_p99_us'])} µs, overload "
                       f"{recovery['overload_start_s']:.2f}-{recovery['overload_end_s']:.2f} s of the probe, "
                       f"good from second {recovery['recovered_at_s']})") if recovery["ok"]
            else recovery.get("why", "no recovery"),
        })
    bad_runs = [r for r in runs if r["exit_status"] not in (0, None) or r["server_died"] or r["report"] is None]
    passed = all(v["pass"] for v in verdicts)

    summary = {
        "tool": "bench-overload.sh",
        "name": meta.get("name", ""),
        "date": meta.get("date", ""),
        "scenario": meta.get("scenario", ""),
        "meta": meta,
        "capacity_ok_per_second": capacity,
        "rows": rows,
        "recovery": recovery,
        "verdicts": verdicts,
        "pass": passed,
        "failed_runs": len(bad_runs),
        "runs": runs,
    }
    with open(args.json, "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")

    # Markdown.
    md = []
    md.append(f"# Overload: {meta.get('scenario')}, {meta.get('date')}\n")
    md.append(f"Command: `{meta.get('command')}`\n")
    md.append(f"Machine: {meta.get('machine')}. Git: {meta.get('git')}. Started {meta.get('started')}, "
              f"finished {meta.get('finished')}.\n")
    md.append(
        f"Server: `target/release/shardpay serve --config config/bench.toml --shards 1 --cpus {meta.get('server_cpu')}` "
        f"under `taskset -c {meta.get('server_cpu')}`, `SHARDPAY_STORAGE_DURABILITY=none`, a fresh `mktemp -d` data "
        f"directory per server start, one fresh server per (target, run). Targets: `shardpay` (admission control "
        f"on{', SHARDPAY_OVERLOAD_QUEUE_DELAY_TARGET_US=' + meta['target_us'] if meta.get('target_us') else ', defaults'}) "
        f"and `shardpay-noshed` (`SHARDPAY_OVERLOAD_ENABLED=false`). Client: `taskset -c {meta.get('client_cpu')} "
        f"target/release/shardpay-bench --cpus {meta.get('client_cpu')}`, scenario {meta.get('scenario')}, "
        f"-c {meta.get('connections')} -d {meta.get('depth')}, {meta.get('users')} users, "
        f"{meta.get('warmup')} s warm-up + {meta.get('duration')} s measured per run.\n")
    md.append(f"Capacity C (closed loop, shardpay-noshed): **{fmt(capacity)} ok/s**.\n")
    md.append("## Verdicts\n")
    md.append("| check | result | detail |\n|---|---|---|")
    for v in verdicts:
        md.append(f"| {v['check']} | {'PASS' if v['pass'] else '**FAIL**'} | {v['detail']} |")
    md.append("")
    for target in dict.fromkeys(x["target"] for x in rows):
        md.append(f"## {target}\n")
        md.append("| factor | offered/s | sent/s | ok/s | % of C | shed/s | ok p50 µs | ok p99 µs | shed p99 µs "
                  "| server CPU-µs/answer | server cores busy | client send lag p99 µs | errors |")
        md.append("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        for x in (x for x in rows if x["target"] == target):
            share = x["goodput_share_of_capacity"]
            md.append(
                f"| {x['factor']:g} | {fmt(x['offered_per_second'])} | {fmt(x['sent_per_second'])} "
                f"| {fmt(x['ok_per_second'])} | {fmt(share * 100 if share is not None else None, 1)} "
                f"| {fmt(x['shed_per_second'])} | {fmt(x['ok_p50_us'])} | {fmt(x['ok_p99_us'])} "
                f"| {fmt(x['shed_p99_us'])} | {fmt(x['server_cpu_us_per_answer'], 2)} "
                f"| {fmt(x['server_cores_busy'], 2)} | {fmt(x['client_send_lag_p99_us'], 1)} "
                f"| {x['errors'] if x['errors'] is not None else '—'}{' ⚠ ' + x['note'] if x['note'] else ''} |")
        md.append("")
    if recovery is not None:
        md.append("## Recovery (shardpay)\n")
        md.append(
            "One server; a probe client at 0.25·C (`-c 16 -d 16`, `--timeline`) and an overload client at 2·C, "
            "both open loop on the client CPU, each with its own users; both sign up their users first and then "
            "wait for a common `--start-at-unix-ms` so their set-ups do not fall into the measurement. The "
            "overload's start and end are placed on the probe's timeline from the two reports' "
            "`load_started_monotonic_ns` (the same CLOCK_MONOTONIC), not from the intended times. Baseline: the "
            "median of the probe's per-second ok p99 over the whole seconds after its warm-up and before the "
            "overload started. Recovery: from the overload's end to the first second from which every later "
            f"second has ok answers, no shed, no error and ok p99 <= {RECOVERY_P99_FACTOR:g}x the baseline.\n")
        md.append("```\n" + json.dumps({k: v for k, v in recovery.items()}, indent=1) + "\n```\n")
        tl = get(probe, "report.timeline") or []
        if tl:
            md.append("| probe second | ok | shed | errors | ok p50 µs | ok p99 µs |\n|--:|--:|--:|--:|--:|--:|")
            for e in tl:
                md.append(f"| {e['second']} | {e['ok']} | {e['shed']} | {e['errors']} | {fmt(e['ok_p50_us'])} "
                          f"| {fmt(e['ok_p99_us'])} |")
            md.append("")
    md.append("## Notes\n")
    md.append("- Durability is off (`SHARDPAY_STORAGE_DURABILITY=none`): this test is about the CPU; the fdatasync "
              "latency of this VM's disk swings from 0.3 to 70 ms and would drown the queueing delay being measured.")
    md.append("- ok = correct answers; shed = 503 with `error.code == \"overloaded\"` (counted apart, not errors); "
              "latencies are open loop, from each request's due time. sent/s below offered/s means the client could "
              "not write the schedule: every connection had its `-d` requests in flight, so requests waited in the "
              "client (that wait is in the latencies; the send lag counts only the client's own lateness).")
    md.append("- Server CPU-µs/answer: the server's CPU time over the window per answer (ok + shed); cores busy: "
              "that CPU time over the window.")
    for n in meta.get("notes", []):
        md.append(f"- {n}")
    if bad_runs:
        md.append(f"- ⚠ {len(bad_runs)} run(s) failed or had errors; see the JSON's runs.")
    md.append(f"\nRaw outputs: `{meta.get('raw')}`. Chart: `{meta.get('png')}`.\n")
    with open(args.md, "w") as f:
        f.write("\n".join(md))

    if args.check:
        detail = "; ".join(f"{v['check']}: {'ok' if v['pass'] else 'FAIL'} ({v['detail']})" for v in verdicts)
        print(f"overload {'PASS' if passed else 'FAIL'} {detail}")
    else:
        print(f"{'check':<42} {'result':<6} detail")
        for v in verdicts:
            print(f"{v['check']:<42} {'PASS' if v['pass'] else 'FAIL':<6} {v['detail']}")
    return 0 if passed else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("field")
    p.add_argument("report")
    p.add_argument("key")
    p = sub.add_parser("record")
    for name in ("kind", "target", "factor", "rate", "report", "exit-status", "note", "client-command",
                 "server-command", "server-died"):
        p.add_argument("--" + name, default="")
    p = sub.add_parser("report")
    p.add_argument("--runs", required=True)
    p.add_argument("--meta", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--md", required=True)
    p.add_argument("--check", action="store_true")
    args = parser.parse_args()
    if args.command == "field":
        cmd_field(args)
    elif args.command == "record":
        cmd_record(args)
    else:
        sys.exit(cmd_report(args))


if __name__ == "__main__":
    main()
