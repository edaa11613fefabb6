#!/usr/bin/env python3
"""The bookkeeping of scripts/bench.sh: one runs.jsonl line per run, then the summary JSON and the
Markdown report. Python 3 standard library only.

Subcommands (bench.sh calls them; each prints to standard output):
  record    one runs.jsonl line: shardpay-bench's JSON report of the run (under "report", null if
            the run wrote none) and what bench.sh knows (target, round, shards, rate label, server
            log, other load on the server CPUs, exit status, and for shardpay targets the growth of
            the write-ahead log's counters over the run, from /metrics scraped before and after)
  field     one top-level field of a shardpay-bench report (empty if absent)
  report    the summary JSON (medians over rounds per target, scenario, shards and rate) and the
            Markdown tables, from runs.jsonl and bench.sh's meta.txt; prints the Markdown
  failures  how many runs failed (errors, failed set-up, no correct answer, not run)

It never runs a benchmark and never changes a run's figures: medians and ratios only.
"""

import argparse
import json
import math
import os
import statistics
import sys

# Order of targets in ratio tables: the first of a pair is the numerator ("shardpay /
# shardpay-nosync": what durability costs; "shardpay / axum", "shardpay-nosync / axum", ...).
TARGET_ORDER = ["shardpay", "shardpay-nosync", "shardpay-scylla", "axum", "bare-glommio", "actix"]
SINGLE_CORE = {"bare-glommio", "actix"}
# A run whose client used more than this share of its CPUs was probably limited by the client.
CLIENT_BUSY_LIMIT = 0.9
# An open-loop run that answered less than this share of its offered rate did not keep up.
OFFERED_REACHED_MIN = 0.95
# Lines of a client's output quoted in the errors section.
OUTPUT_TAIL_LINES = 6
# shardpay's write-ahead log counters in /metrics (one line per shard, summed).
LOG_FRAMES_METRIC = "shardpay_log_frames_total"
LOG_BATCHES_METRIC = "shardpay_log_batches_total"
# Shown for a figure that does not apply or was not measured (a peer, an older shardpay).
ABSENT = "-"


# ------------------------------------------------------------------ record --

def metric_sum(path, name):
    """The sum of every sample of the Prometheus counter `name` (all label sets) in the text
    exposition at `path`; None if the file or the metric is absent."""
    if not path or not os.path.exists(path):
        return None
    total, found = 0, False
    with open(path, errors="replace") as f:
        for line in f:
            if not line.startswith(name):
                continue
            head, _, value = line.rstrip("\n").rpartition(" ")
            if head.split("{", 1)[0].strip() != name:
                continue  # another metric whose name starts with this one
            try:
                total += int(float(value))
            except ValueError:
                continue
            found = True
    return total if found else None


def log_growth(before_path, after_path):
    """Frames and batches the server's write-ahead log gained between two /metrics scrapes, and
    frames per batch (records per fsync with durability fsync); Nones where not measured."""
    growth = {}
    for key, name in (("frames", LOG_FRAMES_METRIC), ("batches", LOG_BATCHES_METRIC)):
        before, after = metric_sum(before_path, name), metric_sum(after_path, name)
        growth[key] = None if before is None or after is None else after - before
    frames, batches = growth["frames"], growth["batches"]
    per_batch = round(frames / batches, 2) if frames is not None and batches else None
    return {"frames": frames, "batches": batches, "records_per_fsync": per_batch}


