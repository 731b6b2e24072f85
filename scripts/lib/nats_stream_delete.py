#!/usr/bin/env python3
"""Deletes a JetStream stream, as an operator (or a lost NATS store) would.

    python3 scripts/lib/nats_stream_delete.py [--url nats://127.0.0.1:4222] STREAM

Speaks the NATS text protocol with nothing but the standard library, so that
the scripts need no nats CLI: INFO, CONNECT, PING/PONG, SUB to an inbox, PUB
to $JS.API.STREAM.DELETE.<STREAM> with that inbox as the reply subject, then
the MSG (or HMSG) reply. Exits 0 only when the server answers
{"success": true}; any other answer, a protocol error or a timeout is
printed and exits 1.
"""

import argparse
import json
import os
import re
import socket
import sys
import time
from urllib.parse import urlsplit

# Stream names may not hold subject tokens' separators or wildcards.
STREAM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,255}$")


class Failure(Exception):
    pass


class Conn:
    def __init__(self, host, port, timeout):
        self.deadline = time.monotonic() + timeout
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as err:
            raise Failure(f"cannot connect to {host}:{port}: {err}") from err
        self.buf = b""

    def _recv(self):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Failure("timed out waiting for the server")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout as err:
            raise Failure("timed out waiting for the server") from err
        except OSError as err:
            raise Failure(f"connection error: {err}") from err
        if not chunk:
            raise Failure("the server closed the connection")
        self.buf += chunk

    def line(self):
        while b"\r\n" not in self.buf:
            self._recv()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def exactly(self, n):
        # A payload of n bytes and its trailing CRLF.
        while len(self.buf) < n + 2:
            self._recv()
        data, self.buf = self.buf[:n], self.buf[n + 2 :]
        return data

    def send(self, data):
        try:
            self.sock.sendall(data.encode() if isinstance(data, str) else data)
        except OSError as err:
            raise Failure(f"connection error: {err}") from err


def delete_stream(url, stream, timeout):
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 4222
    conn = Conn(host, port, timeout)

    first = conn.line()
    if not first.startswith("INFO "):
        raise Failure(f"expected INFO from the server, got: {first!r}")
    info = json.loads(first[5:])
    if info.get("auth_required"):
        raise Failure("the server requires authentication, which this script does not support")

    connect = {
        "verbose": False,
        "pedantic": False,
        "lang": "python-stdlib",
        "version": "1",
        "protocol": 1,
        "headers": True,
        # A request nobody answers (JetStream off) comes back as a 503 at once.
        "no_responders": True,
        "echo": False,
    }
    conn.send(f"CONNECT {json.dumps(connect)}\r\nPING\r\n")
    while True:
        line = conn.line()
        if line == "PONG":
            break
        if line.startswith("-ERR"):
            raise Failure(f"the server refused the connection: {line}")
        if line == "PING":
            conn.send("PONG\r\n")
        # Anything else (+OK, an updated INFO) carries nothing for us.

    inbox = f"_INBOX.{os.urandom(8).hex()}"
    subject = f"$JS.API.STREAM.DELETE.{stream}"
    conn.send(f"SUB {inbox} 1\r\nPUB {subject} {inbox} 0\r\n\r\nPING\r\n")

    while True:
        line = conn.line()
        # The server may send INFO again at any time (after CONNECT, too).
        if line in ("PONG", "+OK") or line.startswith("INFO "):
            continue
        if line == "PING":
            conn.send("PONG\r\n")
            continue
        if line.startswith("-ERR"):
            raise Failure(f"the server answered {line}")
        words = line.split()
        if words and words[0] == "MSG" and len(words) in (4, 5):
            payload = conn.exactly(int(words[-1]))
            break
        if words and words[0] == "HMSG" and len(words) in (5, 6):
            header_len, total = int(words[-2]), int(words[-1])
            data = conn.exactly(total)
            head = data[:header_len].decode("utf-8", "replace")
            status = head.split("\r\n", 1)[0].split()
            if len(status) >= 2 and status[1] != "200":
                raise Failure(
                    f"{subject}: status {' '.join(status[1:])} (no JetStream on this server?)"
                )
            payload = data[header_len:]
            break
        raise Failure(f"unexpected line from the server: {line!r}")

    try:
        reply = json.loads(payload)
    except ValueError as err:
        raise Failure(f"{subject}: reply is not JSON: {payload[:200]!r}") from err
    if reply.get("success") is not True:
        raise Failure(f"{subject}: {json.dumps(reply)}")
    return reply


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stream")
    parser.add_argument(
        "--url",
        default=os.environ.get("CHECKLINE_NATS_URL", "nats://127.0.0.1:4222"),
        help="NATS server (default: $CHECKLINE_NATS_URL or nats://127.0.0.1:4222)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    args = parser.parse_args()
    if not STREAM_NAME.match(args.stream):
        print(f"error: {args.stream!r} is not a stream name", file=sys.stderr)
        return 2
    try:
        delete_stream(args.url, args.stream, args.timeout)
    except Failure as err:
        print(f"error: deleting stream {args.stream} at {args.url}: {err}", file=sys.stderr)
        return 1
    print(f"deleted stream {args.stream}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
