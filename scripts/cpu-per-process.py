#!/usr/bin/env python3
"""CPU time by process name over a command's run, for BENCHMARKS.md.

    scripts/cpu-per-process.py OUT.json -- COMMAND [ARGS...]

Snapshots utime+stime of every process (by comm, threads included) and the
machine's busy time from /proc before and after COMMAND, and writes the CPU
seconds used by each process name, plus COMMAND's own (and its children's)
CPU time. Processes that start and exit during the run other than COMMAND
(for instance PostgreSQL backends of short-lived connections) are not seen,
so start the system under test before. Linux only.
"""
import json
import os
import resource
import subprocess
import sys

TICK = os.sysconf("SC_CLK_TCK")


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
        totals[pid] = (name.split("-")[0] if name.startswith("kworker") else name, cpu)
    return totals


def machine():
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return (sum(parts) - idle) / TICK, sum(parts) / TICK


def main():
    out, sep, command = sys.argv[1], sys.argv[2], sys.argv[3:]
    assert sep == "--" and command, __doc__
    before, (busy0, all0) = per_name(), machine()
    rc = subprocess.call(command)
    after, (busy1, all1) = per_name(), machine()
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
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))
    sys.exit(rc)


if __name__ == "__main__":
    main()
