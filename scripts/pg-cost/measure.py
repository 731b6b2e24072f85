#!/usr/bin/env python3
"""PostgreSQL cost per order of several write paths, side by side.

    scripts/pg-cost/measure.py [--rounds N] [--secs S] [--clients C]
                               [--preload N] [--fillfactors 50,70,80,90]

Builds two template databases from migrations/ (once; --rebuild to redo):
`pgcost_tpl_a` with today's schema (0001-0003) and `pgcost_tpl_b` with every
migration (0004: no index on a column the decision changes). Each run copies
a template, checkpoints, runs pgbench for --secs after a short warm-up, and
reports over the measured window:

  a     today's schema: accept.sql (insert pending) then decide.sql
  b<FF> HOT schema, fillfactor FF: the same two scripts
  u<FF> as b<FF>, but the decision reads the pending rows without locking
        them (FOR NO KEY UPDATE dropped)
  c     write once, today's schema: write-once.sql (insert decided)

orders/s, WAL bytes per order (pg_current_wal_lsn() difference: the whole
cluster's WAL, so other databases' writes count too), CPU per order of this
database's backends (/proc/<pid>/stat), CPU per order of every postgres
process (walwriter, checkpointer, other databases' backends included) and
the share of updates of orders that were HOT, and the heap's growth per
order written (what the fillfactor costs on disk). Variants alternate inside a
round, so noise hits them alike: compare ratios, not absolute figures.
"""
import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PGBIN = os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin")
PG = ["-h", os.environ.get("PGHOST", "127.0.0.1"), "-U", os.environ.get("PGUSER", "postgres")]
TICK = os.sysconf("SC_CLK_TCK")
BATCH = 100


