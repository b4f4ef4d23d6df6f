"""Every refusal, through the real SDK where the SDK can express it (raw paho-mqtt where it cannot)."""

from __future__ import annotations

import json
import socket
import ssl
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from azure.core.exceptions import HttpResponseError
from azure.iot.device import Message
from azure.iot.device.exceptions import CredentialError
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from client_app.cloud.amqp.operator import OperatorError
from client_app.cloud.mqtt import packets as p
from client_app.cloud.service.client import ServiceError
from client_app.pki import CertificateAuthority, KeyType, certificate_to_pem, generate_key
from tests.cloud.mqtt.conftest import RawClient
from tests.cloud.sdk import PAHO_SOCKET_LEAKS, RawDevice, dps_refusal, hub_client, register, wait_for
from tests.fixtures.cloud import (
    DeviceFiles,
    enroll_root,
    issue_device_files,
    local_only_api,
    write_device_files,
)

pytestmark = PAHO_SOCKET_LEAKS


def custom_leaf(ca: CertificateAuthority, cn: str, directory: Path, *, is_ca: bool = False,
                expired: bool = False) -> DeviceFiles:  # fmt: skip
    """Leaves the PKI library refuses to make: CA:TRUE, expired, or a CN that breaks DPS's ID rules."""
    key = generate_key(KeyType.EC_P256)
    now = datetime.now(UTC)
    not_after = now - timedelta(days=1) if expired else now + timedelta(days=30)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=10))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .sign(ca.key, ca.certificate.signature_hash_algorithm)
    )
    return write_device_files(cn, [cert, ca.certificate, *ca.chain[:-1]], key, directory)


def _devices(api: Any) -> list[str]:
    return [d["deviceId"] for d in api.devices()]


def test_chain_refusals_at_dps(local_cloud, cloud_api, enrolled_ca, tmp_path):
    info = local_cloud.info
    # An uploaded but unverified CA: TLS accepts it (trust is a superset), DPS answers 401.
    unverified = CertificateAuthority.root("unverified Root")
    cloud_api.certificates.upload("unverified", certificate_to_pem(unverified.certificate))
    assert "401" in dps_refusal(info, issue_device_files(unverified, "unverified-01", tmp_path))
    # Registration ID differs from the certificate CN.
    assert "401" in dps_refusal(
        info, issue_device_files(enrolled_ca.issuing, "real-01", tmp_path), "other-01"
    )
    # A CA:TRUE leaf from a root without a path length limit.
    assert "401" in dps_refusal(info, custom_leaf(enrolled_ca.root, "ca-leaf-01", tmp_path, is_ca=True))
    # A CN that breaks DPS's registration ID rules.
    assert "400" in dps_refusal(info, custom_leaf(enrolled_ca.issuing, "bad!id", tmp_path))
    # Refused in the TLS handshake: a root nobody uploaded, an expired leaf.
    foreign = CertificateAuthority.root("foreign Root")
    for files in (
        issue_device_files(foreign, "foreign-01", tmp_path),
        custom_leaf(enrolled_ca.issuing, "expired-01", tmp_path, expired=True),
    ):
        assert "ConnectionFailedError" in dps_refusal(info, files)
    assert _devices(cloud_api) == []
    # ... and the cloud keeps serving everyone else.
    assert register(info, issue_device_files(enrolled_ca.issuing, "good-01", tmp_path)).status == "assigned"


def test_group_disable_and_device_block(local_cloud, cloud_api, enrolled_ca, tmp_path):
    info = local_cloud.info
    blocked = issue_device_files(enrolled_ca.issuing, "blocked-01", tmp_path)
    other = issue_device_files(enrolled_ca.issuing, "other-01", tmp_path)
    cloud_api.set_group_status("test-group", False)
    assert "invalid registration status" in dps_refusal(info, other)
    cloud_api.set_group_status("test-group", True)
    cloud_api.put_enrollment("blocked-01", enabled=False)
    assert "invalid registration status" in dps_refusal(info, blocked)
    assert register(info, other).status == "assigned"
    cloud_api.delete_enrollment("blocked-01")  # unblocked: falls back to the group
    assert register(info, blocked).status == "assigned"


