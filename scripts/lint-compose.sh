#!/usr/bin/env bash
#
# Checks the Docker Compose set-up (docker-compose.yml, .env and
# deploy/haproxy.cfg) as far as a machine without a Docker engine can:
#
#   1. dclint lints docker-compose.yml: the Compose schema and dclint's
#      rules, with no error and no warning.
#   2. The profiles and the wiring, read from the file: `docker compose up`
#      (COMPOSE_PROFILES from .env) starts one nats-server, one API and one
#      worker; `--profile cluster` three nodes, two APIs, three workers and
#      the load balancer, and nothing of the single-node system. In each,
#      every dependency is started and no host port is published twice. The
#      nodes' names, routes, advertised addresses, stores and health checks
#      agree with each other; every API and worker lists all the nodes, with
#      as many stream replicas as nodes; the load balancer's servers are the
#      APIs.
#   3. `haproxy -c` checks deploy/haproxy.cfg.
#   4. `nats-server -t` checks each NATS service's command line and the
#      configuration file it mounts, with the nats-server pinned in
#      scripts/lib/services.sh (the version of the compose image).
#
#   scripts/lint-compose.sh
#
# Quiet when all is well; prints every problem and exits 1 otherwise.
# CHECKLINE_LINT_COMPOSE_TIMEOUT_SECS (default 900) bounds the whole run,
# installs included; once installed, a run takes a few seconds.
#
# What it needs is installed on first use, under .run/ (gitignored):
#   .run/dclint/    dclint from the npm registry, pinned below; Node.js and
#                   npm come from Debian (apt-get) when missing
#   .run/haproxy/   Debian's haproxy package, unpacked rather than installed
#                   (installing it would start a haproxy service on the
#                   machine); its libraries come from Debian
#   .run/venv/      the pinned nats-server (scripts/lib/services.sh)

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

LIMIT_SECS=${CHECKLINE_LINT_COMPOSE_TIMEOUT_SECS:-900}
[[ $LIMIT_SECS =~ ^[0-9]+$ && $LIMIT_SECS -gt 0 ]] || {
    echo "[lint-compose] error: CHECKLINE_LINT_COMPOSE_TIMEOUT_SECS=$LIMIT_SECS is not a positive number of seconds" >&2
    exit 2
}
# The whole run, with everything it starts (npm, apt-get), under one bound.
if [[ -z ${_CHECKLINE_LINT_COMPOSE_BOUNDED:-} ]]; then
    rc=0
    _CHECKLINE_LINT_COMPOSE_BOUNDED=1 timeout -k 10 "$LIMIT_SECS" bash "$0" "$@" || rc=$?
    if ((rc == 124 || rc == 137)); then
        echo "[lint-compose] error: gave up after ${LIMIT_SECS}s (CHECKLINE_LINT_COMPOSE_TIMEOUT_SECS)" >&2
    fi
    exit "$rc"
fi

# shellcheck source=scripts/lib/services.sh
source "$ROOT/scripts/lib/services.sh"

# 2.2.2, not 3.x: dclint 3 needs Node.js 20.19 or newer (it loads an ES
# module with require()) and Debian 12 ships Node.js 18.20. Both versions
# have the same rules.
DCLINT_VERSION=2.2.2
DCLINT_DIR=$RUN_DIR/dclint
DCLINT=$DCLINT_DIR/node_modules/dclint/bin/dclint.cjs
HAPROXY_DIR=$RUN_DIR/haproxy

log() { printf '[lint-compose] %s\n' "$*" >&2; }
die() {
    printf '[lint-compose] error: %s\n' "$*" >&2
    exit 1
}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/lint-compose.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

PROBLEMS=0
problem() {
    printf '[lint-compose] %s\n' "$*" >&2
    PROBLEMS=$((PROBLEMS + 1))
}

# ---------------------------------------------------------------- dclint --