def cmd_record(args):
    report = None
    if args.report and os.path.exists(args.report):
        with open(args.report) as f:
            report = json.load(f)
    wall_s = int(args.wall_ns or 0) / 1e9
    other_load = None
    server_s = None
    if wall_s > 0 and args.busy_ticks != "" and args.server_ticks != "":
        clk = int(args.clk_tck)
        server_s = int(args.server_ticks) / clk
        # Busy time of the server CPUs not spent in the server, in cores (1.0 = one core busy).
        other_load = round(max(0.0, int(args.busy_ticks) / clk - server_s) / wall_s, 4)
    line = {
        "seq": int(args.seq),  # position in the whole run, 1-based
        "round": int(args.round),
        "target": args.target,
        "scenario": args.scenario,  # bench.sh's name (pipelined = plaintext with --depth)
        # shardpay's shards, axum's worker threads, 1 for the single-core peers.
        "shards": int(args.shards),
        "shards_label": args.shards_label,
        "rate": args.rate,  # "peak", "50%" or requests/s as given
        "mode": args.mode,  # "closed" or "open"
        "offered_rate_per_second": float(args.offered) if args.offered else None,
        # shardpay-bench's exit status; null: not run (see note).
        "exit_status": int(args.exit_status) if args.exit_status != "" else None,
        "note": args.note or None,
        "server_log": args.server_log,
        "client_output": args.client_output,
        "client_command": args.client_command,
        # Over the whole client invocation (set-up, warm-up, measured window).
        "wall_s": round(wall_s, 3),
        "server_cpu_s": None if server_s is None else round(server_s, 3),
        "other_load": other_load,
        # shardpay targets: growth of shardpay_log_frames_total and shardpay_log_batches_total
        # (summed over shards) over the whole client invocation (set-up, warm-up and measured
        # window), and their ratio; null for the peers, or when /metrics lacks them.
        "log": log_growth(args.metrics_before, args.metrics_after),
        "report": report,
    }
    print(json.dumps(line, ensure_ascii=False))


def cmd_field(args):
    with open(args.report) as f:
        value = json.load(f).get(args.name)
    print("" if value is None else value)


# ------------------------------------------------------------------ helpers --

def load_runs(path):
    with open(path) as f:
        runs = [json.loads(line) for line in f if line.strip()]
    runs.sort(key=lambda r: r["seq"])
    return runs


def load_meta(path):
    meta = {"note": []}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            key, _, value = line.partition("=")
            if key == "note":
                meta["note"].append(value)
            else:
                meta[key] = value
    return meta


def dig(obj, *keys):
    for key in keys:
        if obj is None:
            return None
        obj = obj.get(key)
    return obj


def failure(run):
    """Why a run's figures are not valid (None if they are)."""
    report = run.get("report")
    if run.get("exit_status") is None:
        return run.get("note") or "not run"
    if report is None:
        why = f"shardpay-bench exit status {run['exit_status']}, no report"
        return why + (f"; {run['note']}" if run.get("note") else "")
    reasons = []
    if report.get("errors", 0):
        reasons.append(f"{report['errors']} error(s)")
    if report.get("failed", 0):
        reasons.append(f"{report['failed']} failed request(s)")
    if not report.get("ok", 0):
        reasons.append("no correct answer")
    if run.get("note"):
        reasons.append(run["note"])
    if run["exit_status"] != 0 and not reasons:
        reasons.append(f"shardpay-bench exit status {run['exit_status']}")
    return "; ".join(reasons) or None


def median(values, ndigits=3):
    v = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return None if not v else round(statistics.median(v), ndigits)


def fmt(value, spec=".1f", none="n/a"):
    return none if value is None else format(value, spec)


def spread(values, spec=".2f"):
    # Rounded as median() rounds, so that a one-round min–max prints like its median.
    v = [round(x, 3) for x in values if x is not None]
    if not v:
        return "n/a"
    if len(v) == 1:
        return format(v[0], spec)
    return f"{format(min(v), spec)}–{format(max(v), spec)}"


def rate_sort_key(rate, rates):
    return rates.index(rate) if rate in rates else len(rates)


def tail(path, lines):
    try:
        with open(path, errors="replace") as f:
            return [l.rstrip("\n") for l in f.readlines()[-lines:]]
    except OSError:
        return []


# ------------------------------------------------------------------ report --

