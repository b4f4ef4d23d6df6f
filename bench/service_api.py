"""Service API bench: Azure's REST API of the local cloud at N connected devices (issue 9's targets).

The cloud runs as its own process; N devices (the load generator's minimal MQTT client from
bench/cloud_load.py) provision, connect, report properties and answer direct methods. The backend side is
the operator client (client_app/cloud/service/client.py: HTTPS, SAS tokens, Azure's paths) on one kept-alive
connection, as a backend would use it. Targets, each next to a baseline measured in the same run:

- twin GET p99 ≤ 5 ms            baseline: GET /statistics/devices (same TLS, auth and routing, no twin)
- direct-method overhead p99 ≤ 5 ms over the device's own handler time
                                 baseline: GET /statistics/devices, then an MQTT PINGREQ round trip from the
                                 same thread (both protocols and thread hops a call has, no method work)
- a query over N twins ≤ 50 ms   baseline: GET /devices (the same N identities, no query)
Each line also shows the server's CPU time per call (psutil, over the whole series): on a shared machine the
least noisy figure.

    uv run python bench/service_api.py [--devices 1000] [--requests 2000] [--methods 500] [--queries 50]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench.* and tests.* helpers (reused)

from bench.cloud_load import (
    CloudProcess,
    Device,
    MqttClient,
    Results,
    client_context,
    connect_all,
    percentile,
    register_all,
)
from client_app.cloud.mqtt import packets as p
from client_app.cloud.server import raise_open_file_limit
from client_app.cloud.service.client import ServiceClient
from client_app.pki import CertificateAuthority
from tests.fixtures.cloud import api_client, enroll_root, issue_device_files

METHOD_HANDLER_SECONDS = 0.002  # what the device's handler takes (sleeps) before answering


class MethodAnswerer:
    """Answers `$iothub/methods/POST/...` after METHOD_HANDLER_SECONDS; records each handler's own time."""

    def __init__(self) -> None:
        self.handler_times: dict[str, float] = {}  # method payload "id" → seconds the device held the call

    def attach(self, device: Device) -> None:
        client = device.client
        assert client is not None

        def on_publish(message: p.Publish, received: float) -> None:
            if message.topic.startswith("$iothub/methods/POST/"):
                asyncio.get_running_loop().create_task(self._answer(client, message, received))

        client.on_publish = on_publish

    async def _answer(self, client: MqttClient, message: p.Publish, received: float) -> None:
        rid = message.topic.rsplit("$rid=", 1)[-1]
        await asyncio.sleep(METHOD_HANDLER_SECONDS)
        call = json.loads(message.payload)
        self.handler_times[call["id"]] = time.perf_counter() - received
        client.publish(f"$iothub/methods/res/200/?$rid={rid}", json.dumps({"ok": call["id"]}).encode())


async def prepare(
    cloud: CloudProcess, devices: list[Device], concurrency: int, answerer: MethodAnswerer
) -> list[Device]:
    results = Results(len(devices))
    hub = await register_all(cloud.info, devices, concurrency, results)
    online = await connect_all(cloud.info, hub, devices, concurrency, results)
    for index, device in enumerate(online):
        client = device.client
        assert client is not None
        await client.subscribe("$iothub/methods/POST/#")
        reported = {"release": "A" if index % 10 == 0 else "B", "index": index}
        await client.publish(
            f"$iothub/twin/PATCH/properties/reported/?$rid={index}", json.dumps(reported).encode()
        )
        answerer.attach(device)
    print(f"setup: {len(online)} devices connected, methods subscribed, properties reported")
    return online


class Timer:
    """Times calls one by one, and the server's CPU over all of them (what a noisy machine moves least)."""

    def __init__(self, cloud: CloudProcess) -> None:
        self.cloud = cloud
        self.cpu_per_call = math.nan  # server CPU seconds per call in the last `timed`

    def timed(self, count: int, call: Callable[[int], Any]) -> list[float]:
        samples = []
        cpu = self.cloud.cpu_seconds()
        for index in range(count):
            started = time.perf_counter()
            call(index)
            samples.append(time.perf_counter() - started)
        self.cpu_per_call = (self.cloud.cpu_seconds() - cpu) / count
        return samples

    def line(self, name: str, samples: list[float], cpu: bool = True) -> float:
        """Print p50 and p99 of `samples` (seconds) and the server CPU per call; returns p99 in ms."""
        p99 = percentile(samples, 99) * 1000
        server = f"   server CPU {self.cpu_per_call * 1000:6.2f} ms/call" if cpu else ""
        print(f"  {name:<48} p50 {percentile(samples, 50) * 1000:7.2f} ms   p99 {p99:7.2f} ms{server}")
        return p99