ensure_node() {
    local missing=()
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    command -v npm >/dev/null 2>&1 || missing+=(npm)
    if ((${#missing[@]})); then
        svc_apt_install "${missing[@]}"
    fi
    local version major minor
    version=$(node --version 2>/dev/null) || die "node does not run"
    IFS=. read -r major minor _ <<<"${version#v}"
    ((major > 18 || (major == 18 && minor >= 20))) ||
        die "Node.js $version is older than 18.20, which dclint $DCLINT_VERSION needs"
}

ensure_dclint() {
    ensure_node
    if [[ -f $DCLINT && "$(node "$DCLINT" --version 2>/dev/null)" == "$DCLINT_VERSION" ]]; then
        return 0
    fi
    log "installing dclint $DCLINT_VERSION into $DCLINT_DIR"
    rm -rf "$DCLINT_DIR"
    mkdir -p "$DCLINT_DIR"
    npm install --prefix "$DCLINT_DIR" --no-audit --no-fund --loglevel=error \
        "dclint@$DCLINT_VERSION" >"$TMP/npm.log" 2>&1 || {
        cat "$TMP/npm.log" >&2
        die "npm install dclint@$DCLINT_VERSION failed"
    }
    [[ "$(node "$DCLINT" --version 2>/dev/null)" == "$DCLINT_VERSION" ]] ||
        die "dclint $DCLINT_VERSION did not install to $DCLINT"
}

# --------------------------------------------------------------- haproxy --

# Sets HAPROXY to a haproxy binary: the machine's, or Debian's package
# unpacked into .run/haproxy.
ensure_haproxy() {
    if command -v haproxy >/dev/null 2>&1; then
        HAPROXY=$(command -v haproxy)
        return 0
    fi
    HAPROXY=$HAPROXY_DIR/root/usr/sbin/haproxy
    if [[ -x $HAPROXY ]] && "$HAPROXY" -v >/dev/null 2>&1; then
        return 0
    fi
    log "unpacking Debian's haproxy into $HAPROXY_DIR"
    rm -rf "$HAPROXY_DIR"
    mkdir -p "$HAPROXY_DIR"
    local deb
    if ! (cd "$HAPROXY_DIR" && apt-get download -q haproxy) >"$TMP/apt.log" 2>&1; then
        # No package lists yet (a fresh machine): fetch them once; the
        # installs below then need not fetch them again.
        log "apt-get update"
        _svc_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 ||
            die "apt-get update failed"
        _SVC_APT_UPDATED=1
        (cd "$HAPROXY_DIR" && apt-get download -q haproxy) >"$TMP/apt.log" 2>&1 || {
            cat "$TMP/apt.log" >&2
            die "apt-get download haproxy failed"
        }
    fi
    deb=$(find "$HAPROXY_DIR" -maxdepth 1 -name 'haproxy_*.deb' | head -n1)
    [[ -n $deb ]] || die "apt-get download haproxy left no package in $HAPROXY_DIR"
    dpkg-deb -x "$deb" "$HAPROXY_DIR/root" || die "dpkg-deb -x $deb failed"
    if ldd "$HAPROXY" 2>/dev/null | grep -q 'not found'; then
        # The package's library dependencies that the machine lacks
        # (liblua5.3-0, ...): libraries only, nothing that runs a service, and
        # nothing installed already (apt-get would upgrade it).
        local lib libs=()
        for lib in $(dpkg-deb -f "$deb" Depends | tr ',' '\n' |
            sed 's/[|(].*//; s/[[:space:]]//g' | grep '^lib'); do
            dpkg-query -W -f '${Status}' "$lib" 2>/dev/null | grep -q 'ok installed' ||
                libs+=("$lib")
        done
        if ((${#libs[@]})); then
            svc_apt_install "${libs[@]}"
        fi
    fi
    "$HAPROXY" -v >/dev/null 2>&1 || die "$HAPROXY does not run on this machine"
}

# ------------------------------------------------------------ the checks --

ensure_dclint
ensure_haproxy
ensure_nats_binary
NATS_VERSION=$NATS_SERVER_VERSION

# 1. dclint: errors and warnings both fail.
if ! node "$DCLINT" --max-warnings 0 --no-color docker-compose.yml >"$TMP/dclint.out" 2>&1; then
    cat "$TMP/dclint.out" >&2
    problem "dclint $DCLINT_VERSION: docker-compose.yml has the problems above"
fi

# 2. Profiles and wiring. Writes the NATS command lines (host paths in place
# of the container's) and the load balancer's configuration file to
# $TMP/checks, for 3 and 4.
if ! node - "$ROOT" "$TMP" "$NATS_VERSION" "$(dirname "$DCLINT")/.." \
    >"$TMP/wiring.out" 2>&1 <<'JS'; then
'use strict';
const fs = require('fs');
const path = require('path');
const { createRequire } = require('module');

const [root, tmp, natsVersion, dclintPackage] = process.argv.slice(2);
// The YAML parser dclint itself uses.
const YAML = createRequire(path.join(dclintPackage, 'package.json'))('yaml');
const problems = [];
const fail = (msg) => problems.push(msg);

const compose = YAML.parse(fs.readFileSync(path.join(root, 'docker-compose.yml'), 'utf8'), { merge: true });
const services = compose.services || {};

// Compose's own default: COMPOSE_PROFILES from .env.
let defaults = [];
const dotenv = path.join(root, '.env');
if (fs.existsSync(dotenv)) {
  for (const line of fs.readFileSync(dotenv, 'utf8').split('\n')) {
    const m = /^\s*COMPOSE_PROFILES\s*=\s*(.*?)\s*$/.exec(line);
    if (m) defaults = m[1].replace(/^["']|["']$/g, '').split(',').map((s) => s.trim()).filter(Boolean);
  }
}
if (defaults.length === 0) fail('.env sets no COMPOSE_PROFILES: `docker compose up` would start no system');

const enabled = (profiles) => Object.keys(services).filter((name) => {
  const own = services[name].profiles || [];
  return own.length === 0 || own.some((p) => profiles.includes(p));
});
const image = (name) => String(services[name].image || '');
const command = (name) => (Array.isArray(services[name].command) ? services[name].command.map(String) : []);
const role = (name) => {
  if (image(name).startsWith('nats:')) return 'nats';
  if (image(name).startsWith('haproxy:')) return 'lb';
  if (image(name).startsWith('postgres:')) return 'postgres';
  if (image(name).startsWith('redis:')) return 'redis';
  if (command(name)[0] === 'checkline-api') return 'api';
  if (command(name)[0] === 'checkline-worker') return 'worker';
  return 'other';
};
const env = (name) => {
  const e = services[name].environment || {};
  if (!Array.isArray(e)) return Object.fromEntries(Object.entries(e).map(([k, v]) => [k, String(v)]));
  return Object.fromEntries(e.map((kv) => [String(kv).split('=')[0], String(kv).split('=').slice(1).join('=')]));
};
const dependsOn = (name) => {
  const d = services[name].depends_on || {};
  return Array.isArray(d) ? Object.fromEntries(d.map((n) => [n, { condition: 'service_started' }])) : d;
};
// "source:target[:mode]" volumes as {source, target}.
const volumes = (name) => (services[name].volumes || []).map((v) => {
  if (typeof v === 'object') return { source: String(v.source || ''), target: String(v.target || '') };
  const [source, target] = String(v).split(':');
  return { source, target };
});
const flags = (name) => {
  const args = command(name);
  const out = {};
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '-js') out['-js'] = true;
    else if (args[i].startsWith('-')) out[args[i]] = args[++i];
  }
  return out;
};
const port = (url) => {
  const m = /:(\d+)$/.exec(String(url || '').replace(/\/$/, ''));
  return m ? m[1] : '';
};
const sameSet = (a, b) => JSON.stringify([...a].sort()) === JSON.stringify([...b].sort());

const checks = [];
const natsChecked = new Set();
const systems = [
  ['`docker compose up`', defaults, { nats: 1, api: 1, worker: 1, lb: 0, postgres: 1, redis: 1 }],
  ['`--profile cluster`', ['cluster'], { nats: 3, api: 2, worker: 3, lb: 1, postgres: 1, redis: 1 }],
];
for (const [system, profiles, want] of systems) {
  const names = enabled(profiles);
  const of = (r) => names.filter((n) => role(n) === r);
  for (const [r, count] of Object.entries(want)) {
    if (of(r).length !== count) fail(`${system}: ${count} ${r} service(s) expected, found ${of(r).length} (${of(r).join(', ') || 'none'})`);
  }
  if (of('other').length) fail(`${system}: services of no known role: ${of('other').join(', ')}`);

  const published = new Map();
  for (const n of names) {
    for (const dep of Object.keys(dependsOn(n))) {
      if (!names.includes(dep)) fail(`${system}: ${n} depends on ${dep}, which this profile does not start`);
    }
    for (const p of services[n].ports || []) {
      const host = typeof p === 'object' ? `${p.host_ip || ''}:${p.published}` : String(p).split(':').slice(0, -1).join(':');
      if (published.has(host)) fail(`${system}: ${n} and ${published.get(host)} both publish ${host}`);
      published.set(host, n);
    }
  }

  // The nodes.
  const nodes = of('nats');
  const clientUrls = [];
  const routeUrls = [];
  for (const n of nodes) {
    const f = flags(n);
    clientUrls.push(`nats://${n}:${f['-p']}`);
    routeUrls.push(`nats://${n}:${port(f['--cluster'])}`);
  }
  const stores = new Set();
  for (const n of nodes) {
    const f = flags(n);
    if (!image(n).startsWith(`nats:${natsVersion}`)) fail(`${n}: image ${image(n)} is not nats:${natsVersion}, the nats-server that scripts/lib/services.sh pins and that checks it here`);
    for (const flag of ['-c', '-p', '-m', '-sd']) if (!f[flag]) fail(`${n}: no ${flag} on its command line`);
    const conf = volumes(n).find((v) => v.target === f['-c']);
    if (!conf || !conf.source.startsWith('./') || !fs.existsSync(path.join(root, conf.source))) {
      fail(`${n}: its configuration ${f['-c']} is not mounted from a file of this repository`);
    }
    const store = volumes(n).find((v) => v.target === f['-sd']);
    if (!store || store.source.startsWith('.') || store.source.startsWith('/')) fail(`${n}: its store ${f['-sd']} is not on a named volume`);
    else if (stores.has(store.source)) fail(`${n}: shares the volume ${store.source} with another node`);
    else stores.add(store.source);
    const test = [].concat((services[n].healthcheck || {}).test || []).join(' ');
    if (!test.includes(`127.0.0.1:${f['-m']}/healthz?js-enabled-only=true`)) fail(`${n}: its health check does not ask /healthz?js-enabled-only=true on its monitoring port ${f['-m']}`);
    if (nodes.length > 1) {
      const routePort = port(f['--cluster']);
      if (f['--name'] !== n) fail(`${n}: --name is ${f['--name']}, not the service's name`);
      if (!routePort) fail(`${n}: --cluster ${f['--cluster']} names no route port`);
      if (!sameSet(String(f['--routes'] || '').split(','), routeUrls)) fail(`${n}: --routes ${f['--routes']} is not every node's route URL (${routeUrls.join(',')})`);
      if (f['--cluster_advertise'] !== `${n}:${routePort}`) fail(`${n}: --cluster_advertise ${f['--cluster_advertise']} is not ${n}:${routePort}`);
      if (f['--client_advertise'] !== `${n}:${f['-p']}`) fail(`${n}: --client_advertise ${f['--client_advertise']} is not ${n}:${f['-p']}`);
    }
    if (!natsChecked.has(n) && conf) {
      natsChecked.add(n);
      const args = command(n).map((a) => (a === f['-c'] ? path.join(root, conf.source) : a === f['-sd'] ? path.join(tmp, n) : a));
      checks.push(['nats', n, ...args].join('\t'));
    }
  }

  // The APIs and workers: every node, as many replicas as nodes.
  const workerIds = new Map();
  for (const n of [...of('api'), ...of('worker')]) {
    const e = env(n);
    const urls = String(e.CHECKLINE_NATS_URL || '').split(',').map((s) => s.trim());
    if (!sameSet(urls, clientUrls)) fail(`${system}: ${n} has CHECKLINE_NATS_URL=${e.CHECKLINE_NATS_URL}, not the nodes ${clientUrls.join(',')}`);
    const replicas = e.CHECKLINE_STREAM_REPLICAS || '1';
    if (replicas !== String(nodes.length)) fail(`${system}: ${n} has CHECKLINE_STREAM_REPLICAS=${replicas} with ${nodes.length} node(s)`);
    for (const node of nodes) {
      if ((dependsOn(n)[node] || {}).condition !== 'service_healthy') fail(`${system}: ${n} does not wait for ${node} to be healthy`);
    }
    const id = e.CHECKLINE_WORKER_ID;
    if (id !== undefined) {
      if (workerIds.has(id)) fail(`${system}: ${n} and ${workerIds.get(id)} are both CHECKLINE_WORKER_ID=${id}`);
      workerIds.set(id, n);
    }
  }

  // The load balancer: its servers are the APIs, it listens where its port is published.
  for (const n of of('lb')) {
    const cfg = volumes(n).find((v) => v.target.endsWith('haproxy.cfg'));
    if (!cfg || !fs.existsSync(path.join(root, cfg.source))) {
      fail(`${n}: no haproxy.cfg mounted from this repository`);
      continue;
    }
    const text = fs.readFileSync(path.join(root, cfg.source), 'utf8');
    const servers = [...text.matchAll(/^\s*server\s+\S+\s+(\S+)/gm)].map((m) => m[1]);
    const apis = of('api').map((a) => `${a}:${port(env(a).CHECKLINE_HTTP_ADDR)}`);
    if (!sameSet(servers, apis)) fail(`${cfg.source}: servers ${servers.join(', ')} are not the APIs ${apis.join(', ')}`);
    const binds = [...text.matchAll(/^\s*bind\s+\S*:(\d+)/gm)].map((m) => m[1]);
    for (const p of services[n].ports || []) {
      const target = typeof p === 'object' ? String(p.target) : String(p).split(':').pop();
      if (!binds.includes(target)) fail(`${n}: publishes container port ${target}, but ${cfg.source} binds ${binds.join(', ') || 'nothing'}`);
    }
    checks.push(['haproxy', path.join(root, cfg.source)].join('\t'));
  }
}

for (const p of problems) console.error(p);
fs.writeFileSync(path.join(tmp, 'checks'), checks.map((c) => `${c}\n`).join(''));
process.exit(problems.length ? 1 : 0);
JS
    cat "$TMP/wiring.out" >&2
    problem "the profiles or the wiring of docker-compose.yml are wrong (above)"
fi

# 3 and 4: the load balancer's and the nodes' own checkers.
if [[ -f $TMP/checks ]]; then
    while IFS=$'\t' read -r -a line; do
        case ${line[0]} in
        haproxy)
            # A warning fails the check too, but for the one expected here:
            # the APIs' names resolve only inside the compose network (the
            # configuration starts without them, see init-addr).
            if ! timeout 30 "$HAPROXY" -c -f "${line[1]}" >"$TMP/haproxy.out" 2>&1 ||
                grep -E '\[(WARNING|ALERT)\]' "$TMP/haproxy.out" |
                grep -v -q -E "'server [^']+' : could not resolve address '[^']+', disabling server\.$"; then
                cat "$TMP/haproxy.out" >&2
                problem "haproxy -c: ${line[1]#"$ROOT"/} is not valid ($("$HAPROXY" -v | head -n1))"
            fi
            ;;
        nats)
            # nats-server -t checks the configuration file, and exits 0 even
            # after rejecting a flag (it then prints its usage on stdout and
            # the error on stderr): require nothing on stdout and its one
            # line "configuration file ... is valid" on stderr.
            if ! timeout 30 "$NATS_BIN" "${line[@]:2}" -t >"$TMP/nats.out" 2>"$TMP/nats.err" ||
                [[ -s $TMP/nats.out || $(wc -l <"$TMP/nats.err") -ne 1 ]] ||
                ! grep -q '^nats-server: configuration file .* is valid' "$TMP/nats.err"; then
                tail -n 5 "$TMP/nats.out" "$TMP/nats.err" >&2
                problem "nats-server $NATS_VERSION -t: the command line of ${line[1]} is not valid"
            fi
            ;;
        esac
    done <"$TMP/checks"
fi

if ((PROBLEMS)); then
    die "$PROBLEMS problem(s) in the compose set-up"
fi