def run_figures(run):
    """The figures of one run, for the summary's per_round list."""
    report = run.get("report")
    return {
        "round": run["round"],
        "seq": run["seq"],
        "valid": failure(run) is None,
        "offered_rate_per_second": run.get("offered_rate_per_second"),
        "requests_per_second": dig(report, "requests_per_second"),
        "server_cpu_us_per_request": dig(report, "server_cpu", "cpu_us_per_request"),
        "server_user_us_per_request": dig(report, "server_cpu", "user_us_per_request"),
        "server_system_us_per_request": dig(report, "server_cpu", "system_us_per_request"),
        "server_cores_busy": dig(report, "server_cpu", "cores_busy"),
        "client_cpu_us_per_request": dig(report, "client_cpu", "cpu_us_per_request"),
        "client_cores_busy": dig(report, "client_cpu", "cores_busy"),
        # Open loop: how late the client wrote requests after their due time (in the latencies).
        "client_send_lag_p99_us": dig(report, "client_send_lag_us", "p99"),
        "latency_us": {p: dig(report, "latency_us", p) for p in ("p50", "p90", "p99", "p999", "max")},
        "ok": dig(report, "ok"),
        "errors": dig(report, "errors"),
        "failed": dig(report, "failed"),
        "other_load": run.get("other_load"),
        "log_frames": dig(run, "log", "frames"),
        "log_batches": dig(run, "log", "batches"),
        "log_records_per_fsync": dig(run, "log", "records_per_fsync"),
        "failure": failure(run),
    }


def summarize(runs, meta):
    targets = meta["targets"].split(",")
    scenarios = meta["scenarios"].split(",")
    rates = meta["rates"].split(",")
    groups = {}
    for run in runs:
        key = (run["target"], run["scenario"], run["shards"], run["rate"])
        groups.setdefault(key, []).append(run)
    keys = sorted(groups, key=lambda k: (targets.index(k[0]) if k[0] in targets else 99,
                                         scenarios.index(k[1]) if k[1] in scenarios else 99,
                                         k[2], rate_sort_key(k[3], rates)))
    results = []
    for key in keys:
        rs = groups[key]
        per_round = [run_figures(r) for r in rs]
        # Medians over the rounds whose run was valid; invalid runs are still listed per round.
        good = [f for f in per_round if f["valid"]]
        col = lambda name: [f[name] for f in good]
        client_cpu = median(col("client_cpu_us_per_request"))
        results.append({
            "target": key[0],
            "scenario": key[1],
            "shards": key[2],
            "shards_label": rs[0].get("shards_label"),
            "rate": key[3],
            "mode": rs[0]["mode"],
            "rounds": len(rs),
            "valid_rounds": len(good),
            "offered_rate_per_second": median(col("offered_rate_per_second"), 1),
            "requests_per_second": median(col("requests_per_second"), 1),
            # Open loop: answered / offered (median over rounds); below OFFERED_REACHED_MIN the
            # server or the client could not keep up, and latency includes the growing backlog.
            "offered_rate_reached": median(
                [f["requests_per_second"] / f["offered_rate_per_second"] for f in good
                 if f["requests_per_second"] is not None and f["offered_rate_per_second"]]),
            "server_cpu_us_per_request": median(col("server_cpu_us_per_request")),
            "server_user_us_per_request": median(col("server_user_us_per_request")),
            "server_system_us_per_request": median(col("server_system_us_per_request")),
            "server_cores_busy": median(col("server_cores_busy")),
            "client_cpu_us_per_request": client_cpu,
            # What one client core could drive at this cost: 1e6 / client CPU-µs per request.
            "client_capacity_per_core": None if not client_cpu else round(1e6 / client_cpu, 1),
            "client_cores_busy": median(col("client_cores_busy")),
            "client_send_lag_p99_us": median(col("client_send_lag_p99_us"), 1),
            "latency_us": {p: median([f["latency_us"][p] for f in good], 1)
                           for p in ("p50", "p90", "p99", "p999")},
            "errors": sum(f["errors"] or 0 for f in per_round),
            "failed": sum(f["failed"] or 0 for f in per_round),
            "failed_runs": len(per_round) - len(good),
            "other_load_max": max((f["other_load"] for f in per_round if f["other_load"] is not None),
                                  default=None),
            # shardpay targets: log frames per group-commit batch over each run (set-up and
            # warm-up included), median over rounds; per fdatasync with durability fsync, per
            # write without one for shardpay-nosync. null: a peer, or no log metrics.
            "log_records_per_fsync": median(col("log_records_per_fsync"), 2),
            "per_round": per_round,
        })
    return results


