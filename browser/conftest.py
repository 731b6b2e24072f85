"""The browser tests' harness.

Each test module gets a checkline system of its own, started the way a
production host starts it (docs/operations.md): the binaries on their own,
one API and two workers, nothing supervising them, on a fresh PostgreSQL
database and a fresh NATS/Redis prefix of the servers that scripts/test.sh
provides (CHECKLINE_DATABASE_URL, CHECKLINE_NATS_URL, CHECKLINE_REDIS_URL).
Pages are driven in headless Chromium from Debian's packages through
Playwright, pointed at it with `executable_path` (Playwright's own browser
downloads are not used).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("CHECKLINE_BIN_DIR", ROOT / "target" / "debug"))
CHROMIUM = os.environ.get("CHECKLINE_CHROMIUM", "/usr/bin/chromium")
LOGS = ROOT / ".run" / "logs" / "browser"
AXE = ROOT / "browser" / "vendor" / "axe-core" / "axe.min.js"
SECRET = "browser-tests-only-secret-0123456789abcdef"
# Short leases, so a killed worker's partitions move within seconds.
LEASE_TTL_MS = 3000
PARTITIONS = 4
# Chromium as root, offline: no sandbox (root), nothing phoning home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def run_async(function):
    """Runs an async function to completion on a thread of its own (the
    sync Playwright API keeps an event loop running on this one)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, function()).result()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Response:
    def __init__(self, status: int, headers, body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)