def test_hub_refuses_disabled_device_and_unknown_certificate(local_cloud, cloud_api, enrolled_ca, tmp_path):
    info = local_cloud.info
    files = issue_device_files(enrolled_ca.issuing, "hub-01", tmp_path / "a")
    register(info, files)
    # The SDK's disconnect raises NoConnectionError while it reconnects, or before it has read the drop: no
    # automatic reconnect here, and the shutdown waits until the SDK has seen the drop.
    client = hub_client(info, files, connection_retry=False)
    try:
        client.connect()
        cloud_api.set_device_status("hub-01", False)
        wait_for(lambda: cloud_api.device("hub-01")["connectionState"] == "Disconnected",
                 what="disabled device dropped")  # fmt: skip
        wait_for(lambda: not client.connected, what="the SDK saw the drop")
    finally:
        client.shutdown()
    for candidate in (files, issue_device_files(enrolled_ca.issuing, "hub-01", tmp_path / "b")):
        if candidate is not files:  # a renewed certificate that was never registered: wrong thumbprint
            cloud_api.set_device_status("hub-01", True)
        client = hub_client(info, candidate)
        try:
            with pytest.raises(CredentialError):
                client.connect()
        finally:
            client.shutdown()


def test_limits_and_methods(local_cloud, cloud_api, enrolled_ca, tmp_path):
    info = local_cloud.info
    files = issue_device_files(enrolled_ca.issuing, "lim-01", tmp_path)
    register(info, files)
    register(info, issue_device_files(enrolled_ca.issuing, "lim-02", tmp_path))
    # C2D over AMQP: IoT Hub's 413001 and 403004 arrive as the AMQP conditions the SDKs translate.
    with pytest.raises(OperatorError, match="amqp:link:message-size-exceeded"):
        cloud_api.send_c2d("lim-01", "x" * (64 * 1024 + 1))
    # 30 KB of properties, 90 KB once percent-encoded: counted as sent, so it cannot block the queue.
    with pytest.raises(OperatorError, match="amqp:link:message-size-exceeded"):
        cloud_api.send_c2d("lim-01", "x", properties={"path": "/" * 30_000})
    with pytest.raises(HttpResponseError) as huge:
        cloud_api.certificates.upload("huge", b"x" * (2 << 20))
    assert huge.value.status_code == 413  # refused before it is parsed
    for i in range(50):
        cloud_api.send_c2d("lim-01", str(i))
    with pytest.raises(OperatorError, match="amqp:resource-limit-exceeded"):
        cloud_api.send_c2d("lim-01", "51")
    short = cloud_api.send_c2d("lim-02", "x", ttl_seconds=0.1)
    wait_for(lambda: cloud_api.device("lim-02")["cloudToDeviceMessageCount"] == 0,
             what=f"expiry of {short}")  # fmt: skip
    with pytest.raises(ServiceError) as offline:
        cloud_api.invoke("lim-01", "x")
    assert (offline.value.status, offline.value.code) == (404, 404103)

    client = hub_client(info, files)
    try:
        client.on_method_request_received = lambda request: None  # never answers
        with pytest.raises(ServiceError) as late:
            cloud_api.invoke("lim-01", "x", timeout=5)  # Azure's shortest method timeout
        assert (late.value.status, late.value.code) == (504, 504101)
        with pytest.raises(ValueError):  # the SDK itself refuses > 256 KB
            client.send_message(Message("x" * (256 * 1024 + 1)))
    finally:
        client.shutdown()