def psql(db, sql, *extra):
    out = subprocess.run([f"{PGBIN}/psql", *PG, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", db, *extra, "-c", sql],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def psql_file(db, path, *extra):
    subprocess.run([f"{PGBIN}/psql", *PG, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, *extra, "-f", path],
                   check=True, capture_output=True, text=True)


def exists(db):
    return psql("postgres", f"SELECT count(*) FROM pg_database WHERE datname = '{db}'") == "1"


def build_template(name, migrations, preload):
    if exists(name):
        psql("postgres", f"DROP DATABASE {name}")
    psql("postgres", f"CREATE DATABASE {name}")
    for m in migrations:
        psql_file(name, os.path.join(ROOT, "migrations", m))
    # The preloaded rows fill their pages: a run's inserts then go to new
    # pages, at the fillfactor the run sets, not into room the preload left.
    psql(name, "ALTER TABLE orders SET (fillfactor = 100)")
    psql_file(name, os.path.join(HERE, "seed.sql"), "-v", f"preload={preload}")
    psql(name, "VACUUM ANALYZE")


def cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except OSError:
        return 0


def postgres_pids():
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() == "postgres":
                        pids.append(int(pid))
            except OSError:
                pass
    return pids


def sample(db):
    backends = [int(p) for p in psql(
        "postgres",
        f"SELECT pid FROM pg_stat_activity WHERE datname = '{db}' AND application_name = 'pgbench'").split()]
    lsn, batches = psql(db, "SELECT pg_current_wal_lsn() - '0/0', last_value FROM pgcost_batch").split("|")
    return {
        "t": time.monotonic(),
        "lsn": int(float(lsn)),
        "batches": int(batches),
        "backends": {p: cpu_ticks(p) for p in backends},
        "all": sum(cpu_ticks(p) for p in postgres_pids()),
    }


def run(variant, template, script, fillfactor, args):
    db = "pgcost_run"
    if exists(db):
        psql("postgres", f"DROP DATABASE {db}")
    psql("postgres", f"CREATE DATABASE {db} TEMPLATE {template}")
    if fillfactor:
        psql(db, f"ALTER TABLE orders SET (fillfactor = {fillfactor})")
    psql(db, "CHECKPOINT")
    size0 = int(psql(db, "SELECT pg_table_size('orders')"))
    batches0 = int(psql(db, "SELECT last_value FROM pgcost_batch"))
    warm = 3
    bench = subprocess.Popen(
        [f"{PGBIN}/pgbench", *PG, "-n", "-c", str(args.clients), "-j", "2", "-T", str(warm + args.secs + 2),
         "-f", script, db], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(warm)
    s1 = sample(db)
    time.sleep(args.secs)
    s2 = sample(db)
    out, _ = bench.communicate()
    if bench.returncode != 0:
        sys.exit(f"pgbench failed:\n{out}")
    time.sleep(1.2)  # table statistics are flushed at most once a second
    upd, hot = psql(db, "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'orders'").split("|")
    size = int(psql(db, "SELECT pg_table_size('orders')"))
    written = (int(psql(db, "SELECT last_value FROM pgcost_batch")) - batches0) * BATCH
    orders = (s2["batches"] - s1["batches"]) * BATCH
    secs = s2["t"] - s1["t"]
    backend_ticks = sum(s2["backends"].get(p, v) - v for p, v in s1["backends"].items())
    row = {
        "variant": variant,
        "orders_per_s": orders / secs,
        "wal_per_order": (s2["lsn"] - s1["lsn"]) / orders,
        "backend_us": backend_ticks / TICK / orders * 1e6,
        "all_pg_us": (s2["all"] - s1["all"]) / TICK / orders * 1e6,
        "hot": (int(hot) / int(upd)) if int(upd) else None,
        "heap_per_order": (size - size0) / written,
    }
    psql("postgres", f"DROP DATABASE {db}")
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--secs", type=int, default=15)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--preload", type=int, default=1000000)
    ap.add_argument("--fillfactors", default="50,70,80,90")
    ap.add_argument("--variants", default="a,b,c", help="subset of a,b,c,u")
    ap.add_argument("--rebuild", action="store_true")
    args = ap.parse_args()
    migrations = sorted(m for m in os.listdir(os.path.join(ROOT, "migrations")) if m.endswith(".sql"))
    today = [m for m in migrations if m[:4] <= "0003"]
    for name, ms in (("pgcost_tpl_a", today), ("pgcost_tpl_b", migrations)):
        if args.rebuild or not exists(name):
            print(f"building {name} ({args.preload} orders)...", file=sys.stderr)
            build_template(name, ms, args.preload)
    two_step = os.path.join("/tmp", f"pgcost-two-step-{os.getpid()}.sql")
    with open(two_step, "w") as f:
        for part in ("accept.sql", "decide.sql"):
            with open(os.path.join(HERE, part)) as src:
                f.write(src.read())
    # The same decision without locking the order rows it reads (the
    # partition's cursor row already serializes every decider of them).
    unlocked = os.path.join("/tmp", f"pgcost-unlocked-{os.getpid()}.sql")
    with open(two_step) as src, open(unlocked, "w") as f:
        text = src.read()
        locked = "AND status = 'pending' FOR NO KEY UPDATE;"
        assert locked in text
        f.write(text.replace(locked, "AND status = 'pending';"))
    plan = []
    chosen = args.variants.split(",")
    if "a" in chosen:
        plan.append(("a", "pgcost_tpl_a", two_step, None))
    if "b" in chosen:
        for ff in args.fillfactors.split(","):
            plan.append((f"b{ff}", "pgcost_tpl_b", two_step, int(ff)))
    if "u" in chosen:
        for ff in args.fillfactors.split(","):
            plan.append((f"u{ff}", "pgcost_tpl_b", unlocked, int(ff)))
    if "c" in chosen:
        plan.append(("c", "pgcost_tpl_a", os.path.join(HERE, "write-once.sql"), None))
    print("| round | variant | orders/s | WAL B/order | backend CPU µs/order | all postgres CPU µs/order | HOT share | heap B/order |")
    print("|---|---|---|---|---|---|---|---|")
    for r in range(args.rounds):
        for variant, template, script, ff in (plan if r % 2 == 0 else list(reversed(plan))):
            x = run(variant, template, script, ff, args)
            hot = "-" if x["hot"] is None else f"{x['hot']:.3f}"
            print(f"| {r + 1} | {variant} | {x['orders_per_s']:.0f} | {x['wal_per_order']:.0f} | "
                  f"{x['backend_us']:.1f} | {x['all_pg_us']:.1f} | {hot} | {x['heap_per_order']:.0f} |", flush=True)
    os.unlink(two_step)
    os.unlink(unlocked)


if __name__ == "__main__":
    main()
