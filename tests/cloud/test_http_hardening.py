"""Issue 14 items 5, 8 and 10 on both HTTP servers: requests that never finish are cut off, bad input is a
4xx (never a 500, nothing before authentication raises), and names follow Azure's rules."""

from __future__ import annotations

import socket
import ssl
import time

import pytest
from azure.core.exceptions import HttpResponseError

from client_app.cloud.server import CloudSettings, start_in_thread
from client_app.cloud.service import http_server
from client_app.cloud.service.client import ServiceError
from client_app.pki import CertificateAuthority, certificate_to_pem
from tests.cloud.test_service_api import _service
from tests.fixtures.cloud import local_only_api


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
        head.sendall(b"GET /telemetry HTTP/1.1\r\nHost: x\r\n")  # an unfinished head, then a trickle
        body = socket.create_connection((host, int(port)))
        body.sendall(b"PUT /consumerGroups/x HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n{")  # never ends
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


def test_bad_input_is_4xx_before_and_after_authentication(local_cloud):
    info = local_cloud.info
    assert info.api_url.startswith("http://127.")
    headers = ("Bearer é-not-ascii".encode(), "Bearer \xff\xfe".encode("latin-1"), b"Basic abc")
    with local_only_api(info) as local, _service(local_cloud) as service:
        for header in headers:
            response = local.get("/telemetry", headers={"Authorization": header})
            assert response.status_code == 401, (header, response.text)
            response = service.get("/devices", headers={"Authorization": header})
            assert response.status_code == 401, (header, response.text)
        for method, path, body in (
            ("PUT", "/devices/nobody", b'{"deviceId": "\\ud800"}'),
            ("PATCH", "/twins/nobody", b'{"tags": {"k": "\\udfff"}}'),
            ("PATCH", "/twins/nobody", b'{"tags": {"\\ud800": "v"}}'),
            ("POST", "/twins/nobody/methods", b'{"methodName": "m", "payload": "\\ud800"}'),
        ):
            response = service.request(method, path, content=body)
            assert response.status_code == 400, (path, body, response.text)


@pytest.mark.parametrize("name", ["..", ".", "a.", ".hidden", "x" * 129, "sp ace", "é"])
def test_certificate_names_follow_azures_rules(cloud_api, name):
    pem = certificate_to_pem(CertificateAuthority.root("names Root").certificate)
    with pytest.raises(HttpResponseError) as refused:
        cloud_api.certificates.upload(name, pem)
    assert refused.value.status_code in (400, 404, 405), refused.value.message
    assert cloud_api.certificates.list() == []  # nothing counted toward the limit


def test_deep_initial_twin_is_refused_before_it_is_stored(cloud_api, enrolled_ca):
    deep: dict = {}
    for _ in range(300):
        deep = {"d": deep}
    group = cloud_api.group(enrolled_ca.group_id)
    with pytest.raises(ServiceError) as refused:
        cloud_api.replace_group({**group, "initialTwin": {"properties": {"desired": deep}}})
    assert refused.value.status == 400
    assert len(cloud_api.groups()) == 1  # the list still reads
    assert cloud_api.group(enrolled_ca.group_id)["initialTwin"] == group["initialTwin"]


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
