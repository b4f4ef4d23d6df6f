"""Azure's published Node.js service SDKs (tests/node, installed by `npm ci --prefix tests/node`) against the
local cloud: azure-iothub's Registry and Client.invokeDeviceMethod, azure-iot-provisioning-service's groups,
individual enrollments and registration queries. Pointed at the cloud only by connection strings and
NODE_EXTRA_CA_CERTS; Node dials port 443 (it keeps no port from a host name), which the cloud listens on."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest
from azure.iot.device import MethodResponse

from client_app.cloud.server import RunningCloud
from client_app.pki import CertificateAuthority, certificate_to_pem, sha1_thumbprint, sha256_thumbprint
from tests.cloud.sdk import hub_client, register, wait_for
from tests.fixtures.cloud import enroll_root, issue_device_files
from tests.fixtures.node import NODE_DIR

pytestmark = pytest.mark.usefixtures("node_sdks")


def run_node(cloud: RunningCloud, step: str, **names: str) -> dict[str, Any]:
    env = {
        **os.environ,
        "NODE_EXTRA_CA_CERTS": cloud.info.server_ca_pem,
        "IOTHUB_CONNECTION_STRING": cloud.info.iothub_connection_string,
        "DPS_CONNECTION_STRING": cloud.info.dps_connection_string,
        **names,
    }
    done = subprocess.run(["node", "service.js", step], cwd=NODE_DIR, env=env, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_node_registry_and_direct_method(local_cloud, enrolled_ca, tmp_path):
    assert local_cloud.info.service_host and ":" not in local_cloud.info.service_host, "Node needs port 443"
    files = issue_device_files(enrolled_ca.issuing, "node-dev", tmp_path)
    register(local_cloud.info, files)
    client = hub_client(local_cloud.info, files)
    try:
        client.on_method_request_received = lambda request: client.send_method_response(
            MethodResponse.create_from_method_request(request, 200, {"got": request.payload})
        )
        wait_for(lambda: local_cloud.cloud.hub.listening_for_methods("node-dev"), what="method subscription")
        result = run_node(local_cloud, "hub", DEVICE_ID="node-dev")
    finally:
        client.shutdown()
    assert result["device"] == {"deviceId": "node-dev", "status": "enabled", "connectionState": "Connected"}
    assert result["list"] == ["node-dev"]
    assert result["tags"] == {"node": True}
    assert result["queried"] == ["node-dev"]
    assert result["method"] == {"status": 200, "payload": {"got": {"from": "node"}}}
    assert result["missing"] == {"name": "DeviceNotFoundError", "status": 404}  # parsed from Azure's body
    assert result["stale"] == {"name": "InvalidEtagError", "status": 412}


def test_node_provisioning_service(local_cloud, cloud_api, enrolled_ca, tmp_path):
    files = issue_device_files(enrolled_ca.issuing, "node-reg", tmp_path)
    register(local_cloud.info, files)
    second = CertificateAuthority.root("node Root CA")
    enroll_root(cloud_api, second, "node-root", group_id=None)
    names = {"GROUP_ID": "node-group", "CA_NAME": "node-root", "BLOCKED_ID": "node-blocked",
             "REGISTERED_GROUP_ID": enrolled_ca.group_id, "REGISTERED_ID": "node-reg"}  # fmt: skip
    result = run_node(local_cloud, "dps", **names)
    assert result["created"] == {
        "id": "node-group",
        "status": "enabled",
        "twin": {"tags": {"release": "node"}, "properties": {"desired": {"interval": 5}}},
    }
    assert result["fetchedEtag"] is True
    assert result["again"]["status"] == 409
    assert result["disabled"] == "disabled"
    assert sorted(result["groups"]) == sorted(["node-group", enrolled_ca.group_id])
    assert result["individual"] == ["disabled", "node-blocked"]
    assert result["registrations"] == [
        {"registrationId": "node-reg", "deviceId": "node-reg", "status": "assigned"}
    ]
    assert result["state"] == {"registrationId": "node-reg", "assignedHub": local_cloud.info.hub_hostname}
    blocked = issue_device_files(enrolled_ca.issuing, "node-blocked", tmp_path)
    with pytest.raises(Exception):  # noqa: B017 - the SDK's refusal type varies; the point is "refused"
        register(local_cloud.info, blocked)


def test_node_signing_certificates_group(local_cloud, cloud_api, enrolled_ca, tmp_path):
    """azure-iot-provisioning-service creates a group on a release's intermediate PEM (signingCertificates);
    DPS answers with the certificate's info, never the PEM; a real device of that release provisions through
    it (the group nearest the leaf, not the root's)."""
    release = enrolled_ca.root.intermediate("node release", path_length=0)
    cert = release.certificate
    result = run_node(
        local_cloud, "signing", GROUP_ID="node-signing", SIGNING_PEM=certificate_to_pem(cert).decode()
    )
    info = {
        "subjectName": "CN=node release",
        "sha1Thumbprint": sha1_thumbprint(cert),
        "sha256Thumbprint": sha256_thumbprint(cert),
        "issuerName": "CN=test Root CA",
        "notBeforeUtc": cert.not_valid_before_utc.isoformat().replace("+00:00", "Z"),
        "notAfterUtc": cert.not_valid_after_utc.isoformat().replace("+00:00", "Z"),
        "serialNumber": cert.serial_number.to_bytes(20, "big").lstrip(b"\0").hex().upper(),
        "version": 3,
    }
    assert result["created"] == result["fetched"] == result["queried"] == {"primary": {"info": info}}
    assert result["bad"]["status"] == 400
    assert result["bad"]["body"]["errorCode"] == 400005
    assert {"trackingId", "message", "timestampUtc"} <= result["bad"]["body"].keys()
    assert result["toggled"] == ["disabled", "enabled", info["sha256Thumbprint"]]

    files = issue_device_files(release, "node-signed", tmp_path)
    assert register(local_cloud.info, files).status == "assigned"
    assert cloud_api.registration("node-signed")["x509"]["enrollmentGroupId"] == "node-signing"
