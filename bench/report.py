#!/usr/bin/env python3
"""Turns one bench/run's raw outputs into results.json, results.md and the chart's data.

Usage: report.py RAW_DIR OUT_DIR
Every number is taken from this run's own files; ratios are to the ceilings measured in the
same run. Targets are shown next to the numbers, never enforced.
"""
import json
import os
import re
import sys

raw, out = sys.argv[1], sys.argv[2]


def read(name):
    path = os.path.join(raw, name)
    return open(path).read() if os.path.exists(path) else ""


def load_json(name):
    text = read(name).strip()
    if not text:
        return None
    try:
        return json.loads(text.splitlines()[-1])
    except ValueError:
        return None


env = dict(line.split("=", 1) for line in read("env.txt").splitlines() if "=" in line)
nproc = int(env.get("nproc", "1"))

# ---- ceilings ----------------------------------------------------------------------------------
rsa_sign = None
for line in read("openssl-speed.txt").splitlines():
    if line.startswith("+F2:"):  # +F2:<k>:<bits>:<sign/s>:<verify/s>, summed over -multi
        f = line.split(":")
        rsa_sign = float(f[3])
fsync = None
m = re.search(r"^\s*fdatasync\s+([\d.]+) ops/sec", read("pg_test_fsync.txt"), re.M)
if m:
    fsync = float(m.group(1))


def machine_cpu_ms_per_op(text, ops):
    """Machine CPU (all processes) per operation, from a busy_jiffies=... clk_tck=... line."""
    m = re.search(r"busy_jiffies=(\d+) clk_tck=(\d+)", text)
    if not m or not ops:
        return None
    return round(1000.0 * int(m.group(1)) / int(m.group(2)) / ops, 4)


def pgbench(kind, rows_per_transaction=1):
    """Rows (statements) per second and machine CPU per row of bench/run's pgbench ceiling."""
    text = read(f"pgbench-{kind}.txt")
    tps = re.search(r"^tps = ([\d.]+)", text, re.M)
    n = re.search(r"number of transactions actually processed: (\d+)", text)
    clients = re.search(r"number of clients: (\d+)", text)
    if not tps or not n:
        return None
    rows = int(n.group(1)) * rows_per_transaction
    return {"per_s": round(float(tps.group(1)) * rows_per_transaction, 1), "statements": rows,
            "rows_per_transaction": rows_per_transaction,
            "clients": int(clients.group(1)) if clients else None,
            "machine_cpu_ms": machine_cpu_ms_per_op(text, rows)}


pg_insert, pg_read = pgbench("insert"), pgbench("read")
# Eight one-row INSERTs per transaction, sent as one pipeline: the best that batching
# concurrent terminals' writes could do.
pg_insert8 = pgbench("insert8", 8)

micro = {}
mj = read("micro.json")
if mj:
    for b in json.loads(mj)["benchmarks"]:
        if b.get("error_occurred"):
            continue
        unit = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[b.get("time_unit", "ns")]
        micro[b["name"]] = {
            "real_time_us": round(b["real_time"] * unit * 1e6, 3),
            "cpu_time_us": round(b["cpu_time"] * unit * 1e6, 3),
            "threads": b.get("threads", 1),
            "per_second": round(1.0 / (b["real_time"] * unit), 1) if b["real_time"] else None,
        }
        if "terminals_per_s" in b:
            micro[b["name"]]["terminals_per_s_counter"] = round(b["terminals_per_s"], 1)


def crypto_ceiling():
    """Terminals/s of the crypto-only terminal on all cores. With UseRealTime and several
    threads, Google Benchmark divides the wall time by the iterations of *all* threads, so
    real_time is already wall time per terminal for the whole machine and the rate is
    1 / real_time (checked against `openssl speed -multi`: RSA decrypt at 2 threads reports
    ~116 µs per op, i.e. ~8,600/s, next to openssl's ~9,200/s; threads / real_time would
    claim ~17,000/s). Take the best thread count."""
    best = None
    for name, b in micro.items():
        if name.startswith("BM_TerminalCryptoOnly"):
            rate = 1 / (b["real_time_us"] * 1e-6)
            best = rate if best is None else max(best, rate)
    return best


terminal_ceiling = crypto_ceiling()
echo = load_json("echo.json")
echo_rps = echo["per_second"] if echo else None

echo_cpu_ms = machine_cpu_ms_per_op(read("echo.cpu"), echo and echo.get("ok"))

ceilings = {
    "rsa2048_private_ops_per_s_all_cores": rsa_sign,
    "grpc_mtls_echo_round_trips_per_s": echo_rps,
    "grpc_mtls_echo_machine_cpu_ms_per_round_trip": echo_cpu_ms,
    "postgres_durable_one_row_insert_commits": pg_insert,
    "postgres_primary_key_reads": pg_read,
    "postgres_durable_insert_8_per_pipelined_transaction": pg_insert8,
    "crypto_only_terminals_per_s": round(terminal_ceiling, 1) if terminal_ceiling else None,
    "disk_fdatasync_per_s": fsync,
}


def dispatch_summary():
    """Per (body, dispatch): median round trips/s and CPU µs per call over the phase's rounds."""
    rows = {}
    for line in read("dispatch.jsonl").splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        r = d["result"]
        if not r.get("ok"):
            continue
        tck = d["clk_tck"]
        rows.setdefault((d["body_us"], d["dispatch"]), []).append({
            "per_second": r["per_second"], "p50_ms": r["p50_ms"], "failed": r["failed"],
            "server_cpu_us": 1e6 * d["server_jiffies"] / tck / r["ok"],
            "machine_cpu_us": 1e6 * d["machine_jiffies"] / tck / r["ok"],
        })
    out = []
    order = {"sync": 0, "callback-inline": 1, "callback-pool": 2}
    for (body_us, dispatch), runs in sorted(rows.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 3))):
        out.append({
            "body_us": body_us, "dispatch": dispatch, "rounds": len(runs),
            "failed": sum(x["failed"] for x in runs),
            **{k: round(median([x[k] for x in runs]), 1)
               for k in ("per_second", "p50_ms", "server_cpu_us", "machine_cpu_us")},
        })
    return out


