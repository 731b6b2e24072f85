#!/usr/bin/env python3
"""CPU time by process name over a command's run, for BENCHMARKS.md.

    scripts/cpu-per-process.py OUT.json [--report REPORT.json] [--interval SECS] \\
        -- COMMAND [ARGS...]
    scripts/cpu-per-process.py --show OUT.json...

Snapshots utime+stime of every process (by comm, threads included) and the
machine's busy time from /proc before and after COMMAND, and writes the CPU
seconds used by each process name, plus COMMAND's own (and its children's)
CPU time. Processes that start and exit during the run other than COMMAND
(for instance PostgreSQL backends of short-lived connections) are not seen,
so start the system under test before. Linux only.

With --report, /proc is also sampled every --interval seconds (default 0.5)
while COMMAND runs, and REPORT.json, the report COMMAND wrote (the load
test's --json-out, or scripts/bench-wrk.sh's), names the load's windows: the
report's own run and, with --baseline, the baseline's ("started_at",
"duration_secs" and "responses.answered" of each). For each window the CPU
each process used inside it (interpolated between samples) is divided by the
orders answered in it and printed as microseconds per order, and written
under "per_order". Set-up, product creation and the checks fall outside the
windows, so these figures are the cost of the orders alone.

--show prints the per-order tables of files written earlier.
"""
import json
import os
import resource
import subprocess
import sys
import threading
import time
from datetime import datetime

TICK = os.sysconf("SC_CLK_TCK")
# Processes below this share of a window's CPU are folded into "other".
MIN_SHOWN_SECS = 0.05


# comm is cut to 15 characters; the full program name is read once per pid.
COMM_LEN = 15
_full_names = {}


def full_name(pid, comm):
    if len(comm) < COMM_LEN:
        return comm
    if pid not in _full_names:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                program = os.path.basename(f.read().split(b"\0")[0].decode(errors="replace"))
        except OSError:
            program = ""
        _full_names[pid] = program if program.startswith(comm) else comm
    return _full_names[pid]


def per_name():
    totals = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICK
        # Keyed by pid: kernel workers change their names as they work.
        totals[pid] = (name.split("-")[0] if name.startswith("kworker") else full_name(pid, name), cpu)
    return totals


def machine():
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return (sum(parts) - idle) / TICK, sum(parts) / TICK


class Sampler(threading.Thread):
    """Samples (wall time, per-pid CPU, machine busy) until stopped."""

    def __init__(self, interval):
        super().__init__(daemon=True)
        self.interval = interval
        self.samples = []
        self.stopped = threading.Event()

    def sample(self):
        self.samples.append((time.time(), per_name(), machine()[0]))

    def run(self):
        while not self.stopped.wait(self.interval):
            self.sample()


def interpolate(series, t):
    """The value of a cumulative counter at time t from sorted (time, value)
    points: linear between points, flat before the first and after the last."""
    (t0, v0), (tn, vn) = series[0], series[-1]
    if t <= t0:
        return v0
    if t >= tn:
        return vn
    lo, hi = 0, len(series) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if series[mid][0] <= t:
            lo = mid
        else:
            hi = mid
    (ta, va), (tb, vb) = series[lo], series[hi]
    return va + (vb - va) * (t - ta) / (tb - ta)


def window_usage(samples, start, end):
    """CPU seconds by process name, and machine busy seconds, in [start, end]."""
    first_time = samples[0][0]
    by_pid = {}
    names = {}
    for t, procs, _ in samples:
        for pid, (name, cpu) in procs.items():
            by_pid.setdefault(pid, []).append((t, cpu))
            names[pid] = name
    by_name = {}
    for pid, series in by_pid.items():
        # A process first seen after the first sample started since: it had
        # used nothing before its first sample's predecessor.
        if series[0][0] > first_time:
            earlier = [t for t, _, _ in samples if t < series[0][0]]
            series = [(earlier[-1], 0.0)] + series
        used = interpolate(series, end) - interpolate(series, start)
        if used > 0:
            by_name[names[pid]] = by_name.get(names[pid], 0.0) + used
    busy = [(t, b) for t, _, b in samples]
    return by_name, interpolate(busy, end) - interpolate(busy, start)


