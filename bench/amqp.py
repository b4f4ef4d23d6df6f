"""AMQP endpoint load: C2D over AMQP to 1,000 connected devices, Event Hubs consumer throughput, and what the
AMQP endpoint costs the MQTT telemetry path.

The cloud runs as its own process and 1,000 raw MQTT devices provision and connect as in bench/cloud_load.py
(reused, not copied). Then, each next to a baseline from the same run:
  * MQTT telemetry rate alone and while an Event Hubs consumer (its own process) reads every message live,
    with the cloud's MQTT process on a CPU of its own and this load generator, the consumer and the Event Hubs
    endpoint's process (the cloud's child, started at the first connection to `eventhub_host`) on the
    other(s): on Azure the devices and the backend run on other machines than the hub, and the Event
    Hubs-compatible endpoint is a service of its own on other machines than the MQTT gateway. The ratio is
    what the AMQP endpoint costs the MQTT path (target ≥ 0.90). Rounds alone and with in turn (alone first
    and last; each with-round against the mean of the alone rounds either side; medians); a round counts only
    if the server was the bottleneck (≥ 85 % of its CPU, its clients with the Event Hubs process < 95 % of
    theirs, other processes < 10 %), the Event Hubs process was on the clients' CPU, and the consumer read
    every event; the server's CPU between the last PUBACK and the consumer's last event is added to the
    round's time. Linux, ≥ 2 CPUs. The same two rates unpinned (one run each) are printed for information:
    there the consumer's and the Event Hubs process's CPU compete with the server;
  * so also the server's CPU per telemetry message (psutil, the MQTT process; its main thread and the AMQP
    thread for C2D and feedback apart) with and without the live consumer, both at the same offered rate, in
    alternating rounds (medians): what the endpoint costs the server itself (target ≤ 1.10 ×); beside it the
    Event Hubs process's CPU per event (the endpoint's own cost, not the MQTT path's);
  * one azure-eventhub EventHubConsumerClient (its own process, all partitions) reading everything stored from
    the start: events/s (target ≥ 5,000), next to the MQTT store rate;
  * C2D with azure-iot-hub's send_c2d_message (uamqp) to random connected devices at a fixed rate: send → the
    device's PUBLISH, p50/p99 (target p99 ≤ 20 ms), next to PINGREQ round trips and the operator client's C2D
    (python-qpid-proton, one kept-open connection).
Exit status 0 only if every target is met and nothing was lost.

    uv run python bench/amqp.py [--devices 1000] [--telemetry-messages 30000] [--c2d-messages 500]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cloud_load as load

from client_app.cloud.amqp.service import EVENTHUBS_MODULE
from client_app.cloud.mqtt import packets as p
from client_app.cloud.sas import parse_connection_string
from tests.fixtures.cloud import api_client

# ---- the Event Hubs consumer, in a process of its own (so it competes with the server, not with us) ------


def consume(connection_string: str, ca: str, starting_position: str, expected: int, timeout: float,
            max_wait: float) -> None:  # fmt: skip
    """`--consume` mode: read `expected` events over all partitions; print {"events", "seconds", "cpu"} as
    JSON (cpu: this process's CPU seconds while receiving).

    As a backend reads a busy hub: `receive_batch` with a large prefetch, the way Azure's guidance for high
    throughput goes (a batch callback rather than one per event: "Use processEvent or processEventBatch",
    learn.microsoft.com/azure/developer/java/sdk/troubleshooting-messaging-event-hubs-performance; "for
    scenarios where the size of events is small and many events are flowing through the system, using a
    larger ... PrefetchCount may help improve throughput", EventProcessorClientOptions.PrefetchCount,
    learn.microsoft.com/dotnet/api/azure.messaging.eventhubs.eventprocessorclientoptions.prefetchcount;
    azure-eventhub's `prefetch` and `max_batch_size` default to 300). `max_wait`: how long a partial batch may
    wait for more (the pinned rate rounds use 0.1 s, so their last events are not held back a second)."""
    from azure.eventhub import EventHubConsumerClient

    client = EventHubConsumerClient.from_connection_string(
        connection_string, "$Default", connection_verify=ca
    )
    lock, done = threading.Lock(), threading.Event()
    state = {"events": 0, "first": 0.0, "last": 0.0, "cpu_last": 0.0}

    def on_batch(_context: Any, events: list[Any]) -> None:
        if not events:  # max_wait_time passed without one
            return
        now = time.monotonic()  # system-wide: the bench compares it with the end of its round
        with lock:
            if not state["first"]:
                state["first"] = now
            state["events"] += len(events)
            state["last"], state["cpu_last"] = now, time.process_time()
            if state["events"] >= expected:
                done.set()

    worker = threading.Thread(target=client.receive_batch, daemon=True, kwargs={
        "on_event_batch": on_batch, "starting_position": starting_position, "max_batch_size": 1000,
        "prefetch": 3000, "max_wait_time": max_wait,
    })  # fmt: skip
    worker.start()
    print(json.dumps({"ready": True}), flush=True)
    cpu = time.process_time()
    done.wait(timeout)
    cpu = time.process_time() - cpu
    client.close()
    result = {"events": state["events"], "seconds": state["last"] - state["first"], "cpu": cpu,
              "last": state["last"], "cpu_last": state["cpu_last"]}  # fmt: skip
    print(json.dumps(result), flush=True)


def start_consumer(info: Any, starting_position: str, expected: int, timeout: float,
                   cpus: set[int] | None = None, max_wait: float = 1.0) -> subprocess.Popen[str]:  # fmt: skip
    """The consumer's process, receiving (on `cpus`, all its threads, if given)."""
    command = [sys.executable, __file__, "--consume", info.eventhub_compatible_connection_string,
               info.server_ca_pem, starting_position, str(expected), str(timeout), str(max_wait)]  # fmt: skip
    consumer = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert consumer.stdout is not None
    json.loads(consumer.stdout.readline())  # {"ready": true}: the client is receiving
    if cpus:
        pin(psutil.Process(consumer.pid), cpus)
    return consumer


def consumer_result(consumer: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = consumer.communicate(timeout=600)
    return json.loads(out.strip().splitlines()[-1])


# ---- the Event Hubs-compatible endpoint's own process ----------------------------------------------------
#
# As on Azure, where it is a service of its own (its own host name, other machines than the hub's MQTT
# gateway), the endpoint runs in a process of its own: the cloud starts it at the first connection to
# `eventhub_host`, and it reads the telemetry from the cloud's SQLite. The MQTT process keeps an AMQP thread
# for C2D and feedback on `amqp_host` only.


def eventhubs_process(cloud: load.CloudProcess) -> psutil.Process | None:
    """The cloud's child running the Event Hubs endpoint (None before the first consumer connected)."""
    for child in cloud.process.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if EVENTHUBS_MODULE in child.cmdline():
                return child
    return None


def cpu_of(process: psutil.Process | None) -> float:
    """CPU seconds of `process` (user + system, all its threads); 0 for none or one that has gone."""
    if process is None:
        return 0.0
    with contextlib.suppress(psutil.Error):
        return process_cpu(process)
    return 0.0


# ---- what a live consumer costs the server, at the same offered rate --------------------------------------


async def paced_telemetry(devices: list[load.Device], total: int, rate: float) -> float:
    """`total` QoS 1 telemetry messages at `rate`/s over the devices in turn (open loop); returns the rate
    achieved (first PUBLISH to last PUBACK)."""
    topics = {d.registration_id: load.TELEMETRY_TOPIC.format(d.registration_id) for d in devices}
    acks: list[asyncio.Future[float]] = []
    started = time.perf_counter()
    while len(acks) < total:
        due = min(total, int((time.perf_counter() - started) * rate) + 1)
        while len(acks) < due:
            device = devices[len(acks) % len(devices)]
            acks.append(load.client_of(device).publish(topics[device.registration_id], load.TELEMETRY_BODY))
        await asyncio.sleep(0.005)
    async with asyncio.timeout(60 + total / 500):
        last = max(await asyncio.gather(*acks))
    return total / (last - started)


def thread_cpu(cloud: load.CloudProcess) -> tuple[float, float]:
    """CPU seconds of the server's main thread (the asyncio loop: MQTT, hub, SQLite writer) and of its
    other threads (the AMQP endpoint's; the rest are idle)."""
    threads = cloud.process.threads()
    main = sum(t.user_time + t.system_time for t in threads if t.id == cloud.popen.pid)
    return main, sum(t.user_time + t.system_time for t in threads) - main


async def cpu_rounds(info: Any, cloud: load.CloudProcess, devices: list[load.Device],
                     args: argparse.Namespace, rate: float) -> dict[str, list[float]]:  # fmt: skip
    """Alternating rounds at the same offered rate: telemetry alone, then with a live consumer. Per round:
    server CPU µs per message (main thread, other threads: the cloud's AMQP thread, for C2D and feedback), the
    Event Hubs process's and the consumer's CPU µs per event, rate achieved."""
    keys = ("alone", "alone_main", "with", "with_main", "with_amqp", "eventhubs", "consumer", "rate_alone",
            "rate_with")  # fmt: skip
    rounds: dict[str, list[float]] = {key: [] for key in keys}
    n = args.cpu_messages
    for _ in range(args.cpu_rounds):
        for live in (False, True):
            consumer = start_consumer(info, "@latest", n, 300) if live else None
            if consumer:
                await asyncio.sleep(2)  # its receivers are attached to every partition
            hub = eventhubs_process(cloud)
            (main_before, other_before), hub_before = thread_cpu(cloud), cpu_of(hub)
            achieved = await paced_telemetry(devices, n, rate)
            main_after, other_after = thread_cpu(cloud)
            main, other = (main_after - main_before) / n * 1e6, (other_after - other_before) / n * 1e6
            key = "with" if live else "alone"
            rounds[key].append(main + other)
            rounds[f"{key}_main"].append(main)
            rounds[f"rate_{key}"].append(achieved)
            if consumer:
                result = consumer_result(consumer)
                rounds["eventhubs"].append((cpu_of(hub) - hub_before) / n * 1e6)
                rounds["with_amqp"].append(other)
                rounds["consumer"].append(result["cpu"] / n * 1e6)
                if result["events"] < n:
                    rounds.setdefault("lost", []).append(n - result["events"])
            print(f"    {achieved:,.0f} msg/s {'with' if live else 'without'} a live consumer: server"
                  f" {main + other:.0f} µs CPU/msg (main thread {main:.0f}, AMQP thread {other:.0f})"
                  + (f"; Event Hubs process {rounds['eventhubs'][-1]:.0f} µs/event" if live else "")
                  )  # fmt: skip
    return rounds


# ---- what the endpoint costs the server's MQTT capacity: the MQTT process on a CPU of its own -------------
#
# On Azure the devices and the backend's consumer run on other machines than the hub, and the Event
# Hubs-compatible endpoint is a service of its own (its own host name) on other machines than the MQTT
# gateway. Here the cloud's MQTT process (all its threads) gets one CPU, and this load generator, the consumer
# and the Event Hubs process the other(s): on a 2-core machine the endpoint's process has to share its
# clients' CPU. So neither the consumer's nor the endpoint process's CPU can come off the MQTT rate; a round
# is valid only if the MQTT process, not its clients, was the bottleneck.

WHY_PINNED = (
    "on Azure the Event Hubs-compatible endpoint is a separate service (its own host name) on other machines"
    " than the MQTT gateway, and the devices and the backend run elsewhere too; here the MQTT process gets a"
    " CPU of its own, and the generator, the consumer and the Event Hubs process share the other(s)"
)
SERVER_BUSY = 0.85  # a valid round: the server used at least this share of its CPU (a closed loop leaves
# some idle between wake-ups: 4-10 % here while its clients' CPU was 20-40 % idle) ...
CLIENTS_BUSY = 0.95  # ... its clients (generator + consumer + Event Hubs process) less than this share of
# theirs (or they, not the server, may set the rate) ...
OTHERS_BUSY = 0.10  # ... other processes less than this share of the machine; the consumer read every event


def cpu_split() -> tuple[set[int], set[int]]:
    """(the server's CPU, its clients' CPUs) out of those this process may use; exits on fewer than 2."""
    if not hasattr(os, "sched_setaffinity"):
        sys.exit("bench/amqp.py: the rate phase pins processes to CPUs (os.sched_setaffinity): Linux only")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        sys.exit(f"bench/amqp.py: the rate phase gives the server a CPU of its own and its clients another;"
                 f" this process may use {len(cpus)} CPU")  # fmt: skip
    return {cpus[0]}, set(cpus[1:])


def pin(process: psutil.Process, cpus: set[int]) -> None:
    """Every thread of `process` onto `cpus` (Linux's affinity is per thread; new threads inherit it)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        for thread in process.threads():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(thread.id, cpus)


def on_cpus(process: psutil.Process, cpus: set[int]) -> bool:
    """Whether every thread of `process` runs on `cpus` only."""
    try:
        threads = process.threads()
    except psutil.NoSuchProcess:
        return False
    for thread in threads:
        with contextlib.suppress(ProcessLookupError):  # a thread that ended since
            if os.sched_getaffinity(thread.id) != cpus:
                return False
    return True


def hub_problem(cloud: load.CloudProcess, hub: psutil.Process | None, clients: set[int]) -> str:
    """What was wrong with the Event Hubs process over a with-round ("" if nothing): it must have been there
    from the start to the end of the burst, and on the clients' CPU."""
    if hub is None:
        return f"no Event Hubs process ({EVENTHUBS_MODULE}) under the cloud's while the consumer read"
    now = eventhubs_process(cloud)
    if now is None or now.pid != hub.pid:
        return "the Event Hubs process was not the same at the end of the burst"
    if not on_cpus(hub, clients):
        return f"the Event Hubs process was not on the clients' CPU(s) {sorted(clients)}"
    return ""


def idle() -> list[float]:
    """Seconds each CPU has been idle (or waiting for I/O) so far."""
    return [t.idle + getattr(t, "iowait", 0.0) for t in psutil.cpu_times(percpu=True)]


def process_cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


@dataclass
class RateRound:
    live: bool
    rate: float  # msg/s: n / (first PUBLISH → last PUBACK + the server's CPU s after it until the last event)
    acked: float  # msg/s: n over first PUBLISH → last PUBACK
    server: float  # the MQTT process's share of its CPU, first PUBLISH → last PUBACK
    clients: float  # the generator's, the consumer's and the Event Hubs process's share of theirs, the same
    others: float  # other processes' share of all the CPUs, the same span
    generator: float  # the generator's CPU µs per message
    eventhubs: float = 0.0  # the Event Hubs process's CPU µs per message (if live: to the last event)
    consumer: float = 0.0  # the consumer's CPU µs per event, first PUBLISH → its last event
    events: int = 0  # read live by the consumer
    lag: float = 0.0  # the consumer's last event after the last PUBACK, s
    tail: float = 0.0  # the server's CPU s in that lag: endpoint work the round's PUBACKs did not wait for
    hub: str = ""  # a with-round's Event Hubs process not there, not the same or not on the clients' CPU

    def problems(self, expected: int) -> list[str]:
        found = []
        if self.server < SERVER_BUSY:
            found.append(f"the server used {self.server:.0%} of its CPU (< {SERVER_BUSY:.0%})")
        if self.clients >= CLIENTS_BUSY:
            found.append(f"generator + consumer + Event Hubs process used {self.clients:.0%} of their CPU"
                         f" (≥ {CLIENTS_BUSY:.0%})")  # fmt: skip
        if self.others >= OTHERS_BUSY:
            found.append(f"other processes used {self.others:.0%} of the machine (≥ {OTHERS_BUSY:.0%})")
        if self.live and self.events < expected:
            found.append(f"the consumer read {self.events:,} of {expected:,} events")
        if self.live and self.hub:
            found.append(self.hub)
        return found

    @property
    def server_us(self) -> float:
        """The server's CPU µs per message, first PUBLISH → last PUBACK."""
        return self.server / self.acked * 1e6


async def finish_reading(cloud: load.CloudProcess, hub: psutil.Process | None, consumer: subprocess.Popen[str]
                         ) -> tuple[dict[str, Any], list[tuple[float, float, float]]]:  # fmt: skip
    """The consumer's result, and (time.monotonic(), server CPU s, Event Hubs process CPU s) every 10 ms until
    it came."""

    def sample() -> tuple[float, float, float]:
        return time.monotonic(), cloud.cpu_seconds(), cpu_of(hub)

    samples = [sample()]
    reading = asyncio.ensure_future(asyncio.to_thread(consumer_result, consumer))
    while not reading.done():
        await asyncio.sleep(0.01)
        samples.append(sample())
    return reading.result(), samples


async def rate_round(cloud: load.CloudProcess, info: Any, devices: list[load.Device],
                     args: argparse.Namespace, clients: set[int], live: bool) -> RateRound:  # fmt: skip
    """One closed-loop telemetry burst (bench/cloud_load.py's), alone or with a live consumer. With one, the
    server's CPU between the last PUBACK and the consumer's last event (endpoint work that trails the PUBACKs)
    is added to the round's time: at full load that work takes the server's CPU from MQTT. The Event Hubs
    process (there once a consumer connected) goes onto the clients' CPU before the burst, every round."""
    n, r = args.rate_messages, load.Results(len(devices))
    consumer = start_consumer(info, "@latest", n, 300, clients, max_wait=0.1) if live else None
    if consumer:
        await asyncio.sleep(2)  # its receivers are attached to every partition
    hub = eventhubs_process(cloud)
    if hub:
        pin(hub, clients)
    us, reader = psutil.Process(), psutil.Process(consumer.pid) if consumer else None
    server, generator, hub_start = cloud.cpu_seconds(), process_cpu(us), cpu_of(hub)
    read_start, idle_before, started = process_cpu(reader) if reader else 0.0, idle(), time.monotonic()
    await load.telemetry(devices, n, args.window, r)
    ended = time.monotonic()
    wall = ended - started
    server, generator = cloud.cpu_seconds() - server, process_cpu(us) - generator
    read_cpu, hub_cpu = (process_cpu(reader) if reader else 0.0) - read_start, cpu_of(hub) - hub_start
    clients_cpu = generator + read_cpu + hub_cpu
    idle_cpu = [after - before for before, after in zip(idle_before, idle(), strict=True)]
    others = max(0.0, len(idle_cpu) * wall - sum(idle_cpu) - server - clients_cpu)
    result = RateRound(live, n / wall, n / wall, server / wall, clients_cpu / wall / len(clients),
                       others / wall / len(idle_cpu), generator / n * 1e6, hub_cpu / n * 1e6)  # fmt: skip
    if consumer:
        result.hub = hub_problem(cloud, hub, clients)
        read, samples = await finish_reading(cloud, hub, consumer)
        result.events, result.lag = read["events"], max(0.0, read["last"] - ended)
        _, server_at_last, hub_at_last = next((s for s in samples if s[0] >= read["last"]), samples[-1])
        result.tail = server_at_last - samples[0][1]
        result.rate = n / (wall + result.tail)
        result.eventhubs = (hub_at_last - hub_start) / n * 1e6
        # its process_time() at its last event against psutil's at the start: user + system, all threads
        result.consumer = (read["cpu_last"] - read_start) / n * 1e6
    print(f"    {result.rate:,.0f} msg/s {'with' if live else 'without'} a live consumer"
          + (f" ({result.acked:,.0f}/s PUBACKed; its last event {result.lag:.2f} s after the last PUBACK,"
             f" the server's CPU meanwhile {result.tail:.2f} s; {result.events:,} read; consumer"
             f" {result.consumer:.0f} µs/event)" if live else "")
          + f": server {result.server:.0%} of its CPU ({result.server_us:.0f} µs/msg); Event Hubs process"
          f" {result.eventhubs:.0f} µs/msg;"
          f" generator {result.generator:.0f} µs/msg; clients {result.clients:.0%} of their CPU; others"
          f" {result.others:.0%} of the machine"
          + (f"; NOT VALID: {result.hub}" if live and result.hub else ""))  # fmt: skip
    return result


async def pinned_rounds(cloud: load.CloudProcess, info: Any, devices: list[load.Device],
                        args: argparse.Namespace) -> list[RateRound]:  # fmt: skip
    """Rounds alone and with a live consumer in turn, alone first and last (each with-round sits between two
    alone ones, so a drift of the server's rate over the phase cancels out); the MQTT process on one CPU and
    its clients (with the Event Hubs process) on the other(s), all unpinned afterwards."""
    server_cpus, client_cpus = cpu_split()
    everything = server_cpus | client_cpus
    pin(cloud.process, server_cpus)
    pin(psutil.Process(), client_cpus)
    try:
        settle = load.Results(len(devices))
        await load.telemetry(devices, args.rate_messages // 2, args.window, settle)
        return [await rate_round(cloud, info, devices, args, client_cpus, live=bool(i % 2))
                for i in range(2 * args.rate_rounds + 1)]  # fmt: skip
    finally:
        pin(cloud.process, everything)
        pin(psutil.Process(), everything)
        if hub := eventhubs_process(cloud):
            pin(hub, everything)


# ---- C2D over AMQP ---------------------------------------------------------------------------------------


def hub_connection_string(info: Any) -> str:
    """The `service` policy's hub connection string (its key is in the Event Hubs-compatible one)."""
    fields = parse_connection_string(info.eventhub_compatible_connection_string)
    return (f"HostName={info.amqp_host};SharedAccessKeyName={fields['SharedAccessKeyName']};"
            f"SharedAccessKey={fields['SharedAccessKey']}")  # fmt: skip


async def amqp_c2d(info: Any, devices: list[load.Device], picks: list[load.Device], rate: float,
                   results: dict[str, Any]) -> None:  # fmt: skip
    """C2D with azure-iot-hub (uamqp, one connection) at `rate`/s: send → the device's PUBLISH."""
    from azure.iot.hub import IoTHubRegistryManager

    os.environ["SSL_CERT_FILE"] = info.server_ca_pem  # uamqp's OpenSSL trusts the cloud's CA through it
    registry = IoTHubRegistryManager.from_connection_string(hub_connection_string(info))
    registry.send_c2d_message(picks[0].registration_id, "warm-up")  # connection + CBS outside the figures
    sent_at: dict[int, float] = {}
    received: dict[int, float] = {}

    def on_publish(message: p.Publish, now: float) -> None:
        if message.payload.startswith(b"amqp-"):
            received[int(message.payload[5:])] = now

    for device in devices:
        load.client_of(device).on_publish = on_publish

    def send_all() -> None:
        started = time.perf_counter()
        for index, device in enumerate(picks):
            time.sleep(max(0.0, started + index / rate - time.perf_counter()))
            sent_at[index] = time.perf_counter()
            try:
                registry.send_c2d_message(device.registration_id, f"amqp-{index}")
            except Exception as exc:  # counted as lost below
                results.setdefault("failures", []).append(repr(exc)[:120])

    await asyncio.to_thread(send_all)
    deadline = time.monotonic() + load.OP_TIMEOUT
    while len(received) < len(picks) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    registry.amqp_svc_client.disconnect_sync()
    results["amqp_c2d"] = [received[i] - sent_at[i] for i in received if i in sent_at]
    print(f"phase: {len(received)}/{len(picks)} C2D messages over AMQP received at {rate:g}/s")


# ---- run --------------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, cloud: load.CloudProcess, api: Any, devices: list[load.Device]
              ) -> dict[str, Any]:  # fmt: skip
    info = cloud.info
    r = load.Results(args.devices)
    out: dict[str, Any] = {"load_before": os.getloadavg()[0]}
    hub = await load.register_all(info, devices, args.concurrency, r)
    online = await load.connect_all(info, hub, devices, args.concurrency, r)
    pinger = asyncio.create_task(load.keep_alive(online))
    try:
        # A first burst warms the server up (its first thousands of messages come slower), so the baseline
        # below is not a cold start that a second phase would beat anyway.
        await load.telemetry(online, args.telemetry_messages // 2, args.window, r)
        cpu = cloud.cpu_seconds()
        with load.server_cpu(cloud):
            await load.telemetry(online, args.telemetry_messages, args.window, r)
        out["mqtt_alone"] = args.telemetry_messages / r.telemetry_seconds
        out["rate_cpu_alone"] = (cloud.cpu_seconds() - cpu) / args.telemetry_messages
        print(f"         {out['mqtt_alone']:,.0f} msg/s with no AMQP consumer")

        consumer = start_consumer(info, "@latest", args.telemetry_messages, 300)
        await asyncio.sleep(2)  # its receivers are attached to every partition
        hub = eventhubs_process(cloud)
        cpu, hub_cpu = cloud.cpu_seconds(), cpu_of(hub)
        with load.server_cpu(cloud):
            await load.telemetry(online, args.telemetry_messages, args.window, r)
        out["mqtt_with_consumer"] = args.telemetry_messages / r.telemetry_seconds
        out["rate_cpu_with"] = (cloud.cpu_seconds() - cpu) / args.telemetry_messages
        live = consumer_result(consumer)
        out["live_events"], out["live_consumer_cpu"] = live["events"], live["cpu"] / args.telemetry_messages
        out["live_eventhubs_cpu"] = (cpu_of(hub) - hub_cpu) / args.telemetry_messages
        print(f"         {out['mqtt_with_consumer']:,.0f} msg/s while an Event Hubs consumer read"
              f" {out['live_events']:,} of them live")  # fmt: skip

        print(f"phase: the MQTT process on a CPU of its own, {args.rate_rounds} rounds each way")
        out["pinned"] = await pinned_rounds(cloud, info, online, args)

        total = 2 * args.telemetry_messages
        hub = eventhubs_process(cloud)
        hub_cpu = cpu_of(hub)
        with load.server_cpu(cloud):
            consumer = start_consumer(info, "-1", total, 300)
            read = consumer_result(consumer)
            out["read_events"], out["read_seconds"] = read["events"], read["seconds"]
        hub_cpu = cpu_of(hub or eventhubs_process(cloud)) - hub_cpu  # one started by the read: all its CPU
        print(f"phase: {out['read_events']:,} events read from the start in {out['read_seconds']:.2f} s;"
              f" Event Hubs process {hub_cpu:.2f} s CPU")  # fmt: skip

        # Half the lower rate: the machine is not saturated either way, so neither figure is inflated by the
        # other processes' share of the cores.
        slower = min(out["mqtt_alone"], out["mqtt_with_consumer"])
        out["cpu_rate"] = args.cpu_rate or round(0.5 * slower, -2)
        print(f"phase: server CPU per message at {out['cpu_rate']:,.0f} msg/s, {args.cpu_rounds} rounds")
        out["cpu"] = await cpu_rounds(info, cloud, online, args, out["cpu_rate"])

        rng = random.Random(1)
        picks = [rng.choice(online) for _ in range(args.c2d_messages)]
        await load.ping_latency(picks, args.c2d_rate, r)
        await load.c2d(api, online, picks, args.c2d_rate, r)
        with load.server_cpu(cloud):
            await amqp_c2d(info, online, picks, args.c2d_rate, out)
    finally:
        pinger.cancel()
        await asyncio.gather(*(d.client.disconnect() for d in devices if d.client), return_exceptions=True)
    out.update(ping=r.ping_rtt, http_c2d=r.c2d_latency, failures=dict(r.failures), picks=args.c2d_messages)
    return out


def pinned_summary(rounds: list[RateRound], expected: int) -> dict[str, Any]:
    """The pinned rounds' ratio (median over the with-rounds of each one's rate to the mean of the alone
    rounds either side), medians of the rest, and what makes a round not valid."""
    alone, live = [r for r in rounds if not r.live], [r for r in rounds if r.live]
    problems = [f"round {i + 1} ({'with' if r.live else 'without'} the consumer): {problem}"
                for i, r in enumerate(rounds) for problem in r.problems(expected)]  # fmt: skip
    med = statistics.median

    def bracketed(rate: Callable[[RateRound], float]) -> list[float]:
        sides = itertools.pairwise(alone)
        return [rate(w) * 2 / (rate(a) + rate(b)) for w, (a, b) in zip(live, sides, strict=True)]

    ratios = bracketed(lambda r: r.rate)
    return {
        "alone": med(r.rate for r in alone), "with": med(r.rate for r in live), "ratio": med(ratios),
        "pairs": ", ".join(f"{ratio:.2f}" for ratio in ratios),
        "server": med(r.server for r in rounds), "clients": max(r.clients for r in rounds),
        "others": max(r.others for r in rounds), "generator": med(r.generator for r in rounds),
        "consumer": med(r.consumer for r in live), "events": sum(r.events for r in live),
        "eventhubs": med(r.eventhubs for r in live), "eventhubs_idle": max(r.eventhubs for r in alone),
        "expected": expected * len(live), "lag": max(r.lag for r in live), "tail": med(r.tail for r in live),
        "acked": med(bracketed(lambda r: r.acked)), "server_us": med(bracketed(lambda r: r.server_us)),
        "problems": problems, "valid": not problems,
    }  # fmt: skip


def verdict(met: bool, valid: bool = True) -> str:
    return ("OK" if met else "MISSED") if valid else "NOT VALID"


def report(out: dict[str, Any], args: argparse.Namespace) -> bool:
    pct = load.percentile
    amqp50, amqp99 = pct(out["amqp_c2d"], 50), pct(out["amqp_c2d"], 99)
    http50, http99 = pct(out["http_c2d"], 50), pct(out["http_c2d"], 99)
    ping99 = pct(out["ping"], 99)
    read_rate = out["read_events"] / out["read_seconds"] if out["read_seconds"] else 0.0
    cost_ratio = out["mqtt_with_consumer"] / out["mqtt_alone"]
    cpu = {key: statistics.median(values) for key, values in out["cpu"].items() if values}
    cpu_ratio = cpu["with"] / cpu["alone"]
    pinned = pinned_summary(out["pinned"], args.rate_messages)
    pinned_ratio = pinned["ratio"]
    total = 2 * args.telemetry_messages
    rows = [
        ("C2D over AMQP p50", f"{amqp50 * 1000:.1f} ms", "", "",
         f"operator client C2D p50: {http50 * 1000:.1f} ms", load.ratio(amqp50, http50)),
        ("C2D over AMQP p99", f"{amqp99 * 1000:.1f} ms", "≤ 20 ms", verdict(amqp99 <= 0.020),
         f"operator client C2D p99: {http99 * 1000:.1f} ms; PINGREQ p99 {ping99 * 1000:.2f} ms",
         load.ratio(amqp99, http99)),
        ("Event Hubs consumer events/s", f"{read_rate:,.0f}", "≥ 5,000", verdict(read_rate >= 5000),
         f"MQTT telemetry stored: {out['mqtt_alone']:,.0f}/s", load.ratio(read_rate, out["mqtt_alone"])),
        ("MQTT msg/s, live consumer,", f"{pinned['with']:,.0f}", "≥ 0.90 ×",
         verdict(pinned_ratio >= 0.9, pinned["valid"]),
         f"alone: {pinned['alone']:,.0f}/s (medians; {args.rate_rounds} with, {args.rate_rounds + 1} alone)",
         f"{pinned_ratio:.3f}"),
        ("  MQTT process on its own CPU", "", "", "", "", ""),
        ("  unpinned (information)", f"{out['mqtt_with_consumer']:,.0f}", "", "",
         f"alone: {out['mqtt_alone']:,.0f}/s (one run each, all on {os.cpu_count()} CPUs)",
         f"{cost_ratio:.2f}"),
        ("server CPU/msg, live consumer", f"{cpu['with']:.0f} µs", "≤ 1.10 ×", verdict(cpu_ratio <= 1.10),
         f"no consumer: {cpu['alone']:.0f} µs (same {out['cpu_rate']:,.0f} msg/s; medians)",
         f"{cpu_ratio:.2f}"),
        ("Event Hubs process CPU/event", f"{pinned['eventhubs']:.0f} µs", "", "",
         f"its own process (the rate rounds' median; CPU rounds {cpu['eventhubs']:.0f} µs)", ""),
    ]  # fmt: skip
    print(f"\nResults: {args.devices:,} devices, {os.cpu_count()} CPUs, load average"
          f" {out['load_before']:.2f} before, {os.getloadavg()[0]:.2f} after")  # fmt: skip
    print(f"{'figure':<31} {'measured':>12} {'target':>9}  {'':<9} {'baseline (same run)':<58} ratio")
    for figure, measured, target, status, baseline, ratio_text in rows:
        print(f"{figure:<31} {measured:>12} {target:>9}  {status:<9} {baseline:<58} {ratio_text}")
    lost = out["picks"] - len(out["amqp_c2d"])
    print(f"C2D: {args.c2d_rate:g}/s to random devices, {lost} lost over AMQP; Event Hubs:"
          f" {out['read_events']:,} of {total:,} read from the start,"
          f" {out['live_events']:,} of {args.telemetry_messages:,} live")  # fmt: skip
    print(f"Unpinned rate phase, server (MQTT process) CPU per message: {out['rate_cpu_alone'] * 1e6:.0f}"
          f" µs alone, {out['rate_cpu_with'] * 1e6:.0f} µs with the consumer (at the rate it left); the Event"
          f" Hubs process {out['live_eventhubs_cpu'] * 1e6:.0f} µs and the consumer's own CPU"
          f" {out['live_consumer_cpu'] * 1e6:.0f} µs per event")  # fmt: skip
    print(f"CPU rounds ({args.cpu_rounds} × {args.cpu_messages:,} messages each way, medians): main thread"
          f" {cpu['alone_main']:.0f} µs/msg alone, {cpu['with_main']:.0f} with the consumer; the cloud's AMQP"
          f" thread (C2D and feedback) {cpu['with_amqp']:.1f} µs per message; the Event Hubs process"
          f" {cpu['eventhubs']:.0f} µs and the consumer's process {cpu['consumer']:.0f} µs per event;"
          f" achieved {cpu['rate_alone']:,.0f} and {cpu['rate_with']:,.0f} msg/s")  # fmt: skip
    print(f"Rate rounds, the MQTT process on a CPU of its own: {WHY_PINNED}.")
    print(f"  Each with-round to the alone ones either side: {pinned['pairs']}; medians: server"
          f" {pinned['server']:.0%} of its CPU (its CPU per message with the consumer to alone, bracketed"
          f" likewise: {pinned['server_us']:.2f}); Event Hubs process {pinned['eventhubs']:.0f}"
          f" µs/event (at most {pinned['eventhubs_idle']:.1f} µs/msg with no consumer); generator"
          f" {pinned['generator']:.0f} µs/msg, consumer (azure-eventhub) {pinned['consumer']:.0f} µs/event;"
          f" the three together at most {pinned['clients']:.0%} of their CPU; other processes at most"
          f" {pinned['others']:.0%} of the machine;"
          f" {pinned['events']:,} of {pinned['expected']:,} events read live, the last at most"
          f" {pinned['lag']:.2f} s after its round's last PUBACK, the server's CPU meanwhile"
          f" {pinned['tail']:.2f} s (median; added to the round's time; PUBACKed rates alone: ratio"
          f" {pinned['acked']:.2f})")  # fmt: skip
    for problem in pinned["problems"]:
        print(f"NOT VALID: {problem}")
    for failure in [*out["failures"], *out.get("failures_amqp", [])][:10]:
        print(f"failure: {failure}")
    lost_live = sum(out["cpu"].get("lost", []))
    if lost_live:
        print(f"failure: {lost_live} events not read live in the CPU rounds")
    complete = not lost and out["read_events"] >= total and out["live_events"] >= args.telemetry_messages
    complete = complete and not lost_live and pinned["valid"]
    return complete and not out["failures"] and all(status in ("", "OK") for *_, status, _, _ in rows)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--consume":
        connection_string, ca, position, expected, timeout, max_wait = sys.argv[2:8]
        consume(connection_string, ca, position, int(expected), float(timeout), float(max_wait))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--telemetry-messages", type=int, default=30_000, help="per telemetry phase")
    parser.add_argument("--window", type=int, default=4, help="telemetry messages in flight per device")
    parser.add_argument("--c2d-messages", type=int, default=500)
    parser.add_argument("--c2d-rate", type=float, default=50, help="C2D messages per second")
    parser.add_argument("--concurrency", type=int, default=50, help="registrations/connects at a time")
    parser.add_argument(
        "--cpu-rate",
        type=float,
        default=0.0,
        help="offered msg/s for the CPU rounds (default: half the lower of the two rates)",
    )
    parser.add_argument("--rate-rounds", type=int, default=5, help="rounds each way, server on its own CPU")
    parser.add_argument("--rate-messages", type=int, default=30_000, help="messages per such round")
    parser.add_argument("--cpu-rounds", type=int, default=3, help="CPU rounds each way (alternating)")
    parser.add_argument("--cpu-messages", type=int, default=20_000, help="messages per CPU round")
    args = parser.parse_args()
    load.raise_open_file_limit()
    with tempfile.TemporaryDirectory(prefix="cloud-amqp-") as tmp:
        root_dir = Path(tmp)
        with load.cloud_process(root_dir / "cloud") as cloud, api_client(cloud) as api:  # type: ignore[arg-type]
            devices = load.enrolled_devices(api, cloud, "amqp", args.devices, root_dir / "devices")
            print(
                f"setup: {args.devices} devices; cloud pid {cloud.popen.pid}, AMQP on {cloud.info.amqp_host}"
            )
            out = asyncio.run(run(args, cloud, api, devices))
    sys.exit(0 if report(out, args) else 1)


if __name__ == "__main__":
    main()