# ---- measured ------------------------------------------------------------------------------------
hsm = load_json("hsm.json")
hsm_batch = load_json("hsm-batch.json")
mtms = load_json("mtms.json")
kms = load_json("kms.json")


def ratio(x, c):
    return round(x / c, 4) if x and c else None


def fleet(name):
    f = load_json(name + ".json")
    if f is None:
        return None
    cpu = {}
    stored = None
    cpus = None
    reference = None
    text = read(name + ".cpu")
    for line in text.splitlines():
        if line.startswith("stored_before="):
            stored = int(line.split("=")[1])
            continue
        if line.startswith("cpus="):
            cpus = line.split("=")[1]
            continue
        if line.startswith("reference_rsa_signs_per_s="):
            value = line.split("=")[1]
            reference = int(value) if value.isdigit() else None
            continue
        if line.startswith("busy_jiffies="):
            continue
        tag, _, rest = line.partition(" ")
        cpu[tag] = dict(kv.split("=") for kv in rest.split())
    cpu_per_terminal_ms = {}
    if "cpu_before" in cpu and "cpu_after" in cpu and f.get("succeeded"):
        for proc in cpu["cpu_after"]:
            d = float(cpu["cpu_after"][proc]) - float(cpu["cpu_before"].get(proc, 0))
            cpu_per_terminal_ms[proc] = round(1000 * d / f["succeeded"], 3)
    commits = {}
    before = {l.split()[0]: l.split()[1:] for l in read(name + ".commits.before").splitlines() if l.strip()}
    after = {l.split()[0]: l.split()[1:] for l in read(name + ".commits.after").splitlines() if l.strip()}
    if f.get("succeeded"):
        for db, a in after.items():
            b = before.get(db, ["0"] * len(a))
            d = [int(x) - int(y) for x, y in zip(a, b)]
            commits[db] = {"commits": round(d[0] / f["succeeded"], 2),
                           "rollbacks": round(d[1] / f["succeeded"], 2),
                           "rows_written": round(d[2] / f["succeeded"], 2),
                           "rows_read": round(d[3] / f["succeeded"], 1)}
    busy = sum(cpu_per_terminal_ms.values()) * f.get("terminals_per_second", 0) / 1000
    wal = None
    wal_before, wal_after = read(name + ".wal.before").split(), read(name + ".wal.after").split()
    if len(wal_before) == 3 and len(wal_after) == 3 and f.get("succeeded"):
        d = [int(a) - int(b) for a, b in zip(wal_after, wal_before)]
        wal = {"records": round(d[0] / f["succeeded"], 1), "full_page_images": round(d[1] / f["succeeded"], 2),
               "bytes": round(d[2] / f["succeeded"])}
    return {
        "stored_terminals_before": stored,
        # The CPUs the deployment and the fleet ran on (taskset list).
        "cpus": cpus,
        "terminals": f["total"],
        "succeeded": f["succeeded"],
        "failed": f["failed"],
        "failures_by_reason": f.get("failures_by_reason", {}),
        "elapsed_s": f["elapsed_seconds"],
        "terminals_per_s": f["terminals_per_second"],
        "steps": f.get("steps", {}),
        "server_cpu_ms_per_terminal": cpu_per_terminal_ms,
        # The whole machine (servers, rkl-pos, kernel) per terminal, over the run.
        "machine_cpu_ms_per_terminal": machine_cpu_ms_per_op(text, f.get("succeeded")),
        # Per terminal, per database: transactions committed/rolled back, rows written/read
        # (pg_stat_database deltas over the run; includes the fleet's own admin checks).
        "postgres_per_terminal": commits,
        # Cores the services + PostgreSQL kept busy (out of nproc); the rest is rkl-pos
        # itself, the kernel, or idle (waiting).
        "server_cores_busy": round(busy, 2),
        # The whole cluster's WAL per terminal over the run (pg_stat_wal deltas).
        "wal_per_terminal": wal,
        # RSA-2048 signatures/s on one core just before the run: the machine's speed then.
        "reference_rsa_signs_per_s": reference,
        "load_average_at_start": env.get("load_" + name),
    }


# Fleets: "e2e" (empty database) and "e2e_<N>" (N stored) are levels; a level's repeats are
# "<level>-2", "<level>-3", ... Each level is reported by its median run.
# Fleets on fewer CPUs are "cores<K>" (and "cores<K>-2", ...).
e2e_runs = {}
core_runs = {}
metrics_runs = {}
baseline_runs = {}
for fname in sorted(os.listdir(raw)):
    m = re.fullmatch(r"(baseline(?:-\d+)?)\.json", fname)
    if m:
        baseline_runs[m.group(1)] = fleet(m.group(1))
    m = re.fullmatch(r"(e2e(?:_\d+)?(?:-\d+)?)\.json", fname)
    if m:
        e2e_runs[m.group(1)] = fleet(m.group(1))
    m = re.fullmatch(r"(cores\d+(?:-\d+)?)\.json", fname)
    if m:
        core_runs[m.group(1)] = fleet(m.group(1))
    m = re.fullmatch(r"(metrics(?:on|off)(?:-\d+)?)\.json", fname)
    if m:
        metrics_runs[m.group(1)] = fleet(m.group(1))


def server_cpu(run):
    return round(sum(run["server_cpu_ms_per_terminal"].values()), 3)


def median(values):
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def summarize(runs_by_name):
    """Groups runs into levels ("<level>", "<level>-2", ...), each with its medians."""
    levels = {}
    for name, run in runs_by_name.items():
        if run and run["terminals_per_s"]:
            levels.setdefault(name.split("-")[0], []).append((name, run))
    summary = {}
    for level, runs in levels.items():
        runs.sort(key=lambda nr: nr[1]["stored_terminals_before"] or 0)
        rates = [r["terminals_per_s"] for _, r in runs]
        cpus = [server_cpu(r) for _, r in runs]
        machine = [r["machine_cpu_ms_per_terminal"] for _, r in runs
                   if r["machine_cpu_ms_per_terminal"] is not None]
        summary[level] = {
            "runs": [n for n, _ in runs],
            "stored_before": runs[0][1]["stored_terminals_before"],
            "cpus": runs[0][1]["cpus"],
            "terminals_per_s": rates,
            "median_terminals_per_s": round(median(rates), 1),
            "server_cpu_ms_per_terminal": cpus,
            "median_server_cpu_ms_per_terminal": round(median(cpus), 3),
            "median_machine_cpu_ms_per_terminal": round(median(machine), 3) if machine else None,
        }
    return summary


