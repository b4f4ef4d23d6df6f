"""Real azure-iot-device SDK clients aimed at a local cloud through its HTTP CONNECT proxy front."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import socks
from azure.iot.device import X509, IoTHubDeviceClient, ProvisioningDeviceClient, ProxyOptions
from azure.iot.device.aio import IoTHubDeviceClient as AioHubClient
from azure.iot.device.aio import ProvisioningDeviceClient as AioProvisioningClient
from azure.iot.device.exceptions import ClientError, ConnectionFailedError, CredentialError

from client_app.cloud.info import ConnectionInfo
from client_app.device.provisioning import release_client
from tests.fixtures.cloud import DeviceFiles
from tests.fixtures.polling import wait_for as shared_wait_for

# paho 1.6.1 inside the SDK leaves sockets unclosed after refusals and drops (the SDK never closes a failed
# provisioning connection, and abandons the old socket pair on reconnect): the client's garbage, not ours.
PAHO_SOCKET_LEAKS = pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <(socket\.socket|ssl\.SSLSocket):pytest.PytestUnraisableExceptionWarning"
)


def _common(info: ConnectionInfo) -> dict[str, Any]:
    return {
        "server_verification_cert": Path(info.server_ca_pem).read_text(),
        "proxy_options": ProxyOptions("HTTP", info.proxy_host, info.proxy_port),
    }


def _x509(files: DeviceFiles) -> X509:
    return X509(str(files.cert_file), str(files.key_file), files.pass_phrase)


def provisioning_client(info: ConnectionInfo, files: DeviceFiles, *, aio: bool = False, **kwargs: Any) -> Any:
    cls = AioProvisioningClient if aio else ProvisioningDeviceClient
    return cls.create_from_x509_certificate(
        provisioning_host=info.provisioning_host,
        registration_id=files.registration_id,
        id_scope=info.id_scope,
        x509=_x509(files),
        **_common(info),
        **kwargs,
    )


def register(info: ConnectionInfo, files: DeviceFiles) -> Any:
    return provisioning_client(info, files).register()


def hub_client(info: ConnectionInfo, files: DeviceFiles, hostname: str | None = None, *, aio: bool = False,
               **kwargs: Any) -> Any:  # fmt: skip
    cls = AioHubClient if aio else IoTHubDeviceClient
    return cls.create_from_x509_certificate(
        x509=_x509(files),
        hostname=hostname or info.hub_hostname,
        device_id=files.registration_id,
        **_common(info),
        **kwargs,
    )


def wait_for(condition: Callable[[], Any], timeout: float = 15, what: str = "condition") -> Any:
    """The shared poll with the cloud tests' bound: the cloud's own answers come quickly."""
    return shared_wait_for(condition, timeout, what)


def dps_refusal(info: ConnectionInfo, files: DeviceFiles, registration_id: str | None = None) -> str:
    """Register and expect a refusal; returns the SDK's cause text (e.g. '... status code 401')."""
    if registration_id is not None:
        files = DeviceFiles(registration_id, files.cert_file, files.key_file, files.pass_phrase)
    client = provisioning_client(info, files)
    try:
        result = client.register()
    except (ClientError, ConnectionFailedError, CredentialError) as exc:
        return f"{type(exc).__name__}: {exc} / {exc.__cause__!r}"
    finally:  # a refused client stays connected; dropped unshut, paho's thread calls into its dead transport
        release_client(client)
    raise AssertionError(f"registration of {files.registration_id} was accepted: {result}")


class RawDevice:
    """paho-mqtt 1.x client for the hub, through the proxy front: to send what the SDK never would."""

    def __init__(self, info: ConnectionInfo, files: DeviceFiles, username: str | None = None, *,
                 clean_session: bool = False, will: tuple[str, bytes] | None = None) -> None:  # fmt: skip
        context = ssl.create_default_context(cadata=Path(info.server_ca_pem).read_text())
        context.load_cert_chain(files.cert_file, files.key_file, files.pass_phrase)
        self.client = mqtt.Client(
            client_id=files.registration_id, clean_session=clean_session, protocol=mqtt.MQTTv311
        )
        hub_user = f"{info.hub_hostname}/{files.registration_id}/?api-version=2019-10-01"
        self.client.username_pw_set(username or hub_user)
        if will is not None:
            self.client.will_set(*will, qos=1)
        self.client.tls_set_context(context)
        self.client.proxy_set(proxy_type=socks.HTTP, proxy_addr=info.proxy_host, proxy_port=info.proxy_port)
        self.connack: int | None = None
        self.disconnected = threading.Event()
        self.messages: list[tuple[str, bytes]] = []
        self.acked: set[int] = set()
        self.session_present: bool | None = None
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        self.client.on_publish = lambda c, u, mid: self.acked.add(mid)
        self.hostname = info.hub_hostname

    def _on_connect(self, client: Any, userdata: Any, flags: dict[str, int], rc: int) -> None:
        self.session_present = bool(flags.get("session present"))
        self.connack = rc

    def _on_disconnect(self, client: Any, userdata: Any, rc: int) -> None:
        client.disconnect()  # no automatic reconnect: paho would wait a second, then dial again
        self.disconnected.set()

    def __enter__(self) -> RawDevice:
        self.client.connect(self.hostname, 8883, keepalive=30)
        self.client.loop_start()
        wait_for(lambda: self.connack is not None, what="CONNACK")
        return self

    def publish(self, topic: str, payload: bytes | str) -> int:
        return self.client.publish(topic, payload, qos=1).mid

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()
