"""Load test of the local cloud: N devices provision, stay connected, send telemetry and receive C2D.

The cloud runs as its own process (`client-app-cloud serve`, direct TLS listener on loopback) so its RSS and
CPU are its own. The load generator is this single asyncio process speaking MQTT 3.1.1 over mutual TLS with
the project's codec (the azure SDK is too heavy for 1,000 clients). Prints registrations/s, telemetry msg/s
stored (counted back through the local-only GET /telemetry), C2D latency p50/p99 (sent over AMQP by the
operator client) and peak server RSS against the issue's targets, next to baselines from the same run (bare
TLS+CONNECT rate, PINGREQ round trips) so that machine speed and server cost can be told apart. Exit status
0 only if every target is met and nothing was lost.

    uv run python bench/cloud_load.py [--devices 1000] [--telemetry-messages 50000] [--c2d-messages 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import json
import math
import os
import random
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.* helpers (reused, not copied)

from client_app.cloud.amqp.operator import OperatorError
from client_app.cloud.info import CONNECTION_FILE, ConnectionInfo
from client_app.cloud.mqtt import packets as p
from client_app.cloud.server import raise_open_file_limit
from client_app.pki import CertificateAuthority
from tests.fixtures.cloud import CloudApi, api_client, enroll_root, free_loopback, issue_device_files

OP_TIMEOUT = 30.0  # per device operation (connect, register, subscribe); the SDK's DPS timeout
KEEPALIVE = 60  # as the SDK; the generator pings idle hub connections like the SDK does
TELEMETRY_TOPIC = "devices/{}/messages/events/%24.ct=application%2Fjson&%24.ce=utf-8"
TELEMETRY_BODY = b'{"temperature": 21.5, "humidity": 40}'


# ---- a minimal MQTT client -------------------------------------------------------------------------------


class MqttClient:
    """QoS 0/1 MQTT 3.1.1 over TLS, just enough for load: no retransmission, no reconnect.

    Writes are never drained: every caller bounds what it has in flight (window, one request at a time).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._decoder = p.PacketReader()
        self._connack: asyncio.Future[p.Connack] = asyncio.get_running_loop().create_future()
        self._acks: dict[int, asyncio.Future[float]] = {}  # packet id → SUBACK/PUBACK receipt time
        self._pings: collections.deque[asyncio.Future[float]] = collections.deque()  # PINGRESPs come in order
        self._next_id = 0
        self.last_sent = time.monotonic()
        # Called with each PUBLISH from the server and the perf_counter() of its receipt.
        self.on_publish: Callable[[p.Publish, float], None] | None = None
        self._task = asyncio.create_task(self._read_loop())

    @classmethod
    async def connect(
        cls, host: str, port: int, context: ssl.SSLContext, client_id: str, username: str
    ) -> MqttClient:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=context, server_hostname=host, ssl_handshake_timeout=OP_TIMEOUT
        )
        client = cls(reader, writer)
        client._send(p.Connect(client_id, username, None, KEEPALIVE, clean_session=False))  # as the SDK
        try:
            connack = await client._connack
        except BaseException:
            client.abort()
            raise
        if connack.return_code:
            client.abort()
            raise ConnectionRefusedError(f"{client_id}: CONNACK {connack.return_code}")
        return client

    def _send(self, packet: p.Packet) -> None:
        self._writer.write(p.encode(packet))
        self.last_sent = time.monotonic()

    def _packet_id(self) -> int:
        self._next_id = self._next_id % 0xFFFF + 1
        return self._next_id

    def _await_ack(self) -> tuple[int, asyncio.Future[float]]:
        packet_id = self._packet_id()
        future = self._acks[packet_id] = asyncio.get_running_loop().create_future()
        return packet_id, future

    async def subscribe(self, topic_filter: str) -> None:
        packet_id, future = self._await_ack()
        self._send(p.Subscribe(packet_id, ((topic_filter, 1),)))
        await future

    def publish(self, topic: str, payload: bytes) -> asyncio.Future[float]:
        """QoS 1 PUBLISH; the future resolves with the PUBACK's receipt time."""
        packet_id, future = self._await_ack()
        self._send(p.Publish(topic, payload, 1, packet_id))
        return future

    async def ping(self) -> float:
        """One PINGREQ round trip, in seconds."""
        future = asyncio.get_running_loop().create_future()
        self._pings.append(future)
        started = time.perf_counter()
        self._send(p.Pingreq())
        return await future - started

    async def _read_loop(self) -> None:
        error: Exception = ConnectionResetError("connection closed by the server")
        try:
            while data := await self._reader.read(64 * 1024):
                now = time.perf_counter()
                for packet in self._decoder.feed(data):
                    self._handle(packet, now)
        except (OSError, ssl.SSLError, p.MalformedPacket) as exc:
            error = exc
        finally:
            waiting = [self._connack, *self._acks.values(), *self._pings]
            for future in waiting:
                if not future.done():
                    future.set_exception(error)

    def _handle(self, packet: p.Packet, now: float) -> None:
        match packet:
            case p.Connack():
                self._connack.set_result(packet)
            case p.Puback(packet_id) | p.Suback(packet_id):
                future = self._acks.pop(packet_id, None)
                if future is not None and not future.done():
                    future.set_result(now)
            case p.Pingresp():
                if self._pings:
                    self._pings.popleft().set_result(now)
            case p.Publish():
                if packet.qos == 1 and packet.packet_id is not None:
                    self._send(p.Puback(packet.packet_id))
                if self.on_publish is not None:
                    self.on_publish(packet, now)

    async def disconnect(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            self._send(p.Disconnect())
        self._writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self._writer.wait_closed()
        self.abort()

    def abort(self) -> None:
        self._writer.transport.abort()
        self._task.cancel()


@dataclass
class Device:
    registration_id: str
    context: ssl.SSLContext
    client: MqttClient | None = None


def client_context(server_ca: str, cert_file: Path, key_file: Path, passphrase: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=server_ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file, passphrase)
    return context


# ---- the cloud as a separate process ---------------------------------------------------------------------


class CloudProcess:
    """`client-app-cloud serve` in its own process group; stopped with SIGTERM (killed if it hangs)."""

    def __init__(self, data_dir: Path, profile: Path | None) -> None:
        self.data_dir = data_dir
        self.log_file = data_dir.parent / "server.log"
        # A free 127.x address for the direct listener (its port is always 8883): copies run side by side.
        command = [sys.executable, *(["-m", "cProfile", "-o", str(profile)] if profile else []),
                   "-m", "client_app.cloud.cli", "serve", "--data", str(data_dir),
                   "--no-proxy", "--mqtt-listen", f"{free_loopback()}:8883"]  # fmt: skip
        with self.log_file.open("wb") as log:
            self.popen = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.process = psutil.Process(self.popen.pid)
        self.info = self._wait_ready()

    def _wait_ready(self, timeout: float = 60) -> ConnectionInfo:
        deadline = time.monotonic() + timeout
        while not (self.data_dir / CONNECTION_FILE).exists():
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the cloud did not start; its log:\n{self.log_tail()}")
            time.sleep(0.05)
        return ConnectionInfo.load(self.data_dir)

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        times = self.process.cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)