class System:
    """An API and two workers on their own database and prefix."""

    def __init__(self, name: str):
        self.name = name
        suffix = uuid.uuid4().hex[:10]
        self.prefix = f"br{suffix}"
        self.database = f"checkline_browser_{suffix}"
        base = os.environ["CHECKLINE_DATABASE_URL"].rsplit("/", 1)[0]
        self.admin_database_url = f"{base}/postgres"
        self.database_url = f"{base}/{self.database}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.processes: dict[str, subprocess.Popen] = {}
        self.env = {
            **os.environ,
            "CHECKLINE_DATABASE_URL": self.database_url,
            "CHECKLINE_PREFIX": self.prefix,
            "CHECKLINE_JWT_SECRET": SECRET,
            "CHECKLINE_HTTP_ADDR": f"127.0.0.1:{self.port}",
            "CHECKLINE_PARTITIONS": str(PARTITIONS),
            # The test server's storage is shared by every suite's streams.
            "CHECKLINE_STREAM_MAX_BYTES": str(64 * 1024 * 1024),
            "CHECKLINE_DEAD_LETTER_MAX_BYTES": str(8 * 1024 * 1024),
            "CHECKLINE_LEASE_TTL_MS": str(LEASE_TTL_MS),
            "CHECKLINE_REBALANCE_INTERVAL_MS": "500",
            "CHECKLINE_LOG": os.environ.get("CHECKLINE_LOG", "warn"),
        }
        LOGS.mkdir(parents=True, exist_ok=True)

    # -------------------------------------------------------- processes --

    def start(self) -> "System":
        self.psql(f'CREATE DATABASE "{self.database}"')
        self.spawn("api", "checkline-api")
        self.wait_ready()
        for i in (1, 2):
            self.start_worker(f"worker-{i}")
        self.wait_owned()
        return self

    def spawn(self, name: str, binary: str, **env) -> subprocess.Popen:
        log = open(LOGS / f"{self.name}-{name}.log", "ab")
        process = subprocess.Popen(
            [str(BIN / binary)],
            env={**self.env, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[name] = process
        return process

    def start_worker(self, name: str) -> subprocess.Popen:
        return self.spawn(name, "checkline-worker", CHECKLINE_WORKER_ID=name)

    def kill(self, name: str, sig=signal.SIGKILL) -> None:
        process = self.processes.pop(name)
        process.send_signal(sig)
        process.wait(timeout=30)

    def stop(self) -> None:
        for name in list(self.processes):
            process = self.processes.pop(name)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.psql(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        self.delete_streams()

    def delete_streams(self) -> None:
        """Frees the test server's storage: the streams and the lease bucket."""
        import nats

        upper = self.prefix.upper()

        async def delete():
            client = await nats.connect(os.environ["CHECKLINE_NATS_URL"])
            try:
                js = client.jetstream()
                for stream in (f"{upper}_ORDERS", f"{upper}_DEADLETTER", f"KV_{upper}_LEASES"):
                    try:
                        await js.delete_stream(stream)
                    except nats.js.errors.NotFoundError:
                        pass
            finally:
                await client.close()

        run_async(delete)

    def psql(self, sql: str, database: str | None = None) -> str:
        result = subprocess.run(
            ["psql", "-Atq", "-v", "ON_ERROR_STOP=1", database or self.admin_database_url, "-c", sql],
            check=True,
            capture_output=True,
            text=True,
        )
        return result.stdout.strip()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}; see {LOGS}")
            try:
                if self.request("GET", "/readyz").status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the API was not ready within {timeout} s; see {LOGS}")

    def owners(self) -> dict[int, str | None]:
        stats = self.request("GET", "/v1/admin/stats", token=self.admin).json()
        return {p["partition"]: p["owner"] for p in stats["partitions"]}

    def wait_owned(self, timeout: float = 60) -> dict[int, str | None]:
        """Until every partition has an owner and every worker owns one."""
        deadline = time.monotonic() + timeout
        workers = {n for n in self.processes if n.startswith("worker-")}
        while time.monotonic() < deadline:
            owners = self.owners()
            if len(owners) == PARTITIONS and all(owners.values()) and workers <= set(owners.values()):
                return owners
            time.sleep(0.3)
        raise RuntimeError(f"partitions not shared by {workers} within {timeout} s: {self.owners()}")

    # ------------------------------------------------------------ calls --

    def token(self, sub: str, *roles: str) -> str:
        args = [str(BIN / "checkline-token"), "--sub", sub, "--ttl-secs", "3600"]
        for role in roles:
            args += ["--role", role]
        return subprocess.run(args, env=self.env, check=True, capture_output=True, text=True).stdout.strip()

    @property
    def admin(self) -> str:
        if not hasattr(self, "_admin"):
            self._admin = self.token("admin", "admin")
        return self._admin

    def request(self, method: str, path: str, token: str | None = None, body=None, headers=None) -> Response:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if body is not None:
            request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return Response(response.status, response.headers, response.read())
        except urllib.error.HTTPError as err:
            return Response(err.code, err.headers, err.read())

    def create_product(self, name: str, stock: int, price_cents: int = 1990, max_per_customer=None) -> dict:
        body = {"sku": f"SKU-{uuid.uuid4().hex[:10]}", "name": name, "price_cents": price_cents, "stock": stock}
        if max_per_customer is not None:
            body["max_per_customer"] = max_per_customer
        response = self.request("POST", "/v1/products", token=self.admin, body=body)
        assert response.status == 201, response.body
        return response.json()

    def product(self, product_id: str) -> dict:
        return self.request("GET", f"/v1/products/{product_id}").json()

    def orders_of(self, token: str) -> list[dict]:
        response = self.request("GET", "/v1/orders?limit=100", token=token)
        assert response.status == 200, response.body
        return response.json()["items"]


@pytest.fixture(scope="module")
def system(request):
    name = request.module.__name__.rsplit(".", 1)[-1]
    system = System(name)
    try:
        yield system.start()
    finally:
        system.stop()


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM} (scripts/browser-test.sh installs Debian's chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


class Watched:
    """A page with its console errors, uncaught exceptions and dialogs recorded."""

    def __init__(self, context):
        self.context = context
        self.page = context.new_page()
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

        def on_dialog(dialog):
            self.dialogs.append(dialog.message)
            dialog.dismiss()

        self.page.on("dialog", on_dialog)


@pytest.fixture
def open_page(browser):
    """Opens pages in fresh browser contexts (own session storage each)."""
    contexts = []

    def open_(url: str, phone: bool = False, bypass_csp: bool = False) -> Watched:
        viewport = {"width": 390, "height": 844} if phone else {"width": 1280, "height": 900}
        context = browser.new_context(viewport=viewport, bypass_csp=bypass_csp)
        contexts.append(context)
        watched = Watched(context)
        watched.page.set_default_timeout(15_000)
        watched.page.goto(url)
        return watched

    yield open_
    for context in contexts:
        context.close()