def ratio_rows(results):
    """Per pair of targets, scenario, shards and rate: per-round ratios of server CPU-µs/req and of
    requests/s. A single-core peer is compared with every shard count of the other target."""
    present = [t for t in TARGET_ORDER if any(r["target"] == t for r in results)]
    rows = []
    for i, num in enumerate(present):
        for den in present[i + 1:]:
            for a in (r for r in results if r["target"] == num):
                for b in (r for r in results if r["target"] == den):
                    same_shards = (a["shards"] == b["shards"] or num in SINGLE_CORE
                                   or den in SINGLE_CORE)
                    if a["scenario"] == b["scenario"] and a["rate"] == b["rate"] and same_shards:
                        rows.append(pair_row(num, den, a, b))
    return rows


def pair_row(num, den, a, b):
    rounds_a = {f["round"]: f for f in a["per_round"] if f["valid"]}
    rounds_b = {f["round"]: f for f in b["per_round"] if f["valid"]}
    cpu, rps = [], []
    for k in sorted(set(rounds_a) & set(rounds_b)):
        x, y = rounds_a[k]["server_cpu_us_per_request"], rounds_b[k]["server_cpu_us_per_request"]
        cpu.append(x / y if x and y else None)
        x, y = rounds_a[k]["requests_per_second"], rounds_b[k]["requests_per_second"]
        rps.append(x / y if x and y else None)
    return {"pair": f"{num} / {den}", "scenario": a["scenario"],
            "shards_pair": f"{a['shards_label']} / {b['shards_label']}",
            "rate": a["rate"], "cpu": cpu, "rps": rps}


def ratio_cell(values):
    v = [x for x in values if x is not None]
    if not v:
        return "n/a"
    return f"{statistics.median(v):.2f} [{min(v):.2f}–{max(v):.2f}]"


def log_cell(log):
    """A run's log growth: "frames / batches = records per fsync", or ABSENT."""
    frames, batches = dig(log, "frames"), dig(log, "batches")
    if frames is None or batches is None:
        return ABSENT
    per = dig(log, "records_per_fsync")
    return f"{frames} / {batches}" + (f" = {per:.1f}" if per is not None else "")