@contextlib.contextmanager
def cloud_process(data_dir: Path, profile: Path | None = None) -> Iterator[CloudProcess]:
    """A CloudProcess stopped at the end; on an error its log's tail goes to stderr first."""
    cloud = CloudProcess(data_dir, profile)
    try:
        yield cloud
    except BaseException:
        print(f"server log (tail):\n{cloud.log_tail()}", file=sys.stderr)
        raise
    finally:
        cloud.stop()


class Peaks:
    """Samples the RSS of the server and of this generator every 100 ms; keeps the maxima."""

    def __init__(self, server: psutil.Process) -> None:
        self._server = server
        self._self = psutil.Process()
        self.server_rss = self.generator_rss = 0
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.1)

    def sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.server_rss = max(self.server_rss, self._server.memory_info().rss)
        self.generator_rss = max(self.generator_rss, self._self.memory_info().rss)

    def stop(self) -> None:
        self._task.cancel()
        self.sample()


# ---- phases ------------------------------------------------------------------------------------------------


@dataclass
class Results:
    devices: int
    bare_connects_per_s: float = 0.0
    registrations: int = 0
    registrations_per_s: float = 0.0
    connected: int = 0
    connected_per_server: int = 0
    pings_per_s: float = 0.0
    telemetry_acked: int = 0
    telemetry_stored: int = 0
    telemetry_seconds: float = 0.0  # first PUBLISH → last PUBACK
    telemetry_per_s: float = 0.0  # stored (counted through the API) / telemetry_seconds
    ping_rtt: list[float] = field(default_factory=list)
    c2d_latency: list[float] = field(default_factory=list)
    c2d_api: list[float] = field(default_factory=list)
    c2d_sent: int = 0
    server_idle_rss: int = 0
    server_rss: int = 0
    generator_rss: int = 0
    failures: collections.Counter[str] = field(default_factory=collections.Counter)

    def failed(self, what: str, exc: BaseException) -> None:
        self.failures[f"{what}: {type(exc).__name__}: {exc}"[:120]] += 1