def measure(client: ServiceClient, online: list[Device], answerer: MethodAnswerer, args: argparse.Namespace,
            pings: list[float], ping: Callable[[int], Any], timer: Timer) -> bool:  # fmt: skip
    timed, line = timer.timed, timer.line
    ids = [d.registration_id for d in online]
    client.twin(ids[0])  # warm the connection
    print("twin GET")
    baseline = line("baseline GET /statistics/devices", timed(args.requests, lambda _: client.statistics()))
    twin_p99 = line("GET /twins/{id}", timed(args.requests, lambda i: client.twin(ids[i % len(ids)])))
    print("direct methods")
    line("MQTT PINGREQ round trip (on the devices' loop)", pings, cpu=False)
    # What a call costs that does no method work: an API request, then an MQTT round trip to a device from
    # this thread (the same two protocols and thread hops as a method call, without the server's routing).
    both = timed(args.methods, lambda i: (client.statistics(), ping(i)))
    method_base = line("baseline GET /statistics/devices + PINGREQ", both)
    totals: dict[str, float] = {}

    def invoke(index: int) -> None:
        call_id = f"c{index}"
        started = time.perf_counter()
        answer = client.invoke(ids[index % len(ids)], "bench", {"id": call_id}, timeout=30)
        totals[call_id] = time.perf_counter() - started
        if answer["status"] != 200:
            raise RuntimeError(f"method answered {answer}")

    timed(args.methods, invoke)
    overheads = [totals[k] - answerer.handler_times[k] for k in totals if k in answerer.handler_times]
    line("round trip", list(totals.values()))
    overhead_p99 = line("round trip minus the handler's own time", overheads, cpu=False)
    print(f"queries over {len(ids)} twins")
    listing = line("baseline GET /devices", timed(args.queries, lambda _: client.devices()))
    sql = "SELECT * FROM devices WHERE properties.reported.release = 'A'"
    matched = len(client.query(sql, page_size=1000))
    query_p99 = line(
        f"WHERE reported.release = 'A' ({matched} rows)",
        timed(args.queries, lambda _: client.query(sql, 1000)),
    )
    release = "properties.reported.release"
    grouped = f"SELECT {release} AS r, COUNT() AS n FROM devices GROUP BY {release}"
    count_p99 = line(
        "SELECT COUNT() … GROUP BY release", timed(args.queries, lambda _: client.query(grouped, 1000))
    )
    rows = [
        ("twin GET p99", twin_p99, 5.0, baseline),
        ("direct-method overhead p99", overhead_p99, 5.0, method_base),
        ("query over N twins p99", max(query_p99, count_p99), 50.0, listing),
    ]
    print(f"\n{'target':<30} {'measured':>10} {'limit':>8} {'baseline':>10} {'ratio':>7}  met")
    ok = True
    for name, value, limit, base in rows:
        met = value <= limit
        ok &= met
        verdict = "yes" if met else "NO"
        print(f"{name:<30} {value:8.2f}ms {limit:6.1f}ms {base:8.2f}ms {value / base:6.2f}x  {verdict}")
    return ok


async def ping_baseline(online: list[Device], count: int) -> list[float]:
    return [await online[i % len(online)].client.ping() for i in range(count)]  # type: ignore[union-attr]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=2000, help="twin GETs (and baseline GETs)")
    parser.add_argument("--methods", type=int, default=500)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--server-profile", type=Path, help="run the server under cProfile, stats to FILE")
    args = parser.parse_args()
    raise_open_file_limit()
    # Devices (a thread's event loop) and the backend (this thread) share one interpreter: with the default
    # 5 ms GIL switch interval a method's answer could wait up to 5 ms for the other thread, which is this
    # generator's cost, not the server's.
    sys.setswitchinterval(0.0002)
    with tempfile.TemporaryDirectory(prefix="service-bench-") as tmp:
        root_dir = Path(tmp)
        cloud = CloudProcess(root_dir / "cloud", args.server_profile)
        try:
            with api_client(cloud) as api:  # type: ignore[arg-type]  # api_client only reads .info
                root = CertificateAuthority.root("bench Root")
                issuing = root.intermediate("bench Issuing CA", path_length=0)
                enroll_root(api, root, "bench-root", "bench-group")
            devices = []
            for index in range(args.devices):
                files = issue_device_files(issuing, f"svc-{index:05d}", root_dir / "devices")
                context = client_context(
                    cloud.info.server_ca_pem, files.cert_file, files.key_file, files.pass_phrase
                )
                devices.append(Device(files.registration_id, context))
            ok = run(cloud, devices, args)
        except BaseException:
            print(f"server log (tail):\n{cloud.log_tail()}", file=sys.stderr)
            raise
        finally:
            cloud.stop()
    sys.exit(0 if ok else 1)


def run(cloud: CloudProcess, devices: list[Device], args: argparse.Namespace) -> bool:
    """Devices live on an event loop in a thread; the backend calls block, as a backend's would."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    answerer = MethodAnswerer()
    try:
        online = asyncio.run_coroutine_threadsafe(
            prepare(cloud, devices, args.concurrency, answerer), loop
        ).result()
        pings = asyncio.run_coroutine_threadsafe(ping_baseline(online, args.methods), loop).result()
        gc.freeze()  # the generator's own 1,000 devices: its full collections would stall it mid-measurement
        with ServiceClient.for_local_cloud(cloud.info) as client:

            def ping(index: int) -> float:
                device = online[index % len(online)].client
                return asyncio.run_coroutine_threadsafe(device.ping(), loop).result()  # type: ignore[union-attr]

            return measure(client, online, answerer, args, pings, ping, Timer(cloud))
    finally:
        asyncio.run_coroutine_threadsafe(_disconnect(devices), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)


async def _disconnect(devices: list[Device]) -> None:
    await asyncio.gather(*(d.client.disconnect() for d in devices if d.client), return_exceptions=True)


if __name__ == "__main__":
    main()