def markdown(results, ratios, runs, meta):
    rounds = int(meta["rounds"])
    targets = meta["targets"].split(",")
    other_limit = float(meta["other_load_max"])
    client_cpus = meta["client_cpus"].split(",")
    L = []
    L.append(f"# Benchmark {meta['name']}, {meta['date']}")
    L.append("")
    L.append(f"Command: `{meta['command']}`")
    L.append("")
    L.append(f"Machine: {meta['machine']}. Git: {meta['git']}. Client: {meta['client']}. "
             f"Started {meta['started']}, finished {meta['finished']}.")
    L.append("")
    rotation = "; ".join(
        f"round {k}: " + " ".join(targets[(i + k - 1) % len(targets)] for i in range(len(targets)))
        for k in range(1, min(rounds, len(targets)) + 1))
    L.append(
        f"Server on CPU {meta['server_cpus']} (`taskset`, all threads; shardpay `--shards N --cpus "
        f"{meta['server_cpus']}` with `{meta.get('shardpay_config', 'config/bench.toml')}`"
        + (", shardpay-nosync the same with `SHARDPAY_STORAGE_DURABILITY=none`"
           if "shardpay-nosync" in targets else "")
        + ", axum `--threads N`), client "
        f"`shardpay-bench` on CPU {meta['client_cpus']} ({len(client_cpus)} thread(s)), "
        f"{meta['connections']} connections, {meta['warmup_s']} s warm-up + {meta['duration_s']} s "
        f"measured per run, {meta['users']} users set up per run for balance/payments/mixed"
        + (f", pipelined = depth {meta['pipeline_depth']}" if "pipelined" in meta["scenarios"] else "")
        + (", shard-aware connections (shardpay)" if meta.get("shard_aware") == "1" else "")
        + (f", cross-shard ratio {meta['cross_shard_ratio']}" if meta.get("cross_shard_ratio") else "")
        + ".")
    if meta.get("data_parent"):
        L.append("")
        L.append("shardpay's write-ahead log: a fresh, empty data directory for every server start, "
                 f"below `{meta['data_parent']}` ({meta.get('data_fs', 'unknown')} file system), "
                 "deleted when the server stopped.")
    L.append("")
    L.append(
        f"{rounds} round(s), interleaved with the target order rotated every round ({rotation}"
        + (", and so on" if rounds > len(targets) else "")
        + "). One fresh server per (round, scenario, shards, target): the peak run (closed loop), "
        "then the rate runs (open loop; P% = of that round's peak). Figures are medians over "
        "the rounds whose run was valid, min–max in the CPU column; latency in µs (open loop: "
        "from each request's due time). Raw outputs: `" + meta["raw"] + "/`.")
    if meta["note"]:
        L.append("")
        L.append("Notes:")
        L.append("")
        for n in meta["note"]:
            L.append(f"- {n}")

    L.append("")
    L.append("## Results")
    L.append("")
    L.append("| target | scenario | shards | rate | offered req/s | requests/s | server CPU-µs/req | min–max "
             "| user | sys | server cores busy | client CPU-µs/req | p50 | p90 | p99 | p99.9 "
             "| records/fsync | errors | other load (max) |")
    L.append("|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in results:
        good = [f for f in r["per_round"] if f["valid"]]
        flag_other = (r["other_load_max"] or 0) > other_limit
        errors = r["errors"] + r["failed"]
        err_cell = str(errors)
        if r["failed_runs"]:
            err_cell += f" ⚠ {r['failed_runs']}/{r['rounds']} run(s) invalid"
        lat = r["latency_us"]
        reached = r["offered_rate_reached"]
        behind = reached is not None and reached < OFFERED_REACHED_MIN
        L.append(
            f"| {r['target']} | {r['scenario']} | {r['shards_label']} | {r['rate']} "
            f"| {fmt(r['offered_rate_per_second'], '.0f', '—')} | {fmt(r['requests_per_second'], '.0f')}"
            f"{' ⚠ behind' if behind else ''} "
            f"| {fmt(r['server_cpu_us_per_request'], '.2f')} "
            f"| {spread([f['server_cpu_us_per_request'] for f in good])} "
            f"| {fmt(r['server_user_us_per_request'], '.2f')} | {fmt(r['server_system_us_per_request'], '.2f')} "
            f"| {fmt(r['server_cores_busy'], '.2f')} | {fmt(r['client_cpu_us_per_request'], '.2f')} "
            f"| {fmt(lat['p50'], '.0f')} | {fmt(lat['p90'], '.0f')} | {fmt(lat['p99'], '.0f')} "
            f"| {fmt(lat['p999'], '.0f')} | {fmt(r['log_records_per_fsync'], '.1f', ABSENT)} "
            f"| {err_cell} "
            f"| {fmt(None if r['other_load_max'] is None else r['other_load_max'] * 100, '.1f')}%"
            f"{' ⚠' if flag_other else ''} |")
    L.append("")
    L.append("Server CPU = utime + stime of the server process (all threads) over the measured "
             "window, from /proc/PID/stat, per correct answer; user and sys split it. \"Server "
             "cores busy\" is that CPU time over the window (1.00 = one core): below the number "
             "of server CPUs at peak means the server was not the limit (the client or the "
             "connections were). \"Other load\" is busy time of the server CPUs not spent in the "
             f"server, in % of a core, the largest over the rounds; above {other_limit:.0%} the run "
             "was disturbed (⚠). \"⚠ behind\": an open-loop run answered less than "
             f"{OFFERED_REACHED_MIN:.0%} of its offered rate (the server or the client could not "
             "keep up), so its latency includes a growing backlog. In open loop the server and "
             "the client may poll while idle, so CPU-µs/req below peak load is not a per-request "
             "cost; compare CPU-µs/req at peak. \"Records/fsync\" (shardpay targets): "
             f"`{LOG_FRAMES_METRIC}` / `{LOG_BATCHES_METRIC}`, summed over the shards, grown over "
             "the whole client run (its set-up, warm-up and measured window: /metrics is read "
             "before and after), median over rounds: log records per group-commit batch, i.e. "
             "per fdatasync with durability fsync (per write without one for shardpay-nosync); "
             f"\"{ABSENT}\": a peer, no log writes, or a server without these metrics.")

    L.append("")
    L.append("## Ratios")
    L.append("")
    if ratios:
        L.append("Each ratio is taken within one round (both runs in the same round), then "
                 "median [min–max] over rounds. Server CPU-µs/req: below 1 means the first "
                 "target spends less CPU per request. Requests/s: above 1 means the first "
                 "target answered more. Single-core peers are compared with every shard count "
                 "of the other target.")
        L.append("")
        L.append("| ratio | scenario | shards | rate | server CPU-µs/req | requests/s | CPU ratio per round |")
        L.append("|---|---|---|---|--:|--:|--:|")
        for row in ratios:
            each = ", ".join(fmt(v, ".2f") for v in row["cpu"]) or "n/a"
            L.append(f"| {row['pair']} | {row['scenario']} | {row['shards_pair']} | {row['rate']} "
                     f"| {ratio_cell(row['cpu'])} | {ratio_cell(row['rps'])} | {each} |")
    else:
        L.append("(none: needs two targets with the same scenario and rate)")

    L.append("")
    L.append("## Client")
    L.append("")
    L.append("The load generator's own CPU per correct answer, and the rate one client core could "
             "drive at that cost (10⁶ / client CPU-µs per request). At peak, client cores busy "
             f"near the {len(client_cpus)} client CPU(s) means the client, not the server, set the "
             "pace (⚠). Open loop: the send lag is how late the client wrote requests after their "
             "due time (p99, µs); it is included in the latencies, and a large one means the "
             "client could not keep its schedule.")
    L.append("")
    L.append("| target | scenario | shards | rate | client CPU-µs/req | capacity (req/s per client core) "
             "| client cores busy | requests/s | send lag p99 (µs) |")
    L.append("|---|---|---|---|--:|--:|--:|--:|--:|")
    for r in results:
        busy = r["client_cores_busy"]
        bound = busy is not None and r["mode"] == "closed" and busy >= CLIENT_BUSY_LIMIT * len(client_cpus)
        L.append(f"| {r['target']} | {r['scenario']} | {r['shards_label']} | {r['rate']} "
                 f"| {fmt(r['client_cpu_us_per_request'], '.2f')} "
                 f"| {fmt(r['client_capacity_per_core'], '.0f')} "
                 f"| {fmt(busy, '.2f')}{' ⚠' if bound else ''} | {fmt(r['requests_per_second'], '.0f')} "
                 f"| {fmt(r['client_send_lag_p99_us'], '.0f', '—')} |")

    L.append("")
    L.append("## Errors")
    L.append("")
    bad = [r for r in runs if failure(r)]
    if not bad:
        L.append("None: every run answered every request correctly.")
    else:
        L.append(f"**{len(bad)} of {len(runs)} run(s) failed; their figures are left out of the "
                 "medians and are not valid.**")
        for r in bad:
            L.append("")
            L.append(f"- run {r['seq']}, round {r['round']}: {r['target']} / {r['scenario']} / "
                     f"{r['shards_label']} / {r['rate']}: {failure(r)}. Server log: "
                     f"`{r['server_log']}`; client output: `{r['client_output']}`.")
            for kind, e in sorted((dig(r, "report", "errors_by_kind") or {}).items()):
                L.append(f"  - `{kind}`: {e['count']} × — first: {e['example']}")
            if r.get("report") is None and r.get("exit_status") is not None:
                lines = tail(r["client_output"], OUTPUT_TAIL_LINES)
                if lines:
                    L.append("")
                    L.append("  ```")
                    L.extend("  " + l for l in lines)
                    L.append("  ```")
    disturbed = [r for r in runs if (r.get("other_load") or 0) > other_limit]
    if disturbed:
        L.append("")
        L.append(f"**Warning**: other load above {other_limit:.0%} of a core on the server CPUs "
                 "during: " + ", ".join(
                     f"run {r['seq']} ({r['target']}/{r['scenario']}/{r['shards_label']}/{r['rate']}, "
                     f"{r['other_load']:.0%})" for r in disturbed) + ". Re-run on a quiet machine.")

    L.append("")
    L.append("## All runs")
    L.append("")
    L.append("In the order they ran.")
    L.append("")
    L.append("| # | round | target | scenario | shards | rate | offered req/s | requests/s "
             "| server CPU-µs/req | client CPU-µs/req | p99 | log records / batches | errors "
             "| other load | status |")
    L.append("|--:|--:|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|")
    for r in runs:
        rep = r.get("report")
        why = failure(r)
        L.append(
            f"| {r['seq']} | {r['round']} | {r['target']} | {r['scenario']} | {r['shards_label']} "
            f"| {r['rate']} | {fmt(r.get('offered_rate_per_second'), '.0f', '—')} "
            f"| {fmt(dig(rep, 'requests_per_second'), '.0f')} "
            f"| {fmt(dig(rep, 'server_cpu', 'cpu_us_per_request'), '.2f')} "
            f"| {fmt(dig(rep, 'client_cpu', 'cpu_us_per_request'), '.2f')} "
            f"| {fmt(dig(rep, 'latency_us', 'p99'), '.0f')} "
            f"| {log_cell(r.get('log'))} "
            f"| {(dig(rep, 'errors') or 0) + (dig(rep, 'failed') or 0)} "
            f"| {fmt(None if r.get('other_load') is None else r['other_load'] * 100, '.1f')}% "
            f"| {'ok' if not why else '⚠ ' + why} |")
    return "\n".join(L) + "\n"


def cmd_report(args):
    runs = load_runs(args.runs)
    meta = load_meta(args.meta)
    results = summarize(runs, meta)
    ratios = ratio_rows(results)
    summary = {
        "name": meta["name"],
        "date": meta["date"],
        "command": meta["command"],
        "machine": meta["machine"],
        "git": meta["git"],
        "client": meta["client"],
        "settings": {k: meta[k] for k in (
            "targets", "scenarios", "shards", "rates", "rounds", "duration_s", "warmup_s",
            "connections", "pipeline_depth", "users", "shard_aware", "cross_shard_ratio",
            "server_cpus", "client_cpus")},
        "notes": meta["note"],
        # shardpay's data directories (one per server start, deleted after it) were below
        # data_parent, on a file system of type data_fs (tmpfs: fdatasync costs nothing).
        "storage": {k: meta.get(k) for k in ("data_parent", "data_fs")},
        "runs": args.runs,
        "failed_runs": sum(1 for r in runs if failure(r)),
        "results": results,
        "ratios": ratios,
    }
    with open(args.json, "w") as f:
        json.dump(summary, f, indent=2, ensure_ascii=False)
        f.write("\n")
    text = markdown(results, ratios, runs, meta)
    with open(args.md, "w") as f:
        f.write(text)
    print(text)


def cmd_failures(args):
    print(sum(1 for r in load_runs(args.runs) if failure(r)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("record")
    for name in ("report", "seq", "round", "target", "scenario", "shards", "shards-label", "rate",
                 "mode", "offered", "exit-status", "note", "server-log", "client-output",
                 "client-command", "wall-ns", "server-ticks", "busy-ticks", "clk-tck",
                 "metrics-before", "metrics-after"):
        p.add_argument("--" + name, default="")
    p.set_defaults(func=cmd_record)
    p = sub.add_parser("field")
    p.add_argument("report")
    p.add_argument("name")
    p.set_defaults(func=cmd_field)
    p = sub.add_parser("report")
    for name in ("runs", "meta", "json", "md"):
        p.add_argument("--" + name, required=True)
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("failures")
    p.add_argument("--runs", required=True)
    p.set_defaults(func=cmd_failures)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