def test_protocol_misuse_is_refused_and_closed(local_cloud, cloud_api, enrolled_ca, tmp_path):
    info = local_cloud.info
    files = issue_device_files(enrolled_ca.issuing, "raw-01", tmp_path)
    register(info, files)
    register(info, issue_device_files(enrolled_ca.issuing, "victim-01", tmp_path))
    bad_publishes = [
        "devices/victim-01/messages/events/",  # another device's topic
        "devices/raw-01/unknown",  # unknown topic
        "$iothub/unknown/thing",
    ]
    for topic in bad_publishes:
        with RawDevice(info, files) as raw:
            assert raw.connack == 0
            mid = raw.publish(topic, b"{}")
            assert raw.disconnected.wait(10), topic
            assert mid not in raw.acked
    with RawDevice(info, files) as raw:  # subscription to another device's C2D
        raw.client.subscribe("devices/victim-01/messages/devicebound/#", 1)
        assert raw.disconnected.wait(10)
    with RawDevice(info, files) as raw:  # oversize telemetry: closed, nothing stored
        raw.publish("devices/raw-01/messages/events/", b"x" * (256 * 1024 + 10))
        assert raw.disconnected.wait(10)
    with RawDevice(info, files) as raw:  # invalid JSON in a reported patch: twin/res/400, connection stays
        raw.publish("$iothub/twin/PATCH/properties/reported/?$rid=7", b"{not json")
        wait_for(lambda: raw.messages, what="twin response")
        assert raw.messages[0][0] == "$iothub/twin/res/400/?$rid=7"
        mid = raw.publish("devices/raw-01/messages/events/", b"still here")
        wait_for(lambda: mid in raw.acked, what="PUBACK after a refused patch")
    with RawDevice(info, files) as raw:  # twin GET answered without a $iothub/twin/res/# subscription
        assert raw.session_present is False
        raw.client.subscribe("devices/raw-01/messages/devicebound/#", 1)
        raw.publish("$iothub/twin/GET/?$rid=g1", b" ")
        wait_for(lambda: raw.messages, what="twin GET answer")
        topic, body = raw.messages[0]
        assert topic == "$iothub/twin/res/200/?$rid=g1" and json.loads(body)["desired"]["$version"] == 1
    with RawDevice(info, files) as raw:  # the persisted session (clean_session=0)
        assert raw.session_present is True
    with RawDevice(info, files, clean_session=True) as raw:  # a clean session starts empty, is not kept
        assert raw.session_present is False
        raw.client.subscribe("devices/raw-01/messages/devicebound/#", 1)
        raw.publish("$iothub/twin/GET/?$rid=g2", b" ")  # handled in order: answered after the SUBACK
        wait_for(lambda: raw.messages, what="twin GET answer")
    with RawDevice(info, files) as raw:
        assert raw.session_present is False
    stored = cloud_api.telemetry()
    assert [m["body"] for m in stored] == ["still here"]
    with RawDevice(info, issue_device_files(enrolled_ca.issuing, "victim-01", tmp_path / "x")) as raw:
        assert raw.connack == 5  # not the registered certificate


def test_api_refusals(local_cloud, cloud_api, enrolled_ca):
    """The operator's refusals on Azure's shapes: ARM certificates (HttpResponseError), the IoT Hub and DPS
    service APIs (ServiceError with Azure's codes); and the local-only API's token and parameters."""
    with local_only_api(local_cloud.info) as local:
        schema = httpx.get(local_cloud.info.api_url + "/openapi.json").json()
        assert set(schema["paths"]) == {"/telemetry", "/consumerGroups", "/consumerGroups/{name}"}
        anonymous = httpx.get(local_cloud.info.api_url + "/telemetry")
        assert (anonymous.status_code, anonymous.json()["errorCode"]) == (401, 401001)
        past_sqlite = local.get("/telemetry", params={"after": "99999999999999999999"})
        assert past_sqlite.status_code == 400 and past_sqlite.json()["message"]

    arm = cloud_api.certificates
    for name, pem in (("x", b"garbage"), ("bad name", b"x")):
        with pytest.raises(HttpResponseError) as refused:
            arm.upload(name, pem)
        assert refused.value.status_code == 400, name
    with pytest.raises(HttpResponseError) as missing:
        arm.delete("nothing")
    assert missing.value.status_code == 404
    with pytest.raises(HttpResponseError) as garbage_proof:
        arm.verify("test-root", "x")
    assert garbage_proof.value.status_code == 400

    refusals: list[tuple[Any, int]] = [
        (lambda: cloud_api.device("nobody"), 404),
        (lambda: cloud_api.create_group("g2", "none"), 404),
        (lambda: cloud_api.put_enrollment("bad!id", enabled=True), 400),
        (lambda: cloud_api.update_twin("nobody", {"properties": {"desired": {}}}), 404),
        (lambda: cloud_api.invoke("nobody", ""), 400),
    ]
    for call, status in refusals:
        with pytest.raises(ServiceError) as refused:
            call()
        assert refused.value.status == status and refused.value.message, refused.value

    # Proof of possession: wrong CN, then right CN but signed by another key.
    other = CertificateAuthority.root("second Root")
    enroll_root(cloud_api, other, "second", group_id=None)
    arm.upload("third", certificate_to_pem(other.certificate))
    code = arm.verification_code("third").properties.verification_code
    for proof in (other.issue_verification("WRONG")[0], enrolled_ca.root.issue_verification(code)[0]):
        with pytest.raises(HttpResponseError) as refused:
            arm.verify("third", certificate_to_pem(proof).decode())
        assert refused.value.status_code == 400
    with pytest.raises(ServiceError) as unverified:
        cloud_api.create_group("g3", "third")
    assert unverified.value.status == 400


