"""Soak of the local cloud: N devices for a while with telemetry, C2D, twin patches and reconnections.

The cloud runs as its own process (as in bench/cloud_load.py, whose MQTT client and phases this reuses). After
registration every device connects (persistent session; C2D and desired-patch subscriptions) and for
`--minutes` the generator sends telemetry, reported-property patches (MQTT), C2D messages (AMQP) and desired
patches (IoT Hub REST) through the operator client at fixed rates while `--reconnect-percent` of the devices
drop and reconnect each minute, half of them abruptly (no DISCONNECT). The server's RSS and open file
descriptors are sampled every few seconds.

Targets (issue 14): RSS after warm-up grows by at most 10 %; open fds end where they were after warm-up (and,
once every device left, where they were before any connected); nothing is lost: every PUBACKed telemetry
message is stored, every C2D message the API accepted reaches its device, every answered twin patch is in the
twin. Exit status 0 only if all hold.

    uv run python bench/soak.py [--devices 1000] [--minutes 10] [--warmup-minutes 2]    # the issue's run
    uv run python bench/soak.py --devices 50 --minutes 1 --warmup-minutes 0.25          # proves it works
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import contextlib
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/cloud_load.py: reused, not copied

from cloud_load import (
    OP_TIMEOUT,
    CloudProcess,
    Device,
    MqttClient,
    Results,
    bounded,
    cloud_process,
    enrolled_devices,
    keep_alive,
    listener,
    register_all,
)

from client_app.cloud.amqp.operator import OperatorError
from client_app.cloud.mqtt import packets as p
from client_app.cloud.server import raise_open_file_limit
from client_app.cloud.service.client import ServiceError
from tests.fixtures.cloud import CloudApi, api_client, local_only_api

MIB = 1024 * 1024


class SoakClient(MqttClient):
    """MqttClient whose PUBLISH handler is in place before CONNECT: C2D queued while a device was away
    arrives right after the CONNACK and must be counted."""

    sink: Callable[[p.Publish, float], None] | None = None

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.on_publish = SoakClient.sink


@dataclass
class Ledger:
    """What was sent and acknowledged, to prove at the end that nothing was lost."""

    telemetry_acked: set[str] = field(default_factory=set)
    c2d_accepted: set[str] = field(default_factory=set)
    c2d_received: set[str] = field(default_factory=set)
    reported: dict[str, int] = field(default_factory=dict)  # device → last counter answered 204
    desired: dict[str, int] = field(default_factory=dict)  # device → last counter the API accepted
    desired_received: int = 0
    reconnects: int = 0
    failures: collections.Counter[str] = field(default_factory=collections.Counter)

    def failed(self, what: str, exc: BaseException | str) -> None:
        text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        self.failures[f"{what}: {text}"[:120]] += 1

    twin_answers: dict[str, asyncio.Future[str]] = field(default_factory=dict)  # $rid → answer topic

    def on_publish(self, message: p.Publish, _: float) -> None:
        topic = message.topic
        if "/messages/devicebound/" in topic:
            self.c2d_received.add(message.payload.decode())
        elif topic.startswith("$iothub/twin/PATCH/properties/desired/"):
            self.desired_received += 1
        elif topic.startswith("$iothub/twin/res/"):
            rid = topic.partition("$rid=")[2].partition("&")[0]
            answer = self.twin_answers.pop(rid, None)
            if answer is not None and not answer.done():
                answer.set_result(topic)


@dataclass
class Sample:
    at: float
    rss: int
    fds: int
    cpu: float


class Soak:
    def __init__(self, args: argparse.Namespace, cloud: CloudProcess, devices: list[Device]) -> None:
        self.args = args
        self.cloud = cloud
        self.devices = devices
        self.hub = ""
        self.ledger = Ledger()
        self.samples: list[Sample] = []
        self.away: set[str] = set()  # devices between their drop and their new CONNACK
        self.busy: dict[str, int] = collections.defaultdict(int)  # requests in flight per device
        self.rng = random.Random(14)
        self.counter = 0
        self.operator: CloudApi | None = None  # the operator client: C2D over AMQP, twins over REST
        self.calls = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="operator")  # one AMQP link
        self.telemetry_missing: set[str] = set()
        self.twin_mismatches = 0
        SoakClient.sink = self.ledger.on_publish

    def sample(self) -> Sample:
        """RSS, CPU and open fds of the server; fds without the operator's connections (service API, AMQP,
        local-only API: the generator opens and closes those as it likes; they say nothing about the device
        side)."""
        process = self.cloud.process
        times = process.cpu_times()
        info = self.cloud.info
        service_port = urlsplit(f"https://{info.service_host}").port or 443
        ports = {urlsplit(info.api_url).port, service_port, info.amqp_port}
        api = sum(1 for c in process.net_connections("tcp") if c.laddr and c.laddr.port in ports and c.raddr)
        sample = Sample(time.monotonic(), process.memory_info().rss, process.num_fds() - api,
                        times.user + times.system)  # fmt: skip
        self.samples.append(sample)
        return sample

    async def sampler(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.args.sample_seconds)

    async def connect(self, device: Device) -> None:
        device_id = device.registration_id
        username = f"{self.hub}/{device_id}/?api-version=2019-10-01"
        client = await SoakClient.connect(self.hub, listener(self.cloud.info)[1], device.context, device_id,
                                          username)  # fmt: skip
        try:
            if device.client is None:  # first time: the session keeps the subscriptions from then on
                await client.subscribe(f"devices/{device_id}/messages/devicebound/#")
                await client.subscribe("$iothub/twin/PATCH/properties/desired/#")
        except BaseException:
            client.abort()
            raise
        device.client = client

    def online(self) -> list[Device]:
        return [d for d in self.devices if d.client is not None and d.registration_id not in self.away]

    def next_id(self) -> int:
        self.counter += 1
        return self.counter

    # ---- traffic -----------------------------------------------------------------------------------------

    async def at_rate(self, rate: float, send: Callable[[], object], stop: float) -> None:
        """Open loop: start `send()` every 1/rate s until `stop`; the tasks are awaited at the end."""
        tasks: list[asyncio.Task[None]] = []
        started, index = time.monotonic(), 0
        while (now := time.monotonic()) < stop:
            await asyncio.sleep(max(0.0, started + index / rate - now))
            tasks.append(asyncio.ensure_future(send()))  # type: ignore[arg-type]
            index += 1
        await asyncio.gather(*tasks)

    async def guarded(self, device: Device, what: str, request: Callable[[MqttClient], object]) -> None:
        """One MQTT request from a connected device; a device being reconnected is left alone."""
        device_id = device.registration_id
        if device.client is None or device_id in self.away:
            return
        self.busy[device_id] += 1
        try:
            await asyncio.wait_for(request(device.client), OP_TIMEOUT)  # type: ignore[arg-type]
        except (OSError, TimeoutError) as exc:
            self.ledger.failed(what, exc)
        finally:
            self.busy[device_id] -= 1

    async def telemetry(self) -> None:
        device = self.rng.choice(self.online() or self.devices)
        body = f"soak-{self.next_id()}"

        async def send(client: MqttClient) -> None:
            await client.publish(f"devices/{device.registration_id}/messages/events/", body.encode())
            self.ledger.telemetry_acked.add(body)

        await self.guarded(device, "telemetry", send)

    async def reported(self) -> None:
        device = self.rng.choice(self.online() or self.devices)
        value, rid = self.next_id(), f"r{self.counter}"

        async def send(client: MqttClient) -> None:
            answered = self.ledger.twin_answers[rid] = asyncio.get_running_loop().create_future()
            try:
                body = json.dumps({"soak": {"counter": value}}).encode()
                await client.publish(f"$iothub/twin/PATCH/properties/reported/?$rid={rid}", body)
                topic = await answered
            finally:
                self.ledger.twin_answers.pop(rid, None)
            if topic.startswith("$iothub/twin/res/204/"):
                self.ledger.reported[device.registration_id] = value
            else:
                self.ledger.failed("reported patch", topic)

        await self.guarded(device, "reported patch", send)

    async def operate(self, call: Callable[[CloudApi], Any]) -> Any:
        """An operator-client call on its one thread (the AMQP sender is not thread-safe)."""
        operator = self.operator
        assert operator is not None
        return await asyncio.get_running_loop().run_in_executor(self.calls, call, operator)

    async def c2d(self) -> None:
        device = self.rng.choice(self.devices)  # online or not: the queue holds it
        body = f"c2d-{self.next_id()}"
        for attempt in range(3):  # again after a broken connection (the same body twice counts once)
            try:
                await self.operate(lambda o: o.send_c2d(device.registration_id, body))
            except OperatorError as exc:
                if "amqp:resource-limit-exceeded" in str(exc):  # 403004: its queue is full (it was away)
                    return
                if "refused" in str(exc) or attempt == 2:
                    self.ledger.failed("C2D send", exc)
                    return
                continue
            self.ledger.c2d_accepted.add(body)
            return

    async def desired(self) -> None:
        device = self.rng.choice(self.devices)
        value = self.next_id()
        patch = {"properties": {"desired": {"soak": {"counter": value}}}}
        try:
            await self.operate(lambda o: o.update_twin(device.registration_id, patch))
        except ServiceError as exc:
            self.ledger.failed("desired PATCH", exc)
            return
        self.ledger.desired[device.registration_id] = value

    async def reconnections(self, stop: float) -> None:
        """Each minute, `--reconnect-percent` of the devices drop (half without DISCONNECT) and come back."""
        per_minute = max(1, round(len(self.devices) * self.args.reconnect_percent / 100))
        interval = 60 / per_minute
        abrupt = False
        while time.monotonic() + interval < stop:
            await asyncio.sleep(interval)
            device = self.rng.choice(self.online())
            device_id = device.registration_id
            self.away.add(device_id)
            try:
                while self.busy[device_id]:  # let its requests finish: their outcome is then known
                    await asyncio.sleep(0.01)
                client, abrupt = device.client, not abrupt
                assert client is not None
                if abrupt:
                    client.abort()
                else:
                    await client.disconnect()
                await self.connect(device)
                self.ledger.reconnects += 1
            except (OSError, TimeoutError, ConnectionRefusedError) as exc:
                self.ledger.failed("reconnect", exc)
            finally:
                self.away.discard(device_id)

    # ---- run ---------------------------------------------------------------------------------------------

    async def run(self) -> dict[str, Sample]:
        args, results = self.args, Results(len(self.devices))
        marks: dict[str, Sample] = {"before": self.sample()}
        self.hub = await register_all(self.cloud.info, self.devices, args.concurrency, results)
        count, _ = await bounded(self.devices, args.concurrency, self.connect, results, "hub connect")
        for failure, times in results.failures.items():
            self.ledger.failures[failure] += times
        print(f"{count}/{len(self.devices)} devices connected; soaking for {args.minutes:g} min")
        pinger = asyncio.create_task(keep_alive([d for d in self.devices if d.client]))
        sampler = asyncio.create_task(self.sampler())
        started = time.monotonic()
        stop = started + args.minutes * 60

        async def warmup_mark() -> None:
            await asyncio.sleep(args.warmup_minutes * 60)
            marks["warm"] = self.sample()
            print(f"warm-up over: server RSS {marks['warm'].rss / MIB:.1f} MiB, {marks['warm'].fds} fds")

        await asyncio.gather(
            warmup_mark(),
            self.at_rate(args.telemetry_rate, self.telemetry, stop),
            self.at_rate(args.twin_rate, self.reported, stop),
            self.at_rate(args.c2d_rate, self.c2d, stop),
            self.at_rate(args.twin_rate / 2, self.desired, stop),
            self.reconnections(stop),
        )
        marks["end"] = self.sample()
        await self.settle()
        sampler.cancel()
        pinger.cancel()
        marks["after"] = self.sample()
        await asyncio.gather(
            *(d.client.disconnect() for d in self.devices if d.client), return_exceptions=True
        )
        await asyncio.sleep(2)  # the server tears the connections down
        marks["gone"] = self.sample()
        return marks

    async def settle(self) -> None:
        """Wait for C2D in flight, then read back what the cloud stored (telemetry: the local-only API)."""
        deadline = time.monotonic() + OP_TIMEOUT
        while not self.ledger.c2d_accepted <= self.ledger.c2d_received and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        stored: set[str] = set()
        after = 0
        with local_only_api(self.cloud.info) as api:
            while page := api.get("/telemetry", params={"after": after, "limit": 1000}).json()["value"]:
                stored.update(m.get("body", "") for m in page)
                after = page[-1]["sequenceNumber"]
        self.telemetry_missing = self.ledger.telemetry_acked - stored
        self.twin_mismatches = 0
        for device_id in set(self.ledger.reported) | set(self.ledger.desired):
            twin = (await self.operate(lambda o, d=device_id: o.twin(d)))["properties"]
            for section, expected in (("reported", self.ledger.reported), ("desired", self.ledger.desired)):
                if (
                    device_id in expected
                    and twin[section].get("soak", {}).get("counter") != expected[device_id]
                ):
                    self.twin_mismatches += 1


def report(soak: Soak, marks: dict[str, Sample]) -> bool:
    ledger, args = soak.ledger, soak.args
    warm, end = marks.get("warm", marks["before"]), marks["end"]
    after_warm = [s for s in soak.samples if s.at >= warm.at] or [end]
    peak = max(s.rss for s in after_warm)
    growth = peak / warm.rss - 1
    c2d_lost = ledger.c2d_accepted - ledger.c2d_received
    wall = end.at - marks["before"].at
    cpu = end.cpu - marks["before"].cpu
    rows = [
        ("server RSS after warm-up", f"{warm.rss / MIB:.1f} MiB", "", None),
        ("server RSS peak after warm-up", f"{peak / MIB:.1f} MiB (+{growth:.1%})", "≤ +10 %", growth <= 0.10),
        ("server RSS at the end", f"{end.rss / MIB:.1f} MiB ({end.rss / warm.rss:.2f}× warm)", "", None),
        ("open fds: warm → end", f"{warm.fds} → {end.fds}", "= baseline", end.fds <= warm.fds),
        ("open fds: before → all gone", f"{marks['before'].fds} → {marks['gone'].fds}", "= baseline",
         marks["gone"].fds <= marks["before"].fds),
        ("telemetry PUBACKed / missing", f"{len(ledger.telemetry_acked):,} / {len(soak.telemetry_missing)}",
         "0 missing", not soak.telemetry_missing),
        ("C2D accepted / not received", f"{len(ledger.c2d_accepted):,} / {len(c2d_lost)}", "0 lost",
         not c2d_lost),
        ("twins patched: reported / desired", f"{len(ledger.reported)} / {len(ledger.desired)}", "", None),
        ("twins not as last answered", f"{soak.twin_mismatches}", "0", soak.twin_mismatches == 0),
        ("desired patches delivered", f"{ledger.desired_received:,}", "", None),
        ("reconnections", f"{ledger.reconnects:,}", "", None),
        ("server CPU", f"{cpu:.0f} s in {wall:.0f} s ({cpu / wall:.0%} of one core)", "", None),
    ]  # fmt: skip
    print(
        f"\nSoak: {len(soak.devices):,} devices, {args.minutes:g} min (warm-up {args.warmup_minutes:g} min)"
    )
    print(f"{'figure':<34} {'measured':>40} {'target':>11}")
    for figure, measured, target, met in rows:
        status = "" if met is None else ("OK" if met else "MISSED")
        print(f"{figure:<34} {measured:>40} {target:>11}  {status}")
    for failure, times in ledger.failures.most_common(10):
        print(f"failure ×{times}: {failure}")
    return not ledger.failures and all(met is not False for *_, met in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=10.0, help="soak duration after everyone connected")
    parser.add_argument("--warmup-minutes", type=float, default=2.0, help="RSS/fd baseline taken after this")
    parser.add_argument("--telemetry-rate", type=float, default=200.0, help="telemetry messages/s in total")
    parser.add_argument("--c2d-rate", type=float, default=10.0, help="C2D messages/s in total")
    parser.add_argument("--twin-rate", type=float, default=20.0, help="reported patches/s (desired: half)")
    parser.add_argument("--reconnect-percent", type=float, default=10.0, help="of the devices, per minute")
    parser.add_argument("--concurrency", type=int, default=50, help="registrations/connects at a time")
    parser.add_argument("--sample-seconds", type=float, default=5.0)
    args = parser.parse_args()
    print(f"open-file limit: {raise_open_file_limit()}")
    with tempfile.TemporaryDirectory(prefix="cloud-soak-") as tmp:
        root_dir = Path(tmp)
        with cloud_process(root_dir / "cloud") as cloud, api_client(cloud) as api:  # type: ignore[arg-type]
            devices = enrolled_devices(api, cloud, "soak", args.devices, root_dir / "devices")
            soak = Soak(args, cloud, devices)
            soak.operator = api
            marks = asyncio.run(soak.run())
            soak.calls.shutdown()
    sys.exit(0 if report(soak, marks) else 1)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