def parse_time(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def windows(report):
    """(label, start, secs, orders) of the report's run and its baseline's."""
    found = []
    for part in (report, report.get("baseline")):
        if not part or not part.get("started_at") or not part.get("duration_secs"):
            continue
        label = f"{part.get('system', 'run')} {part.get('scenario', '')}".strip()
        orders = (part.get("responses") or {}).get("answered") or 0
        found.append((label, parse_time(part["started_at"]), float(part["duration_secs"]), orders))
    return found


def per_order(samples, report, cores):
    result = []
    for label, start, secs, orders in windows(report):
        by_name, busy = window_usage(samples, start, start + secs)
        shown = {k: v for k, v in by_name.items() if v >= MIN_SHOWN_SECS}
        other = sum(v for k, v in by_name.items() if k not in shown)
        if other > 0:
            shown["other"] = other
        total = sum(shown.values())
        us = lambda cpu: round(cpu * 1e6 / orders, 1) if orders else None  # noqa: E731
        result.append(
            {
                "window": label,
                "started_at": datetime.fromtimestamp(start).astimezone().isoformat(),
                "secs": round(secs, 3),
                "orders": orders,
                "machine_busy_secs": round(busy, 2),
                "machine_busy_share": round(busy / (secs * cores), 3) if secs else None,
                "by_process_secs": {k: round(v, 2) for k, v in sorted(shown.items(), key=lambda kv: -kv[1])},
                "us_per_order": {k: us(v) for k, v in sorted(shown.items(), key=lambda kv: -kv[1])},
                "total_us_per_order": us(total),
            }
        )
    return result


def render(per_order_rows):
    lines = []
    for row in per_order_rows:
        share = row.get("machine_busy_share")
        lines.append(
            f"CPU per order, {row['window']}: {row['orders']} orders answered in {row['secs']:.2f} s"
            + (f", machine {share * 100:.0f}% busy" if share is not None else "")
        )
        lines.append(f"  {'process':<20} {'CPU s':>8} {'µs/order':>10}")
        for name, secs in row["by_process_secs"].items():
            us = row["us_per_order"][name]
            lines.append(f"  {name:<20} {secs:>8.2f} {us if us is not None else '-':>10}")
        total = sum(row["by_process_secs"].values())
        us = row["total_us_per_order"]
        lines.append(f"  {'total':<20} {total:>8.2f} {us if us is not None else '-':>10}")
    return "\n".join(lines)


def show(paths):
    for path in paths:
        with open(path) as f:
            rows = json.load(f).get("per_order") or []
        print(f"== {os.path.basename(path)}")
        print(render(rows) if rows else "  (no per-order windows recorded)")


def main():
    args = sys.argv[1:]
    if args[:1] == ["--show"] and len(args) > 1:
        show(args[1:])
        return
    assert len(args) >= 3 and "--" in args, __doc__
    split = args.index("--")
    out, options, command = args[0], args[1:split], args[split + 1 :]
    report_path, interval = None, 0.5
    while options:
        flag, value, options = options[0], options[1], options[2:]
        if flag == "--report":
            report_path = value
        elif flag == "--interval":
            interval = float(value)
        else:
            sys.exit(f"unknown option {flag}\n{__doc__}")
    assert command, __doc__

    sampler = Sampler(interval) if report_path else None
    if sampler:
        sampler.sample()
        sampler.start()
    before, (busy0, all0) = per_name(), machine()
    rc = subprocess.call(command)
    after, (busy1, all1) = per_name(), machine()
    if sampler:
        sampler.stopped.set()
        sampler.join()
        sampler.sample()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    by_name = {}
    for pid, (name, cpu) in after.items():
        delta = cpu - before.get(pid, (name, 0.0))[1]
        if delta > 0:
            by_name[name] = by_name.get(name, 0.0) + delta
    report = {
        "command": os.path.basename(command[0]),
        "command_cpu_secs": round(usage.ru_utime + usage.ru_stime, 2),
        "machine_busy_secs": round(busy1 - busy0, 2),
        "machine_total_secs": round(all1 - all0, 2),
        "by_process_secs": {k: round(v, 2) for k, v in sorted(by_name.items(), key=lambda kv: -kv[1]) if v >= 0.05},
    }
    rows = []
    if sampler:
        try:
            with open(report_path) as f:
                run_report = json.load(f)
        except (OSError, ValueError) as err:
            print(f"cpu-per-process: no per-order figures: {report_path}: {err}", file=sys.stderr)
        else:
            rows = per_order(sampler.samples, run_report, os.cpu_count() or 1)
            report["per_order"] = rows
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps({k: v for k, v in report.items() if k != "per_order"}, indent=2))
    if rows:
        print(render(rows))
    sys.exit(rc)


if __name__ == "__main__":
    main()
