"""Starts and stops the two AMQP endpoints of a running local cloud (called from cloud/server.py).

- The hub's own AMQP (`AmqpService`: `$cbs`, C2D, feedback) on a thread of the cloud's process: it calls the
  hub, and carries little traffic.
- The Event Hubs-compatible endpoint (`EventHubsService`) in a process of its own, started at the first
  connection (eventhubs_process.py): it reads telemetry from the cloud's SQLite database, so serving events
  costs the cloud's MQTT path nothing, GIL included. Azure serves it from a host of its own too
  (`sb://<namespace>.servicebus.windows.net/`). This process binds its sockets (a taken port fails at start,
  and connection.json is right the moment it is written) and hands them to the child.

Azure's SDKs dial fixed ports: 5671 (amqps) and, with `UseDevelopmentEmulator=true` in an Event Hubs
connection string, 5672 (plain AMQP, as Microsoft's Event Hubs emulator). So each endpoint listens on those
ports of a loopback address of its own (127.x.y.z, chosen once and kept in the store), which lets several
local clouds run side by side and keeps the connection strings valid across restarts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import random
import socket
import ssl
import subprocess
import sys
import threading
import time
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client_app.cloud.amqp.auth import SERVICE_RIGHT, PolicySource, TokenChecker
from client_app.cloud.amqp.bridge import AmqpThread
from client_app.cloud.amqp.endpoint import AmqpEndpoint, Role
from client_app.cloud.amqp.eventhub import TelemetryReader
from client_app.cloud.sas import AccessPolicy

log = logging.getLogger("client_app.cloud.amqp")

AMQPS_PORT = 5671
AMQP_PORT = 5672
WINDOWS = sys.platform == "win32"


@dataclass(frozen=True)
class AmqpTls:
    chain_pem: Path
    key_pem: Path
    passphrase: bytes

    def context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.chain_pem, self.key_pem, self.passphrase)
        return context


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def pick_loopback_host(preferred: str | None, ports: tuple[int, ...] = (AMQPS_PORT, AMQP_PORT),
                       taken: Iterable[str | None] = ()) -> str | None:  # fmt: skip
    """`preferred` if its ports are free, else a random 127.x.y.z with free ports (Linux routes all of
    127/8 to loopback), else 127.0.0.1 if its ports are free (macOS without aliases); None if none is.
    Never one of `taken` (chosen already, not bound yet)."""
    avoid = set(taken)

    def usable(host: str | None) -> bool:
        return bool(host) and host not in avoid and all(port_free(host, p) for p in ports)  # type: ignore[arg-type]

    if usable(preferred):
        return preferred
    for _ in range(50):
        host = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(2, 254)}"
        if usable(host):
            return host
    return "127.0.0.1" if usable("127.0.0.1") else None


def bind_listeners(host: str, plain: bool = True) -> list[tuple[socket.socket, bool]]:
    """Listening sockets on `host`: 5671 (TLS: True) and, with `plain`, 5672; OSError if a port is taken."""
    listeners: list[tuple[socket.socket, bool]] = []
    try:
        for port, tls in ((AMQPS_PORT, True), (AMQP_PORT, False))[: 2 if plain else 1]:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            listeners.append((sock, tls))
            if not WINDOWS:  # there it would let another socket take the port too
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise OSError(exc.errno, f"AMQP: cannot listen on {host}:{port} ({exc.strerror})") from exc
            sock.listen(128)
            sock.setblocking(False)
    except OSError:
        for sock, _ in listeners:
            sock.close()
        raise
    return listeners


class AmqpService:
    """The hub's own AMQP (C2D, feedback) on a thread of the cloud's process."""

    def __init__(self, *, hub: Any, db_path: Path, policies: PolicySource, hosts: set[str], hub_name: str,
                 entity: str, partitions: int, created: str) -> None:  # fmt: skip
        self.endpoint = AmqpEndpoint(
            role=Role.HUB,
            hub=hub,
            checker=TokenChecker(policies, hosts),
            reader=TelemetryReader(db_path, partitions),
            entity=entity,
            hub_name=hub_name,
            created=created,
        )
        self._thread: AmqpThread | None = None

    def start(self, loop: asyncio.AbstractEventLoop, host: str, tls: AmqpTls, plain: bool = True) -> None:
        listeners = bind_listeners(host, plain)
        thread = self._thread = AmqpThread(self.endpoint, loop)
        self.endpoint.thread = thread
        context = tls.context()
        thread.start([(sock, context if secure else None) for sock, secure in listeners])
        log.info("AMQP endpoint on %s:%d (TLS) %s", host, AMQPS_PORT, f"and :{AMQP_PORT}" if plain else "")

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.call(self.endpoint.reader.close)
            self._thread.stop()
            self._thread = None


# ---- the Event Hubs-compatible endpoint's process --------------------------------------------------------
EVENTHUBS_MODULE = "client_app.cloud.amqp.eventhubs_process"
STOP_TIMEOUT = 5.0  # seconds the child gets to close its connections once its stdin ends
# A child that dies this soon after its start waits this long before the next: the connection that started it
# still waits in the backlog, and would start the next one at once, and so on (a damaged TLS file, say).
RESTART_DELAY = 1.0


@dataclass(frozen=True)
class EventHubsConfig:
    """What the child needs, as one JSON line on its stdin (never its command line: the key passphrase and
    the policies' keys are in it). `listeners`: [{"tls": bool, "fd": int}] (POSIX, inherited descriptors)
    or [{"tls": bool, "share": base64 of socket.share()}] (Windows)."""

    db_path: str
    host: str
    entity: str
    hub_name: str
    created: str
    partitions: int
    chain_pem: str
    key_pem: str
    passphrase: str
    policies: list[dict[str, Any]]  # the policies with ServiceConnect, as load_policies keeps them
    log_level: int
    listeners: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def to_line(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode() + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> EventHubsConfig:
        """ValueError naming what is wrong: not JSON, a missing or unknown field, a wrong type."""
        try:
            raw = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"not a JSON line ({exc})") from exc
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        hints = typing.get_type_hints(cls)
        required = {f.name for f in dataclasses.fields(cls) if f.default_factory is dataclasses.MISSING}
        if missing := sorted(required - raw.keys()):
            raise ValueError(f"missing {', '.join(missing)}")
        if unknown := sorted(raw.keys() - hints.keys()):
            raise ValueError(f"unknown {', '.join(unknown)}")
        for name, value in raw.items():
            expected = typing.get_origin(hints[name]) or hints[name]
            if not isinstance(value, expected) or (isinstance(value, bool) and expected is int):
                raise ValueError(f"{name} is not {expected.__name__}")
        return cls(**raw)

    def access_policies(self) -> dict[str, AccessPolicy]:
        return {
            p["name"]: AccessPolicy(p["name"], p["primaryKey"], p["secondaryKey"], frozenset(p["rights"]))
            for p in self.policies
        }


def policies_for_wire(policies: dict[str, AccessPolicy]) -> list[dict[str, Any]]:
    """The policies an Event Hubs client may sign with (ServiceConnect), for EventHubsConfig."""
    return [
        {
            "name": p.name,
            "primaryKey": p.primary_key,
            "secondaryKey": p.secondary_key,
            "rights": sorted(p.rights),
        }
        for p in policies.values()
        if SERVICE_RIGHT in p.rights
    ]


class EventHubsService:
    """The Event Hubs-compatible endpoint: its listening sockets here, its work in a child process that the
    first incoming connection starts (the cloud's loop watches the sockets without accepting; the pending
    connections wait in the backlog for the child). A cloud nobody reads telemetry from has no extra process.
    The child exits when its stdin ends (this side stopped, or died); if it exits by itself, the next
    connection starts a new one."""

    def __init__(self, config: EventHubsConfig) -> None:
        self.config = config
        self._listeners: list[tuple[socket.socket, bool]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._watching = False
        self._stopping = False
        self._started = 0.0  # time.monotonic() of the child's start

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs (`python -m client_app.cloud.amqp.eventhubs_process`)."""
        return self._process.pid if self._process is not None else None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._listeners = bind_listeners(self.config.host)
        self._loop = loop
        self._watch()
        log.info("Event Hubs-compatible endpoint on %s:%d (TLS) and :%d; its process starts at the first"
                 " connection", self.config.host, AMQPS_PORT, AMQP_PORT)  # fmt: skip

    def _watch(self) -> None:
        assert self._loop is not None
        if self._stopping:
            return
        try:
            for sock, _ in self._listeners:
                self._loop.add_reader(sock.fileno(), self._spawn)
            self._watching = True
        except NotImplementedError:  # Windows' proactor loop watches no sockets: start the child now
            self._spawn()

    def _unwatch(self) -> None:
        if self._watching and self._loop is not None:
            for sock, _ in self._listeners:
                self._loop.remove_reader(sock.fileno())
        self._watching = False

    def _spawn(self) -> None:
        self._unwatch()
        if self._stopping or self._process is not None:
            return
        try:
            process = self._popen()
        except OSError as exc:  # cannot start a process (out of memory, fds): the next connection tries again
            log.error("cannot start the Event Hubs-compatible endpoint's process: %s", exc)
            assert self._loop is not None
            self._loop.call_later(RESTART_DELAY, self._watch)
            return
        self._process, self._started = process, time.monotonic()
        log.info("Event Hubs-compatible endpoint: process %d started", process.pid)
        threading.Thread(
            target=self._wait, args=(process,), name="eventhubs-process-wait", daemon=True
        ).start()

    def _popen(self) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", EVENTHUBS_MODULE]
        if WINDOWS:  # no descriptor inheritance for sockets: they go as socket.share() bytes in the config
            process = subprocess.Popen(command, stdin=subprocess.PIPE)
            listeners = [{"tls": tls, "share": base64.b64encode(sock.share(process.pid)).decode()}  # type: ignore[attr-defined]
                         for sock, tls in self._listeners]  # fmt: skip
        else:  # a process group of its own: Ctrl+C reaches the cloud, which stops the child in order
            fds = [sock.fileno() for sock, _ in self._listeners]
            process = subprocess.Popen(command, stdin=subprocess.PIPE, pass_fds=fds, process_group=0)
            listeners = [{"tls": tls, "fd": sock.fileno()} for sock, tls in self._listeners]
        assert process.stdin is not None
        try:
            process.stdin.write(dataclasses.replace(self.config, listeners=listeners).to_line())
            process.stdin.flush()  # stdin stays open: its end tells the child to stop
        except OSError:  # it died at once; _wait reports its exit code
            pass
        return process

    def _wait(self, process: subprocess.Popen[bytes]) -> None:
        code = process.wait()
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the cloud's loop is closed: it stopped
            self._loop.call_soon_threadsafe(self._exited, process, code)

    def _exited(self, process: subprocess.Popen[bytes], code: int) -> None:
        if self._stopping or process is not self._process:
            return
        log.warning("the Event Hubs-compatible endpoint's process %d exited (exit code %s); the next"
                    " connection starts a new one", process.pid, code)  # fmt: skip
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        self._process = None
        assert self._loop is not None
        quick = time.monotonic() - self._started < RESTART_DELAY
        self._loop.call_later(RESTART_DELAY if quick else 0, self._watch)

    def stop(self) -> None:
        """End the child (its stdin ends; killed if it lingers), then close the sockets."""
        self._stopping = True
        self._unwatch()
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(OSError):
                if process.stdin is not None:
                    process.stdin.close()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.warning(
                    "the Event Hubs-compatible endpoint's process %d did not stop: killed", process.pid
                )
                process.kill()
                process.wait(STOP_TIMEOUT)
        for sock, _ in self._listeners:
            sock.close()
        self._listeners = []