level_summary = summarize(e2e_runs)
core_summary = summarize(core_runs)
metrics_summary = summarize(metrics_runs)
baseline_summary = summarize(baseline_runs).get("baseline")


def threads(name, terminals):
    """Per process, from <name>.threads (bench/run's thread_sample before, every half second
    during and after a fleet): CPU ms per terminal and the busiest thread's share of one core
    over the fleet's wall time. A thread's CPU is its last sample less its first-sample value
    (0 when it started during the fleet); rkl-pos's ends at its last half-second sample."""
    text = read(name + ".threads")
    if not text or not terminals:
        return None
    first, last = {}, {}
    wall0 = wall1 = None
    tck = 100
    for line in text.splitlines():
        f = line.split()
        if f[0] == "wall_start":
            wall0, tck = float(f[1]), int(f[3])
            continue
        if f[0] == "wall_end":
            wall1 = float(f[1])
            continue
        if len(f) != 5:
            continue
        sample, proc, tid, tname, jiffies = f[0], f[1], f[2], f[3], int(f[4])
        key = (proc, tid, tname)
        if sample == "0":
            first[key] = jiffies
        last[key] = max(jiffies, last.get(key, 0))
    if wall0 is None or wall1 is None or wall1 <= wall0:
        return None
    wall = wall1 - wall0
    procs = {}
    for key, j in last.items():
        proc, tid, tname = key
        d = (j - first.get(key, 0)) / tck
        p = procs.setdefault(proc, {"cpu_s": 0.0, "busiest_thread": None, "busiest_s": 0.0})
        p["cpu_s"] += d
        if d > p["busiest_s"]:
            p["busiest_s"], p["busiest_thread"] = d, (tname if proc != "postgres" else f"backend {tid}")
    total = sum(p["cpu_s"] for p in procs.values()) or 1.0
    return {proc: {"cpu_ms_per_terminal": round(1000 * p["cpu_s"] / terminals, 3),
                   "share_of_cpu": round(p["cpu_s"] / total, 4),
                   "busiest_thread": p["busiest_thread"],
                   "busiest_thread_core_share": round(p["busiest_s"] / wall, 3)}
            for proc, p in sorted(procs.items())}


def cpu_count(cpus):
    """CPUs in a taskset list such as "0", "0-3" or "0,2-3"."""
    n = 0
    for part in (cpus or "").split(","):
        if "-" in part:
            a, b = part.split("-")
            n += int(b) - int(a) + 1
        elif part:
            n += 1
    return n or None