def test_dps_protocol_misuse(local_cloud, enrolled_ca, tmp_path):
    info = local_cloud.info
    files = issue_device_files(enrolled_ca.issuing, "rawdps-01", tmp_path)
    dps_user = f"{info.id_scope}/registrations/rawdps-01/api-version=2019-03-31"
    with RawDevice(info, files, username=dps_user) as raw:
        raw.client.subscribe("$dps/registrations/res/#", 1)
        raw.publish("$dps/registrations/PUT/iotdps-register/?$rid=r1", b"{broken")
        raw.publish("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=r2&operationId=nope", b" ")
        wait_for(lambda: len(raw.messages) == 2, what="two DPS answers")
        assert [topic for topic, _ in raw.messages] == [
            "$dps/registrations/res/400/?$rid=r1",
            "$dps/registrations/res/404/?$rid=r2",
        ]
        assert json.loads(raw.messages[0][1])["errorCode"] == 400001
        # Registering in a loop keeps one operation per registration ID, not one per attempt.
        for rid in ("a1", "a2"):
            raw.publish(
                f"$dps/registrations/PUT/iotdps-register/?$rid={rid}", b'{"registrationId": "rawdps-01"}'
            )
        wait_for(lambda: len(raw.messages) == 4, what="two assignments")
        first, second = (json.loads(body)["operationId"] for _, body in raw.messages[2:])
        for rid, operation_id in (("p1", first), ("p2", second)):
            raw.publish(f"$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={operation_id}",
                        b" ")  # fmt: skip
        wait_for(lambda: len(raw.messages) == 6, what="two poll answers")
        assert [topic for topic, _ in raw.messages[4:]] == [
            "$dps/registrations/res/404/?$rid=p1",
            "$dps/registrations/res/200/?$rid=p2",
        ]
        raw.publish("$dps/registrations/DELETE/whatever/?$rid=r3", b"{}")
        assert raw.disconnected.wait(10)
    wrong_scope = "0neWRONG/registrations/rawdps-01/api-version=2019-03-31"
    for username, code in ((wrong_scope, 5), ("garbage", 2), ("0ne/registrations/other/api-version=1", 2)):
        with RawDevice(info, files, username=username) as raw:
            assert raw.connack == code, username


def _raw_hub_socket(info: Any, files: DeviceFiles) -> ssl.SSLSocket:
    """A TLS socket to the hub through the proxy front, for a client that does not read."""
    sock = socket.create_connection((info.proxy_host, info.proxy_port), timeout=5)
    sock.sendall(f"CONNECT {info.hub_hostname}:8883 HTTP/1.1\r\n\r\n".encode())
    assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    context = ssl.create_default_context(cadata=Path(info.server_ca_pem).read_text())
    context.load_cert_chain(files.cert_file, files.key_file, files.pass_phrase)
    return context.wrap_socket(sock, server_hostname=info.hub_hostname)


def test_requests_without_reading_answers_are_held_back(local_cloud, enrolled_ca, tmp_path):
    info = local_cloud.info
    files = issue_device_files(enrolled_ca.issuing, "greedy-01", tmp_path)
    register(info, files)
    client = RawClient(_raw_hub_socket(info, files))
    try:
        username = f"{info.hub_hostname}/greedy-01/?api-version=2019-10-01"
        assert client.connect("greedy-01", username=username) == p.Connack(0, False)
        big = json.dumps({f"big{i}": "x" * 4000 for i in range(7)}).encode()  # strings: 4 KB at most
        client.send(p.Publish("$iothub/twin/PATCH/properties/reported/?$rid=r", big, 0, None))
        assert client.receive().topic.startswith("$iothub/twin/res/204/")
        rss = psutil.Process().memory_info().rss
        for i in range(3000):  # 100 KB of requests asking for 84 MB of answers, none of them read
            client.send(p.Publish(f"$iothub/twin/GET/?$rid={i}", b"", 0, None))
        time.sleep(1)  # what the server would buffer, it buffers within this second (90 MB before the fix)
        assert psutil.Process().memory_info().rss - rss < 40 * 1024 * 1024  # TCP back-pressure, no buffering
        assert client.receive().topic == "$iothub/twin/res/200/?$rid=0"  # and it is still served
    finally:
        client.close()
