"""Issue 14 items 5, 8 and 10 on both HTTP servers: requests that never finish are cut off, bad input is a
4xx (never a 500, nothing before authentication raises), and names follow Azure's rules."""

from __future__ import annotations

import socket
import ssl
import time

import pytest

from client_app.cloud.server import CloudSettings, start_in_thread
from client_app.cloud.service import http_server
from client_app.pki import CertificateAuthority, certificate_to_pem


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """True once the server closes the connection (EOF or reset) within `seconds`."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except (ConnectionResetError, ssl.SSLError):
        pass
    return True


def test_unfinished_requests_are_closed(tmp_path, monkeypatch):
    monkeypatch.setattr(http_server.DeadlineH11Protocol, "request_timeout", 0.5)
    with start_in_thread(CloudSettings(data_dir=tmp_path / "cloud")) as cloud:
        host, port = cloud.info.api_url.removeprefix("http://").rsplit(":", 1)
        silent = socket.create_connection((host, int(port)))  # connects, never sends a byte
        head = socket.create_connection((host, int(port)))
        head.sendall(b"GET /devices HTTP/1.1\r\nHost: x\r\n")  # an unfinished head, then a trickle
        body = socket.create_connection((host, int(port)))
        body.sendall(b"PUT /devices/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")  # body never ends
        start = time.monotonic()
        head.sendall(b"X-Slow: 1\r\n")
        for sock in (silent, head, body):
            assert _closed_within(sock, 5), "an unfinished request kept its connection"
            sock.close()
        assert time.monotonic() - start < 5
        tls = ssl.create_default_context(cafile=cloud.info.server_ca_pem)
        service = tls.wrap_socket(socket.create_connection((cloud.info.service_host, 443)),
                                  server_hostname=cloud.info.service_host)  # fmt: skip
        assert _closed_within(service, 5)  # the HTTPS service API too
        service.close()


def test_bad_input_is_4xx_before_and_after_authentication(local_cloud, cloud_api):
    url = cloud_api.base_url
    for header in ("Bearer é-not-ascii".encode(), "Bearer \xff\xfe".encode("latin-1"), b"Basic abc"):
        response = cloud_api.get("/devices", headers={"Authorization": header})
        assert response.status_code == 401, (header, response.text)
    assert str(url).startswith("http://127.")
    for c2d in (
        b'{"body": "\\ud800"}',
        b'{"body": "x", "messageId": "\\udfff"}',
        b'{"body": "x", "properties": {"k": "\\ud800"}}',
        b'{"body": "x", "properties": {"\\ud800": "v"}}',
    ):
        response = cloud_api.post("/devices/nobody/messages/deviceBound", content=c2d,
                                  headers={"Content-Type": "application/json"})  # fmt: skip
        assert response.status_code == 400, (c2d, response.text)


@pytest.mark.parametrize("name", ["..", ".", "a.", ".hidden", "x" * 129, "sp ace", "é"])
def test_certificate_names_follow_azures_rules(cloud_api, name):
    pem = certificate_to_pem(CertificateAuthority.root("names Root").certificate).decode()
    response = cloud_api.put(f"/certificates/{name}", json={"certificate": pem})
    assert response.status_code in (400, 404, 405), response.text
    assert cloud_api.call("GET", "/certificates")["value"] == []  # nothing counted toward the limit


def test_deep_initial_twin_is_refused_before_it_is_stored(cloud_api, enrolled_ca):
    deep: dict = {}
    for _ in range(300):
        deep = {"d": deep}
    group = cloud_api.call("GET", f"/enrollmentGroups/{enrolled_ca.group_id}")
    body = {"attestation": group["attestation"], "initialTwin": {"properties": {"desired": deep}}}
    response = cloud_api.put(f"/enrollmentGroups/{enrolled_ca.group_id}", json=body)
    assert response.status_code == 400, response.text
    assert len(cloud_api.call("GET", "/enrollmentGroups")["value"]) == 1  # the list still reads
    assert cloud_api.call("GET", f"/enrollmentGroups/{enrolled_ca.group_id}")["initialTwin"] == {}


def test_concurrency_cap_answers_503(tmp_path, monkeypatch):
    monkeypatch.setattr(http_server, "MAX_CONCURRENCY", 3)
    with start_in_thread(CloudSettings(data_dir=tmp_path / "cloud")) as cloud:
        host, port = cloud.info.api_url.removeprefix("http://").rsplit(":", 1)
        idle = [socket.create_connection((host, int(port))) for _ in range(3)]
        try:
            with socket.create_connection((host, int(port))) as extra:
                extra.sendall(b"GET /telemetry HTTP/1.1\r\nHost: x\r\n\r\n")
                extra.settimeout(5)
                assert extra.recv(4096).startswith(b"HTTP/1.1 503")
        finally:
            for sock in idle:
                sock.close()