# The core sweep (--cores): per K, the median run's rate and its processes' threads.
SATURATED = 0.80
core_sweep = []
for level, L in core_summary.items():
    runs = [(n, core_runs[n]) for n in L["runs"]]
    by_rate = sorted(runs, key=lambda nr: nr[1]["terminals_per_s"])
    mid_name, mid = by_rate[len(by_rate) // 2]
    machine = L["median_machine_cpu_ms_per_terminal"]
    core_sweep.append({
        "k": cpu_count(L["cpus"]), "cpus": L["cpus"], "runs": L["runs"],
        "median_terminals_per_s": L["median_terminals_per_s"],
        "median_machine_cpu_ms_per_terminal": machine,
        "median_server_cpu_ms_per_terminal": L["median_server_cpu_ms_per_terminal"],
        "cores_busy": round(machine * L["median_terminals_per_s"] / 1000, 2) if machine else None,
        "threads_of_run": mid_name,
        "processes": threads(mid_name, mid["succeeded"]),
    })
core_sweep.sort(key=lambda c: c["k"] or 0)


def saturation_note(sweep):
    """The first component that approaches saturation as K grows: a process whose busiest
    thread takes more than 80% of one core, else the process whose share of the CPU grew the
    most from the smallest K to the largest."""
    measured = [c for c in sweep if c["processes"]]
    if not measured:
        return None
    for c in measured:
        hot = [(p["busiest_thread_core_share"], proc, p["busiest_thread"])
               for proc, p in c["processes"].items() if p["busiest_thread_core_share"] > SATURATED]
        if hot:
            share, proc, tname = max(hot)
            return (f"First to approach saturation: **{proc}** at K = {c['k']}, its busiest thread "
                    f"({tname}) at {100 * share:.0f}% of one core.")
    lo, hi = measured[0], measured[-1]
    note = (f"Nothing saturates up to K = {hi['k']}: no thread above "
            f"{100 * SATURATED:.0f}% of one core.")
    if lo is not hi:
        growth = [(hi["processes"][p]["share_of_cpu"] - lo["processes"][p]["share_of_cpu"], p)
                  for p in hi["processes"] if p in lo["processes"]]
        g, proc = max(growth) if growth else (0, None)
        if g < 0.01:
            note += (f" No process's share of the CPU grew by a percentage point or more from "
                     f"K = {lo['k']} to K = {hi['k']}.")
        else:
            note += (f" The process whose share of the CPU grew most from K = {lo['k']} to "
                     f"K = {hi['k']}: {proc} ({100 * lo['processes'][proc]['share_of_cpu']:.0f}% → "
                     f"{100 * hi['processes'][proc]['share_of_cpu']:.0f}%).")
    return note


core_saturation = saturation_note(core_sweep)


def parse_prom(text):
    """Prometheus text to {(name, ((label, value), ...)): value}."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)", line)
        if not m:
            continue
        labels = tuple(sorted(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or "")))
        try:
            samples[(m.group(1), labels)] = float(m.group(3))
        except ValueError:
            pass
    return samples


COUNT_PROCESSES = ("ca", "hsm-mtms", "hsm-kms", "mtms", "kms")
FORWARDER = ("rkl_mtms_forwarder_wakeups_total", "rkl_mtms_forwarder_empty_claims_total")


def count_report(tag):
    """bench/run's count phase <tag>: per terminal statements, commits, top statements,
    RPCs by process/method/code, MTMS forwarder counters."""
    f = load_json(tag + ".json")
    if not f or not f.get("succeeded"):
        return None
    n = f["succeeded"]
    statements, top = {}, {}
    for line in read(tag + ".statements").splitlines():
        # database, calls, [mean execution µs, buffers per call,] statement (older runs: neither)
        parts = line.split("\t", 4)
        if len(parts) == 3:
            parts = [parts[0], parts[1], "", "", parts[2]]
        if len(parts) != 5:
            continue
        db, calls, query = parts[0], int(parts[1]), parts[4]
        mean_us = int(parts[2]) if parts[2].isdigit() else None
        buffers = int(parts[3]) if parts[3].isdigit() else None
        statements[db] = statements.get(db, 0) + calls
        top.setdefault(db, []).append({"calls_per_terminal": round(calls / n, 3),
                                       "mean_exec_us": mean_us, "buffers_per_call": buffers,
                                       "query": query})
    before = {l.split()[0]: l.split()[1:] for l in read(tag + ".commits.before").splitlines() if l.strip()}
    after = {l.split()[0]: l.split()[1:] for l in read(tag + ".commits.after").splitlines() if l.strip()}
    dbs = sorted(set(statements) | set(after))
    per_db = {db: {"statements": round(statements.get(db, 0) / n, 2),
                   "commits": round((int(after[db][0]) - int(before.get(db, ["0"])[0])) / n, 2)
                   if db in after else None,
                   "top": top.get(db, [])[:8]} for db in dbs}
    rpcs, forwarder = {}, {}
    for proc in COUNT_PROCESSES:
        a_text = read(f"{tag}.{proc}.after.prom")
        if not a_text:
            continue
        b, a = parse_prom(read(f"{tag}.{proc}.before.prom")), parse_prom(a_text)
        for (name, labels), v in a.items():
            if name != "rkl_rpc_requests_total":
                continue
            d = v - b.get((name, labels), 0.0)
            if d <= 0:
                continue
            L = dict(labels)
            method = L.get("method", "?").rsplit("/", 1)[-1]
            rpcs.setdefault(proc, {})[f"{method} {L.get('code', '?')}"] = round(d / n, 3)
        if proc == "mtms":
            for metric in FORWARDER:
                keys = [k for k in a if k[0] == metric]
                forwarder[metric] = (round(sum(a[k] - b.get(k, 0.0) for k in keys) / n, 3)
                                     if keys else None)
    begin = sum(v for method_code, v in rpcs.get("kms", {}).items()
                if method_code.startswith("BeginAuthentication "))
    return {"terminals": n, "failed": f.get("failed"), "per_database": per_db,
            "statements_per_terminal": round(sum(statements.values()) / n, 2),
            "commits_per_terminal": round(sum(d["commits"] or 0 for d in per_db.values()), 2),
            "rpcs_per_terminal": rpcs,
            "begin_authentication_per_terminal": round(begin, 3) if "kms" in rpcs else None,
            "forwarder_per_terminal": forwarder or {m: None for m in FORWARDER}}


count = {"current": count_report("count"), "baseline": count_report("baseline-count")}
e2e = e2e_runs.get("e2e")

measured = {
    "hsm_translate": {
        "per_s": hsm and hsm["per_second"], "raw": hsm,
        "ratio_to_rsa_ceiling": ratio(hsm and hsm["per_second"], rsa_sign),
        "rpc": "TranslateTransportKey, one translation per call",
        "load_average_at_start": env.get("load_hsm"),
    },
    "hsm_translate_batch": {
        "per_s": hsm_batch and hsm_batch["per_second"], "raw": hsm_batch,
        "ratio_to_rsa_ceiling": ratio(hsm_batch and hsm_batch["per_second"], rsa_sign),
        "rpc": "TranslateTransportKeys, %s translations per call (as MTMS sends them)"
               % (hsm_batch and hsm_batch.get("batch")),
        "target": ">= 0.60 of the RSA-2048 ceiling",
        "load_average_at_start": env.get("load_hsm_batch"),
    },
    "mtms_intake_forward": {
        "per_s": mtms and mtms["per_second"], "raw": mtms,
        "ratio_to_rsa_ceiling": ratio(mtms and mtms["per_second"], rsa_sign),
        "ratio_to_echo_ceiling": ratio(mtms and mtms["per_second"], echo_rps),
        "load_average_at_start": env.get("load_mtms"),
    },
    "kms_auth_delivery_confirm": {
        "per_s": kms and kms["per_second"], "raw": kms,
        "ratio_to_crypto_ceiling": ratio(kms and kms["per_second"], terminal_ceiling),
        "ratio_to_echo_ceiling_3_rpcs": ratio(kms and kms["per_second"] * 3, echo_rps),
        "target": ">= 2000 terminals/s",
        "load_average_at_start": env.get("load_kms"),
    },
    "e2e": {
        name: dict(run or {}, ratio_to_crypto_ceiling=ratio(run and run["terminals_per_s"], terminal_ceiling),
                   ratio_to_rsa_ceiling=ratio(run and run["terminals_per_s"], rsa_sign))
        for name, run in e2e_runs.items()
    },
}
measured["e2e_levels"] = {
    level: dict(L, ratio_to_crypto_ceiling=ratio(L["median_terminals_per_s"], terminal_ceiling))
    for level, L in level_summary.items()
}
measured["e2e_target"] = ">= 1000 terminals/s and >= 0.25 of the crypto-only ceiling"


def crypto_only_at(threads):
    b = micro.get(f"BM_TerminalCryptoOnly/real_time/threads:{threads}")
    return 1 / (b["real_time_us"] * 1e-6) if b else None


# The empty level's fleets on fewer CPUs against the same fleets on all of them: does the
# rate grow with cores? The crypto-only terminal's 1-thread / all-thread rates beside it.
all_cores = level_summary.get("e2e")
measured["e2e_on_fewer_cores"] = {
    level: dict(L, all_cores_median_terminals_per_s=all_cores and all_cores["median_terminals_per_s"],
                all_cores_over_this=ratio(all_cores and all_cores["median_terminals_per_s"],
                                          L["median_terminals_per_s"]))
    for level, L in core_summary.items()
}
# Metrics off vs on (the same fleet, alternated): the throughput cost of metrics.
measured["metrics_off_vs_on"] = {
    "off": metrics_summary.get("metricsoff"), "on": metrics_summary.get("metricson"),
    "throughput_cost": (round(1 - metrics_summary["metricson"]["median_terminals_per_s"]
                              / metrics_summary["metricsoff"]["median_terminals_per_s"], 4)
                        if metrics_summary.get("metricson") and metrics_summary.get("metricsoff")
                        else None),
}

scaling = []
base = level_summary.get("e2e")
for level, L in sorted(level_summary.items(), key=lambda kv: kv[1]["stored_before"] or 0):
    scaling.append({
        "level": level, "runs": L["runs"], "stored_before": L["stored_before"],
        "median_wall_ms_per_terminal": round(1000.0 / L["median_terminals_per_s"], 3),
        "median_server_cpu_ms_per_terminal": L["median_server_cpu_ms_per_terminal"],
        "median_machine_cpu_ms_per_terminal": L["median_machine_cpu_ms_per_terminal"],
        "server_cpu_ms_per_terminal_runs": L["server_cpu_ms_per_terminal"],
        # Medians against the empty level's medians: the flat-cost target's test.
        "server_cpu_relative_to_empty": round(
            L["median_server_cpu_ms_per_terminal"] / base["median_server_cpu_ms_per_terminal"], 3)
        if base else None,
        "wall_relative_to_empty": round(
            base["median_terminals_per_s"] / L["median_terminals_per_s"], 3) if base else None,
    })

rpc_latency = []
for line in read("rpc-latency.txt").splitlines():
    svc, method, n, mean = line.split()
    rpc_latency.append({"service": svc, "method": method, "calls": int(n), "mean_ms": float(mean)})
rpc_latency.sort(key=lambda r: (r["service"], r["method"]))

measured["count"] = count
measured["grpc_dispatch"] = dispatch_summary()
measured["core_sweep"] = {"per_k": core_sweep, "saturation": core_saturation}
if baseline_summary:
    measured["baseline"] = {
        "rev": env.get("baseline_rev"), "commit": env.get("baseline_git"), "head": env.get("git"),
        "baseline": baseline_summary, "current": level_summary.get("e2e"),
    }

results = {
    "environment": env,
    "ceilings": ceilings,
    "measured": measured,
    "scaling": scaling,
    "micro_benchmarks": micro,
    "server_logged_rpc_latency": rpc_latency,
}
with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, indent=1, sort_keys=False)

# ---- Markdown -----------------------------------------------------------------------------------


def fmt(x, digits=0):
    if x is None:
        return "—"
    return f"{x:,.{digits}f}"


def pct(x):
    return "—" if x is None else f"{100 * x:.1f}%"


loads = {k[5:]: v for k, v in env.items() if k.startswith("load_")}
md = []
md.append("# rkl benchmark results\n")
md.append(f"Machine: {nproc} cores, {env.get('cpu', '?')}; commit {env.get('git', '?')}; "
          f"concurrency {env.get('concurrency')}; e2e fleets of {env.get('e2e_count')} terminals; "
          f"{env.get('requests')} calls per generator; the fleets' simulated terminals kept their "
          f"files on {env.get('pos_state_fs', '?')}. 1-minute load average at the start of each "
          f"phase: " + ", ".join(f"{k} {v}" for k, v in sorted(loads.items())) + ".\n")
if env.get("quick") == "1":
    md.append("**Quick run (smoke test of the harness): numbers are not meaningful.**\n")
md.append("## Ceilings (same run, same machine)\n")
md.append("| ceiling | value |")
md.append("|---|---:|")
md.append(f"| RSA-2048 private operations/s, all cores (`openssl speed -multi {nproc}`) | {fmt(rsa_sign)} |")
md.append(f"| bare gRPC unary echo over mTLS, round trips/s | {fmt(echo_rps)} |")
md.append(f"| crypto-only terminal (every crypto op of one terminal, both sides), terminals/s | {fmt(terminal_ceiling)} |")
md.append(f"| fdatasync/s of PostgreSQL's disk (`pg_test_fsync`) | {fmt(fsync)} |")


def cpu_note(ms):
    return "" if ms is None else f" (machine CPU {ms * 1000:.0f} µs each)"


md.append(f"| bare gRPC echo, machine CPU per round trip, µs | "
          f"{'—' if echo_cpu_ms is None else f'{echo_cpu_ms * 1000:.0f}'} |")
clients = env.get("concurrency")
md.append(f"| PostgreSQL durable one-row INSERT commits/s (pgbench, {clients} clients over TCP)"
          f"{cpu_note(pg_insert and pg_insert['machine_cpu_ms'])} | {fmt(pg_insert and pg_insert['per_s'])} |")
md.append(f"| PostgreSQL primary-key reads/s (pgbench, {clients} clients over TCP)"
          f"{cpu_note(pg_read and pg_read['machine_cpu_ms'])} | {fmt(pg_read and pg_read['per_s'])} |")
md.append(f"| PostgreSQL durable one-row INSERTs/s, 8 per transaction sent as one pipeline "
          f"(pgbench, {(pg_insert8 or {}).get('clients', '—')} clients: what batching writes could buy)"
          f"{cpu_note(pg_insert8 and pg_insert8['machine_cpu_ms'])} | {fmt(pg_insert8 and pg_insert8['per_s'])} |")
md.append("")
if measured["grpc_dispatch"]:
    md.append("## gRPC dispatch: the synchronous server against the callback API\n")
    md.append("rkl.v1.Echo served as the services serve their RPCs (an `rpc::UnaryService` body "
              "behind its adapter, over mTLS), each `rpc::Dispatch` in turn, rounds alternated; "
              "medians over the rounds. A body that blocks stands in for the services' database "
              "and HSM round trips.\n")
    md.append("| body | dispatch | rounds | round trips/s | p50 ms | server CPU µs/call | machine CPU µs/call |")
    md.append("|---|---|---:|---:|---:|---:|---:|")
    for d in measured["grpc_dispatch"]:
        body = "answers at once" if d["body_us"] == 0 else f"blocks {d['body_us']} µs first"
        failed = f" ({d['failed']} failed)" if d["failed"] else ""
        md.append(f"| {body} | {d['dispatch']}{failed} | {d['rounds']} | {fmt(d['per_second'])} | "
                  f"{d['p50_ms']:.2f} | {d['server_cpu_us']:.0f} | {d['machine_cpu_us']:.0f} |")
    md.append("")
md.append("## Measured\n")
md.append("| what | per second | ratio to ceiling | target | p50 / p95 / p99 ms |")
md.append("|---|---:|---|---|---|")


def lat(r):
    return "—" if not r else f"{r['p50_ms']:.1f} / {r['p95_ms']:.1f} / {r['p99_ms']:.1f}"


md.append(f"| HSM #1 translate (Pu → PK/MAK), one per call | {fmt(hsm and hsm['per_second'])} | "
          f"{pct(measured['hsm_translate']['ratio_to_rsa_ceiling'])} of RSA | — | {lat(hsm)} |")
md.append(f"| HSM #1 translate, {(hsm_batch or {}).get('batch', '—')} per TranslateTransportKeys call "
          f"(as MTMS sends them) | {fmt(hsm_batch and hsm_batch['per_second'])} | "
          f"{pct(measured['hsm_translate_batch']['ratio_to_rsa_ceiling'])} of RSA | ≥ 60% of RSA | "
          f"{lat(hsm_batch)} (per call) |")
md.append(f"| MTMS intake + forward (submit → FORWARDED) | {fmt(mtms and mtms['per_second'])} | "
          f"{pct(measured['mtms_intake_forward']['ratio_to_rsa_ceiling'])} of RSA | — | {lat(mtms)} (submit) |")
md.append(f"| KMS auth + delivery + confirmation, terminals | {fmt(kms and kms['per_second'])} | "
          f"{pct(measured['kms_auth_delivery_confirm']['ratio_to_crypto_ceiling'])} of crypto-only | ≥ 2,000/s | {lat(kms)} |")
for level, L in sorted(level_summary.items(), key=lambda kv: kv[1]["stored_before"] or 0):
    first = e2e_runs[L["runs"][0]]
    runs = " / ".join(fmt(r, 1) for r in L["terminals_per_s"])
    md.append(f"| end to end `rkl-pos fleet`, {fmt(L['stored_before'])} stored before: median of "
              f"{len(L['runs'])} ({runs}) | {fmt(L['median_terminals_per_s'], 1)} | "
              f"{pct(ratio(L['median_terminals_per_s'], terminal_ceiling))} of crypto-only | "
              f"≥ 1,000/s and ≥ 25% | {lat(first['steps'].get('total'))} (first run) |")
md.append("")
if e2e:
    md.append("## End to end, per step (the first fleet, empty database)\n")
    md.append("| step | count | p50 ms | p95 ms | p99 ms | max ms |")
    md.append("|---|---:|---:|---:|---:|---:|")
    for step, l in e2e["steps"].items():
        md.append(f"| {step} | {l['count']} | {l['p50_ms']:.1f} | {l['p95_ms']:.1f} | {l['p99_ms']:.1f} | {l['max_ms']:.1f} |")
    md.append("")
    md.append("Server CPU per terminal (ms, utime+stime of each process over the fleet run): " +
              ", ".join(f"{k} {v}" for k, v in e2e["server_cpu_ms_per_terminal"].items()) +
              f". Cores kept busy by the servers: {e2e['server_cores_busy']} of {nproc}.\n")
    if e2e["postgres_per_terminal"]:
        md.append("PostgreSQL per terminal (pg_stat_database deltas over the fleet run):\n")
        md.append("| database | commits | rollbacks | rows written | rows read |")
        md.append("|---|---:|---:|---:|---:|")
        total_c = 0
        for db, c in e2e["postgres_per_terminal"].items():
            total_c += c["commits"]
            md.append(f"| {db} | {c['commits']} | {c['rollbacks']} | {c['rows_written']} | {c['rows_read']} |")
        md.append(f"| all | {total_c:.2f} | | | |")
        md.append("")
    if e2e["failed"]:
        md.append(f"Failures: {e2e['failures_by_reason']}\n")
if kms and kms.get("steps"):
    md.append("KMS generator, per RPC (client side, ms p50/p95/p99): " + "; ".join(
        f"{k} {v['p50_ms']:.1f}/{v['p95_ms']:.1f}/{v['p99_ms']:.1f}" for k, v in kms["steps"].items()) + "\n")
if len(scaling) > 1 or (scaling and len(scaling[0]["runs"]) > 1):
    md.append("## Scaling with stored terminals\n")
    md.append("Each level's fleets ran back to back; medians, with every run's server CPU beside "
              "them. The flat-cost target compares server CPU per terminal (services and "
              "PostgreSQL) with the empty level's.\n")
    md.append("| stored before | fleets | median wall ms / terminal | median server CPU ms / terminal "
              "| server CPU of each run | server CPU vs empty | wall vs empty "
              "| median machine CPU ms / terminal |")
    md.append("|---:|---:|---:|---:|---|---:|---:|---:|")
    for sc in scaling:
        each = " / ".join(f"{c:.2f}" for c in sc["server_cpu_ms_per_terminal_runs"])
        md.append(f"| {fmt(sc['stored_before'])} | {len(sc['runs'])} | "
                  f"{sc['median_wall_ms_per_terminal']:.2f} | "
                  f"{sc['median_server_cpu_ms_per_terminal']:.2f} | {each} | "
                  f"{sc['server_cpu_relative_to_empty']:.2f}× | {sc['wall_relative_to_empty']:.2f}× | "
                  f"{fmt(sc['median_machine_cpu_ms_per_terminal'], 2)} |")
    md.append("")
all_runs = sorted(list(e2e_runs.items()) + list(core_runs.items()) + list(baseline_runs.items()),
                  key=lambda nr: (nr[1]["stored_terminals_before"] or 0) if nr[1] else 0)
if len(all_runs) > 1:
    md.append("## Every fleet, in the order run\n")
    md.append("The machine's speed just before each run (RSA-2048 signatures/s on one core) "
              "beside its cost, to tell a costlier fleet from a slower machine; WAL is the "
              "whole cluster's (pg_stat_wal), per terminal.\n")
    md.append("| run | stored before | CPUs | terminals/s | server CPU ms / terminal "
              "| machine CPU ms / terminal | reference signs/s | commits / terminal "
              "| WAL KB / terminal | full-page images / terminal |")
    md.append("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in all_runs:
        if not r:
            continue
        commits = sum(c["commits"] for c in r["postgres_per_terminal"].values())
        wal = r["wal_per_terminal"] or {}
        md.append(f"| {name} | {fmt(r['stored_terminals_before'])} | {r['cpus'] or '—'} | "
                  f"{fmt(r['terminals_per_s'], 1)} | {server_cpu(r):.2f} | "
                  f"{fmt(r['machine_cpu_ms_per_terminal'], 2)} | {fmt(r['reference_rsa_signs_per_s'])} | "
                  f"{commits:.2f} | {fmt(wal.get('bytes') and wal['bytes'] / 1024, 1)} | "
                  f"{fmt(wal.get('full_page_images'), 2)} |")
    md.append("")
if core_summary and all_cores:
    md.append("## End to end on fewer cores\n")
    md.append("The empty level's fleets again, with the services, PostgreSQL and rkl-pos all "
              "confined to the CPUs shown (taskset), against the same fleets on all "
              f"{nproc} CPUs. Machine CPU is every process's, the kernel's included.\n")
    md.append("| CPUs | fleets | median terminals/s (each run) | median machine CPU ms / terminal "
              "| cores kept busy | median server CPU ms / terminal | all CPUs' rate over this |")
    md.append("|---|---:|---|---:|---:|---:|---:|")
    for level, L in sorted(core_summary.items()) + [("e2e", all_cores)]:
        runs = " / ".join(fmt(r, 1) for r in L["terminals_per_s"])
        over = ratio(all_cores["median_terminals_per_s"], L["median_terminals_per_s"])
        machine = L["median_machine_cpu_ms_per_terminal"]
        busy = machine * L["median_terminals_per_s"] / 1000 if machine else None
        md.append(f"| {L['cpus'] or '—'} | {len(L['runs'])} | {fmt(L['median_terminals_per_s'], 1)} "
                  f"({runs}) | {fmt(machine, 2)} | {fmt(busy, 2)} | "
                  f"{L['median_server_cpu_ms_per_terminal']:.2f} | {over:.2f}× |")
    one, best = crypto_only_at(1), terminal_ceiling
    if one and best:
        md.append("")
        md.append(f"The crypto-only terminal, for comparison: {fmt(one)}/s on one thread, "
                  f"{fmt(best)}/s on all cores ({best / one:.2f}×).")
    md.append("")
m_off, m_on = metrics_summary.get("metricsoff"), metrics_summary.get("metricson")
if m_off and m_on:
    cost = 1 - m_on["median_terminals_per_s"] / m_off["median_terminals_per_s"]
    md.append("## Metrics off vs on\n")
    md.append("The same fleet with every process's /metrics endpoint off and on (services "
              "restarted with metrics.listen, each scraped every "
              f"{env.get('scrape_interval', '?')} s), alternated off, on, on, off, ... "
              f"Throughput cost of metrics: **{cost * 100:.1f}%** of the median rate.\n")
    md.append("| metrics | fleets | median terminals/s (each run) | median machine CPU ms / terminal "
              "| median server CPU ms / terminal |")
    md.append("|---|---:|---|---:|---:|")
    for label, L in (("off", m_off), ("on", m_on)):
        runs = " / ".join(fmt(r, 1) for r in L["terminals_per_s"])
        md.append(f"| {label} | {len(L['runs'])} | {fmt(L['median_terminals_per_s'], 1)} ({runs}) | "
                  f"{fmt(L['median_machine_cpu_ms_per_terminal'], 2)} | "
                  f"{L['median_server_cpu_ms_per_terminal']:.2f} |")
    md.append("")
if any(c["processes"] for c in core_sweep):
    md.append("## Core sweep: each process's CPU and busiest thread\n")
    md.append("Per K (everything on CPUs 0..K-1), the run with the median rate: each process's "
              "CPU per terminal and, in parentheses, its busiest thread's share of one core over "
              "the fleet (`/proc/<pid>/task/*/stat`; PostgreSQL's busiest thread is its busiest "
              "backend; rkl-pos's CPU up to its last half-second sample).\n")
    procs = sorted({p for c in core_sweep if c["processes"] for p in c["processes"]},
                   key=lambda p: (p not in COUNT_PROCESSES + ("postgres",), p))
    md.append("| K | median terminals/s | machine CPU ms / terminal | cores busy | " +
              " | ".join(f"{p} ms (busiest thread)" for p in procs) + " |")
    md.append("|---:|---:|---:|---:|" + "---:|" * len(procs))
    for c in core_sweep:
        P = c["processes"] or {}
        cells = [f"{P[p]['cpu_ms_per_terminal']:.2f} ({100 * P[p]['busiest_thread_core_share']:.0f}%)"
                 if p in P else "—" for p in procs]
        md.append(f"| {c['k']} | {fmt(c['median_terminals_per_s'], 1)} | "
                  f"{fmt(c['median_machine_cpu_ms_per_terminal'], 2)} | "
                  f"{fmt(c['cores_busy'], 2)} of {c['k']} | " + " | ".join(cells) + " |")
    md.append("")
    if core_saturation:
        md.append(core_saturation + "\n")


def per_db(c, key):
    return {db: d[key] for db, d in c["per_database"].items()} if c else {}


def ratio_cell(a, b):
    return f"{b / a:.2f}×" if a and b is not None else "—"


cur_c, base_c = count["current"], count["baseline"]
if baseline_summary:
    cur_l = level_summary.get("e2e")
    md.append("## Before / after\n")
    md.append(f"Baseline `{env.get('baseline_rev')}` = {env.get('baseline_git')} "
              f"(\"{env.get('baseline_subject', '')}\") against HEAD {env.get('git')} "
              f"(\"{env.get('git_subject', '')}\"): each built Release and run as its own "
              "deployment on this machine, the empty level's fleets alternated baseline, current, "
              "current, baseline, ...; statements, commits and calls from each one's count "
              "phase.\n")
    md.append(f"| per terminal | {env.get('baseline_git')} (before) | {env.get('git')} (after) | after / before |")
    md.append("|---|---:|---:|---:|")

    def row(label, a, b, digits=2):
        md.append(f"| {label} | {fmt(a, digits)} | {fmt(b, digits)} | {ratio_cell(a, b)} |")

    b_runs = " / ".join(fmt(r, 1) for r in baseline_summary["terminals_per_s"])
    c_runs = " / ".join(fmt(r, 1) for r in cur_l["terminals_per_s"]) if cur_l else ""
    md.append(f"| terminals/s, median ({b_runs} → {c_runs}) | "
              f"{fmt(baseline_summary['median_terminals_per_s'], 1)} | "
              f"{fmt(cur_l and cur_l['median_terminals_per_s'], 1)} | "
              f"{ratio_cell(baseline_summary['median_terminals_per_s'], cur_l and cur_l['median_terminals_per_s'])} |")
    row("machine CPU ms (median)", baseline_summary["median_machine_cpu_ms_per_terminal"],
        cur_l and cur_l["median_machine_cpu_ms_per_terminal"])
    row("server CPU ms (median)", baseline_summary["median_server_cpu_ms_per_terminal"],
        cur_l and cur_l["median_server_cpu_ms_per_terminal"])
    if cur_c or base_c:
        for key, label in (("statements", "statements"), ("commits", "commits")):
            b_db, c_db = per_db(base_c, key), per_db(cur_c, key)
            for db in sorted(set(b_db) | set(c_db)):
                row(f"{label}, {db}", b_db.get(db), c_db.get(db))
            row(f"{label}, all databases", base_c and base_c[f"{key}_per_terminal"],
                cur_c and cur_c[f"{key}_per_terminal"])
        row("KMS BeginAuthentication calls", base_c and base_c["begin_authentication_per_terminal"],
            cur_c and cur_c["begin_authentication_per_terminal"], 3)
        for metric in FORWARDER:
            row(f"`{metric}`", base_c and base_c["forwarder_per_terminal"].get(metric),
                cur_c and cur_c["forwarder_per_terminal"].get(metric), 3)
    md.append("")
for label, c in (("current build", cur_c), (f"baseline {env.get('baseline_git')}", base_c)):
    if not c:
        continue
    md.append(f"## Per terminal: statements, commits, RPCs ({label})\n")
    md.append(f"One fleet of {c['terminals']} terminals ({c['failed']} failed), concurrency "
              f"{env.get('concurrency')}, with pg_stat_statements (track = top, utility "
              "statements included) and every /metrics endpoint on; counts divided by the "
              "terminals that succeeded.\n")
    md.append("| database | statements | commits |")
    md.append("|---|---:|---:|")
    for db, d in c["per_database"].items():
        md.append(f"| {db} | {d['statements']:.2f} | {fmt(d['commits'], 2)} |")
    md.append(f"| all | {c['statements_per_terminal']:.2f} | {c['commits_per_terminal']:.2f} |")
    md.append("")
    md.append("| database | calls / terminal | mean µs in the backend | buffers / call | "
              "statement (normalised, first 120 characters) |")
    md.append("|---|---:|---:|---:|---|")
    for db, d in c["per_database"].items():
        for t in d["top"]:
            q = t["query"].replace("|", "\\|")
            md.append(f"| {db} | {t['calls_per_terminal']:.2f} | {fmt(t.get('mean_exec_us'), 0)} "
                      f"| {fmt(t.get('buffers_per_call'), 0)} | `{q}` |")
    md.append("")
    if c["rpcs_per_terminal"]:
        md.append("| process | method | code | calls / terminal |")
        md.append("|---|---|---|---:|")
        for proc, calls in c["rpcs_per_terminal"].items():
            for method_code, v in sorted(calls.items()):
                method, code = method_code.rsplit(" ", 1)
                md.append(f"| {proc} | {method} | {code} | {v:.3f} |")
        md.append("")
    md.append("MTMS forwarder per terminal: " + ", ".join(
        f"`{m}` {fmt(v, 3)}" for m, v in c["forwarder_per_terminal"].items()) +
        " (— where the build has no such metric).\n")
if rpc_latency:
    md.append("## Server-side RPC latency (interceptor log, mean over the whole run)\n")
    md.append("| service | method | calls | mean ms |")
    md.append("|---|---|---:|---:|")
    for r in rpc_latency:
        md.append(f"| {r['service']} | {r['method']} | {r['calls']} | {r['mean_ms']:.2f} |")
    md.append("")
md.append("## Micro-benchmarks\n")
md.append("| benchmark | threads | µs per op (wall) | ops/s |")
md.append("|---|---:|---:|---:|")
for name, b in micro.items():
    rate = 1 / (b["real_time_us"] * 1e-6)  # all threads together (see crypto_ceiling)
    md.append(f"| {name} | {b['threads']} | {b['real_time_us']:.2f} | {fmt(rate)} |")
md.append("")
with open(os.path.join(out, "results.md"), "w") as f:
    f.write("\n".join(md))

# ---- chart data: label, value (per second) ---------------------------------------------------
rows = [("RSA-2048 ceiling", rsa_sign), ("gRPC echo ceiling", echo_rps),
        ("crypto-only terminal ceiling", terminal_ceiling),
        ("HSM translate, 1 per call", hsm and hsm["per_second"]),
        ("HSM translate, batched", hsm_batch and hsm_batch["per_second"]),
        ("MTMS intake+forward", mtms and mtms["per_second"]),
        ("KMS auth+delivery+confirm", kms and kms["per_second"])]
for level, L in sorted(level_summary.items(), key=lambda kv: kv[1]["stored_before"] or 0):
    rows.append((f"e2e, {L['stored_before']} stored (median)", L["median_terminals_per_s"]))
for level, L in sorted(core_summary.items()):
    rows.append((f"e2e on CPUs {L['cpus']} (median)", L["median_terminals_per_s"]))
for label, L in (("off", m_off), ("on", m_on)):
    if L:
        rows.append((f"e2e, metrics {label} (median)", L["median_terminals_per_s"]))
# A partial run (--only) measured only some rows; gnuplot's log scale cannot draw zeros.
rows = [(label, v) for label, v in rows if v]
with open(os.path.join(raw, "chart.dat"), "w") as f:
    for i, (label, v) in enumerate(rows):
        f.write(f'{i} "{label}" {v if v else 0}\n')
# The core sweep's chart: K, median terminals/s.
with open(os.path.join(raw, "cores.dat"), "w") as f:
    for c in core_sweep:
        if c["k"] and c["median_terminals_per_s"]:
            f.write(f"{c['k']} {c['median_terminals_per_s']}\n")
