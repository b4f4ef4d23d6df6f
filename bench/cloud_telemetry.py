"""Telemetry throughput of the local cloud, end to end: N MQTT devices publish QoS 1 through the proxy front.

A message counts once the cloud PUBACKed it, which it does only after the SQLite commit. Prints messages/s
for the MQTT path and for the store alone (target ≥ 5,000 msg/s).

    uv run python bench/cloud_telemetry.py [--devices N] [--messages M]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.* helpers (reused, not copied)


def mqtt_path(devices: int, messages: int, root_dir: Path) -> float:
    from client_app.cloud.server import CloudSettings, start_in_thread
    from client_app.pki import CertificateAuthority
    from tests.cloud.sdk import RawDevice, register
    from tests.fixtures.cloud import api_client, enroll_root, issue_device_files

    with start_in_thread(CloudSettings(data_dir=root_dir / "cloud")) as cloud, api_client(cloud) as api:
        root = CertificateAuthority.root("bench Root")
        enroll_root(api, root)
        files = [issue_device_files(root, f"bench-{i:03d}", root_dir / "devices") for i in range(devices)]
        for device in files:
            register(cloud.info, device)
        raws = [RawDevice(cloud.info, device).__enter__() for device in files]
        done = threading.Barrier(devices + 1)
        payload = b'{"temperature": 21.5, "humidity": 40}'

        def publish_all(raw: RawDevice) -> None:
            topic = f"devices/{raw.client._client_id.decode()}/messages/events/"
            for _ in range(messages):
                raw.client.publish(topic, payload, qos=1)
            while len(raw.acked) < messages:
                time.sleep(0.005)
            done.wait()

        started = time.perf_counter()
        for raw in raws:
            threading.Thread(target=publish_all, args=(raw,), daemon=True).start()
        done.wait()
        elapsed = time.perf_counter() - started
        for raw in raws:
            raw.__exit__(None, None, None)
        stored = len(api.telemetry(tail=1))
        assert stored == 1
    return devices * messages / elapsed


def store_only(count: int, root_dir: Path) -> float:
    from client_app.cloud.store import Store, TelemetryWriter

    store = Store(root_dir / "store.db")

    async def run() -> float:
        writer = TelemetryWriter(store)
        writer.start()
        started = time.perf_counter()
        await asyncio.gather(*(writer.add(f"d{i % 100}", b"{}", {}, {}) for i in range(count)))
        elapsed = time.perf_counter() - started
        await writer.stop()
        return elapsed

    rate = count / asyncio.run(run())
    store.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--messages", type=int, default=500, help="per device")
    args = parser.parse_args()
    warnings.simplefilter("ignore", DeprecationWarning)  # the SDK's PROTOCOL_TLSv1_2
    with tempfile.TemporaryDirectory() as tmp:
        rate = mqtt_path(args.devices, args.messages, Path(tmp))
        print(f"MQTT → stored: {args.devices} devices × {args.messages} QoS 1 messages: {rate:,.0f} msg/s")
        print(f"store alone (group commit): {store_only(50_000, Path(tmp)):,.0f} msg/s")


if __name__ == "__main__":
    main()