@contextlib.contextmanager
def server_cpu(cloud: CloudProcess) -> Iterator[None]:
    """Print the server's CPU time over the block: what each phase costs it on this machine."""
    cpu, started = cloud.cpu_seconds(), time.perf_counter()
    yield
    used, wall = cloud.cpu_seconds() - cpu, time.perf_counter() - started
    print(f"    server CPU {used:.2f} s in {wall:.2f} s ({used / wall:.0%} of one core)")


async def bounded(
    devices: list[Device],
    concurrency: int,
    work: Callable[[Device], Awaitable[None]],
    results: Results,
    what: str,
) -> tuple[int, float]:
    """Run `work` for every device, at most `concurrency` at a time; returns (successes, seconds)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(device: Device) -> bool:
        async with gate:
            try:
                async with asyncio.timeout(OP_TIMEOUT):
                    await work(device)
            except (OSError, ssl.SSLError, TimeoutError, ValueError) as exc:
                results.failed(what, exc)
                return False
            return True

    started = time.perf_counter()
    count = sum(await asyncio.gather(*(one(d) for d in devices)))
    return count, time.perf_counter() - started


def dps_username(info: ConnectionInfo, registration_id: str) -> str:
    return f"{info.id_scope}/registrations/{registration_id}/api-version=2019-03-31"


def listener(info: ConnectionInfo) -> tuple[str, int]:
    assert info.mqtt_host and info.mqtt_port, "the bench starts the cloud with a direct listener"
    return info.mqtt_host, info.mqtt_port


async def bare_connects(
    info: ConnectionInfo, devices: list[Device], concurrency: int, results: Results
) -> None:
    """Baseline for registrations: TLS handshake + CONNECT/CONNACK + DISCONNECT to the DPS endpoint only."""

    async def connect_only(device: Device) -> None:
        rid = device.registration_id
        client = await MqttClient.connect(*listener(info), device.context, rid, dps_username(info, rid))
        await client.disconnect()

    count, elapsed = await bounded(devices, concurrency, connect_only, results, "bare connect")
    results.bare_connects_per_s = count / elapsed
    print(
        f"baseline: {count} bare TLS+CONNECT cycles in {elapsed:.2f} s ({results.bare_connects_per_s:,.0f}/s)"
    )


async def register_all(
    info: ConnectionInfo, devices: list[Device], concurrency: int, results: Results
) -> str:
    """Phase 1: the DPS flow of device-protocol §3 at zero assignment delay. Returns the assigned hub."""
    assigned: set[str] = set()

    async def register(device: Device) -> None:
        rid = device.registration_id
        client = await MqttClient.connect(*listener(info), device.context, rid, dps_username(info, rid))
        try:
            answer: asyncio.Future[p.Publish] = asyncio.get_running_loop().create_future()
            request = str(uuid.uuid4())

            def on_publish(message: p.Publish, _: float) -> None:
                if f"$rid={request}" in message.topic and not answer.done():
                    answer.set_result(message)

            client.on_publish = on_publish
            await client.subscribe("$dps/registrations/res/#")
            body = json.dumps({"payload": None, "registrationId": rid}, sort_keys=True).encode()
            await client.publish(f"$dps/registrations/PUT/iotdps-register/?$rid={request}", body)
            message = await answer
            result = json.loads(message.payload)
            if message.topic.split("/")[3] != "200" or result.get("status") != "assigned":
                raise ValueError(f"{rid}: DPS answered {message.topic} {result}")
            assigned.add(result["registrationState"]["assignedHub"])
        finally:
            await client.disconnect()

    count, elapsed = await bounded(devices, concurrency, register, results, "register")
    results.registrations, results.registrations_per_s = count, count / elapsed
    print(f"phase 1: {count}/{len(devices)} devices registered in {elapsed:.2f} s ({count / elapsed:,.0f}/s)")
    if len(assigned) != 1:
        raise RuntimeError(f"expected one assigned hub, got {assigned}")
    return assigned.pop()


async def connect_all(
    info: ConnectionInfo, hub: str, devices: list[Device], concurrency: int, results: Results
) -> list[Device]:
    """Phase 2: every device connects to the hub (persistent session) and subscribes to its C2D topic."""
    port = listener(info)[1]

    async def connect(device: Device) -> None:
        device_id = device.registration_id
        username = f"{hub}/{device_id}/?api-version=2019-10-01"
        client = await MqttClient.connect(hub, port, device.context, device_id, username)
        try:
            await client.subscribe(f"devices/{device_id}/messages/devicebound/#")
        except BaseException:
            client.abort()
            raise
        device.client = client

    count, elapsed = await bounded(devices, concurrency, connect, results, "hub connect")
    results.connected = count
    print(f"phase 2: {count}/{len(devices)} devices connected and subscribed in {elapsed:.2f} s")
    if not count:
        raise RuntimeError("no device could connect to the hub")
    return [d for d in devices if d.client is not None]


def client_of(device: Device) -> MqttClient:
    assert device.client is not None, "only connected devices take part"
    return device.client


async def keep_alive(devices: list[Device]) -> None:
    """PINGREQ on hub connections idle for half the keepalive, as the SDK does (runs until cancelled)."""
    while True:
        await asyncio.sleep(5)
        idle_since = time.monotonic() - KEEPALIVE / 2
        for device in devices:
            if client_of(device).last_sent < idle_since:
                ping = asyncio.ensure_future(client_of(device).ping())
                ping.add_done_callback(lambda f: f.cancelled() or f.exception())  # a lost one shows in C2D


async def pipelined(
    devices: list[Device], total: int, window: int, send: Callable[[Device], Awaitable[Any]]
) -> float:
    """`total` requests spread evenly over the devices, up to `window` in flight on each; returns seconds."""

    async def run(device: Device, count: int) -> None:
        in_flight: collections.deque[Awaitable[Any]] = collections.deque()
        for _ in range(count):
            if len(in_flight) >= window:
                await in_flight.popleft()
            in_flight.append(asyncio.ensure_future(send(device)))
        for request in in_flight:
            await request

    share, extra = divmod(total, len(devices))
    started = time.perf_counter()
    async with asyncio.timeout(60 + total / 500):  # far beyond any plausible rate: a stall ends the run
        await asyncio.gather(*(run(d, share + (i < extra)) for i, d in enumerate(devices)))
    return time.perf_counter() - started


async def ping_throughput(devices: list[Device], total: int, window: int, results: Results) -> None:
    """Baseline for telemetry: PINGREQs pipelined exactly like the telemetry (answered by the MQTT layer)."""
    results.pings_per_s = total / await pipelined(devices, total, window, lambda d: client_of(d).ping())
    print(f"baseline: {total:,} pipelined PINGREQ round trips: {results.pings_per_s:,.0f}/s")


async def telemetry(devices: list[Device], total: int, window: int, results: Results) -> None:
    """Phase 3: QoS 1 telemetry as fast as PUBACKs (sent after the SQLite commit) allow."""
    topics = {d.registration_id: TELEMETRY_TOPIC.format(d.registration_id) for d in devices}
    elapsed = await pipelined(
        devices, total, window, lambda d: client_of(d).publish(topics[d.registration_id], TELEMETRY_BODY)
    )
    results.telemetry_acked, results.telemetry_seconds = total, elapsed
    print(f"phase 3: {total:,} telemetry messages PUBACKed in {elapsed:.2f} s")


async def count_stored(api: httpx.AsyncClient, after: int, devices: list[Device], results: Results) -> None:
    """Count the telemetry rows after sequence `after` from our devices with our body, through the API."""
    device_ids, body, count = {d.registration_id for d in devices}, TELEMETRY_BODY.decode(), 0
    while page := (await api.get("/telemetry", params={"after": after, "limit": 1000})).json()["value"]:
        count += sum(m["deviceId"] in device_ids and m.get("body") == body for m in page)
        after = page[-1]["sequenceNumber"]
    results.telemetry_stored = count
    results.telemetry_per_s = count / results.telemetry_seconds
    print(f"         {count:,} found through GET /telemetry → {results.telemetry_per_s:,.0f} msg/s stored")


async def at_rate(
    count: int, rate: float, send: Callable[[int], Awaitable[None]], results: Results, what: str
) -> None:
    """send(0..count-1) on a fixed schedule (open loop: a slow answer never delays the next request)."""

    async def one(index: int) -> None:
        try:
            await asyncio.wait_for(send(index), OP_TIMEOUT)
        except (OSError, TimeoutError, httpx.HTTPError) as exc:
            results.failed(what, exc)

    started = time.perf_counter()
    tasks = []
    for index in range(count):
        await asyncio.sleep(max(0.0, started + index / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(one(index)))
    await asyncio.gather(*tasks)


async def ping_latency(picks: list[Device], rate: float, results: Results) -> None:
    """Baseline for C2D: PINGREQ round trips to the same devices at the same rate."""

    async def ping(index: int) -> None:
        results.ping_rtt.append(await client_of(picks[index]).ping())

    await at_rate(len(picks), rate, ping, results, "ping")
    print(f"baseline: {len(results.ping_rtt)}/{len(picks)} PINGREQ round trips at {rate:g}/s")


WARM_UP = b"warm-up"


async def c2d(
    api: CloudApi, devices: list[Device], picks: list[Device], rate: float, results: Results
) -> None:
    """Phase 4: C2D by the operator client to `picks` (random devices) at `rate`/s, all devices connected.

    Latency = send called → PUBLISH received by the device: the AMQP send as a backend makes it (one kept-open
    connection on one thread: sends queue behind each other), the hub's queue write and read, the MQTT/TLS
    delivery.
    """
    sent_at: dict[int, float] = {}
    received: dict[int, float] = {}
    all_received = asyncio.Event()
    sender = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="c2d")  # proton is not thread-safe
    loop = asyncio.get_running_loop()

    def on_publish(message: p.Publish, now: float) -> None:
        if message.payload == WARM_UP:
            return
        received[int(message.payload)] = now
        if len(received) == len(picks):
            all_received.set()

    for device in devices:
        client_of(device).on_publish = on_publish
    # The sender's connection (TLS, CBS token) is opened once, as a backend's is, not counted in a latency.
    await loop.run_in_executor(sender, api.send_c2d, picks[0].registration_id, WARM_UP)

    async def send(index: int) -> None:
        sent_at[index] = started = time.perf_counter()
        call = functools.partial(
            api.send_c2d, picks[index].registration_id, str(index), message_id=f"load-{index}"
        )
        try:
            await loop.run_in_executor(sender, call)
        except OperatorError as exc:
            results.failures[f"C2D send: {exc}"[:120]] += 1
        results.c2d_api.append(time.perf_counter() - started)

    await at_rate(len(picks), rate, send, results, "C2D send")
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_received.wait(), OP_TIMEOUT)
    sender.shutdown()
    results.c2d_sent = len(picks)
    results.c2d_latency = [received[i] - sent_at[i] for i in received if i in sent_at]
    print(f"phase 4: {len(received)}/{len(picks)} C2D messages received at {rate:g}/s")


# ---- report ------------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def ratio(measured: float, baseline: float) -> str:
    return f"{measured / baseline:.2f}" if baseline and math.isfinite(measured / baseline) else ""


def report(r: Results, args: argparse.Namespace) -> bool:
    """Print the results table; True if every target is met and nothing was lost on the way."""
    mib = 1024 * 1024
    c2d50, c2d99 = percentile(r.c2d_latency, 50), percentile(r.c2d_latency, 99)
    ping50, ping99 = percentile(r.ping_rtt, 50), percentile(r.ping_rtt, 99)
    connected = min(r.connected, r.connected_per_server)
    # (figure, measured, target, met or None without a target, baseline from the same run, ratio)
    rows: list[tuple[str, str, str, bool | None, str, str]] = [
        ("concurrent hub connections", f"{r.connected:,} (server: {r.connected_per_server:,})", "≥ 1,000",
         connected >= 1000, "", ""),
        ("registrations/s (delay 0)", f"{r.registrations_per_s:,.0f}", "≥ 100", r.registrations_per_s >= 100,
         f"TLS+CONNECT only: {r.bare_connects_per_s:,.0f}/s",
         ratio(r.registrations_per_s, r.bare_connects_per_s)),
        ("telemetry msg/s stored", f"{r.telemetry_per_s:,.0f}", "≥ 5,000", r.telemetry_per_s >= 5000,
         f"PINGREQ round trips: {r.pings_per_s:,.0f}/s", ratio(r.telemetry_per_s, r.pings_per_s)),
        ("C2D latency p50", f"{c2d50 * 1000:.1f} ms", "", None, f"PINGREQ RTT p50: {ping50 * 1000:.2f} ms",
         ratio(c2d50, ping50)),
        ("C2D latency p99", f"{c2d99 * 1000:.1f} ms", "≤ 20 ms", c2d99 <= 0.020,
         f"PINGREQ RTT p99: {ping99 * 1000:.2f} ms", ratio(c2d99, ping99)),
        ("server RSS peak", f"{r.server_rss / mib:,.0f} MiB", "", None,
         f"idle after start: {r.server_idle_rss / mib:,.0f} MiB", ratio(r.server_rss, r.server_idle_rss)),
        ("generator RSS peak", f"{r.generator_rss / mib:,.0f} MiB", "", None, "", ""),
    ]  # fmt: skip
    print(
        f"\nResults: {r.devices:,} devices, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs,"
        f" load average {os.getloadavg()[0]:.2f}"
    )
    print(f"{'figure':<28} {'measured':>22} {'target':>9}  {'':<6} {'baseline (same run)':<32} ratio")
    for figure, measured, target, met, baseline, ratio_text in rows:
        status = "" if met is None else ("OK" if met else "MISSED")
        print(f"{figure:<28} {measured:>22} {target:>9}  {status:<6} {baseline:<32} {ratio_text}")
    lost = r.c2d_sent - len(r.c2d_latency)
    api50, api99 = percentile(r.c2d_api, 50) * 1000, percentile(r.c2d_api, 99) * 1000
    print(
        "C2D latency = AMQP send → PUBLISH received by the device; it includes the operator client's send"
        f" (until the hub accepted it: p50 {api50:.1f} ms, p99 {api99:.1f} ms); {args.c2d_rate:g} msg/s to"
        f" random devices, {lost} lost"
    )
    print(
        f"telemetry: {r.telemetry_acked:,} PUBACKed, {r.telemetry_stored:,} counted through GET /telemetry,"
        f" window {args.window} per device"
    )
    for failure, times in r.failures.most_common(10):
        print(f"failure ×{times}: {failure}")
    consistent = (
        not r.failures
        and not lost
        and r.telemetry_stored == r.telemetry_acked
        and r.registrations == r.devices
    )
    return consistent and all(met is not False for _, _, _, met, _, _ in rows)


# ---- main -------------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, cloud: CloudProcess, api: CloudApi, devices: list[Device]) -> Results:
    info = cloud.info
    results = Results(args.devices)
    results.server_idle_rss = cloud.process.memory_info().rss
    peaks = Peaks(cloud.process)
    pinger: asyncio.Task[None] | None = None
    local = {"base_url": info.api_url, "headers": {"Authorization": f"Bearer {info.api_token}"}}
    async with httpx.AsyncClient(**local, timeout=OP_TIMEOUT, trust_env=False) as aapi:  # the local-only API
        try:
            with server_cpu(cloud):
                await bare_connects(info, devices[: max(1, len(devices) // 2)], args.concurrency, results)
            with server_cpu(cloud):
                hub = await register_all(info, devices, args.concurrency, results)
            with server_cpu(cloud):
                online = await connect_all(info, hub, devices, args.concurrency, results)
            pinger = asyncio.create_task(keep_alive(online))
            listed = await asyncio.to_thread(api.devices)
            results.connected_per_server = sum(d["connectionState"] == "Connected" for d in listed)
            with server_cpu(cloud):
                await ping_throughput(online, args.telemetry_messages, args.window, results)
            last_seq = (await aapi.get("/telemetry", params={"tail": 1})).json()["last"]
            with server_cpu(cloud):
                await telemetry(online, args.telemetry_messages, args.window, results)
            await count_stored(aapi, last_seq, online, results)
            rng = random.Random(1)
            picks = [rng.choice(online) for _ in range(args.c2d_messages)]
            with server_cpu(cloud):
                await ping_latency(picks, args.c2d_rate, results)
            with server_cpu(cloud):
                await c2d(api, online, picks, args.c2d_rate, results)
        finally:
            if pinger is not None:
                pinger.cancel()
            peaks.stop()
            results.server_rss, results.generator_rss = peaks.server_rss, peaks.generator_rss
            await asyncio.gather(
                *(d.client.disconnect() for d in devices if d.client), return_exceptions=True
            )
    return results


def enrolled_devices(
    api: CloudApi, cloud: CloudProcess, prefix: str, count: int, directory: Path
) -> list[Device]:
    """`count` device identities, issued by an intermediate under a root enrolled as `{prefix}-group`."""
    root = CertificateAuthority.root(f"{prefix} Root")
    issuing = root.intermediate(f"{prefix} Issuing CA", path_length=0)
    enroll_root(api, root, f"{prefix}-root", f"{prefix}-group")
    devices = []
    for index in range(count):
        files = issue_device_files(issuing, f"{prefix}-{index:05d}", directory)
        context = client_context(cloud.info.server_ca_pem, files.cert_file, files.key_file, files.pass_phrase)
        devices.append(Device(files.registration_id, context))
    return devices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--telemetry-messages", type=int, default=50_000, help="in total, over all devices")
    parser.add_argument("--window", type=int, default=4, help="telemetry messages in flight per device")
    parser.add_argument("--c2d-messages", type=int, default=1000)
    parser.add_argument("--c2d-rate", type=float, default=100, help="C2D messages per second")
    parser.add_argument("--concurrency", type=int, default=50, help="registrations/connects at a time")
    parser.add_argument("--server-profile", type=Path, help="run the server under cProfile, stats to FILE")
    args = parser.parse_args()
    print(f"open-file limit: {raise_open_file_limit()}")
    with tempfile.TemporaryDirectory(prefix="cloud-load-") as tmp:
        root_dir = Path(tmp)
        with cloud_process(root_dir / "cloud", args.server_profile) as cloud, api_client(cloud) as api:  # type: ignore[arg-type]  # api_client only reads .info
            started = time.perf_counter()
            devices = enrolled_devices(api, cloud, "load", args.devices, root_dir / "devices")
            print(
                f"setup: {args.devices} device identities in {time.perf_counter() - started:.1f} s;"
                f" cloud pid {cloud.popen.pid} on {cloud.info.mqtt_host}:{cloud.info.mqtt_port}"
            )
            results = asyncio.run(run(args, cloud, api, devices))
    sys.exit(0 if report(results, args) else 1)


if __name__ == "__main__":
    main()
