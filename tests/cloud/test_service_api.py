"""Azure's Python service SDK (azure-iot-hub IoTHubRegistryManager) against the local cloud's service API,
pointed at it only by the connection string in connection.json and REQUESTS_CA_BUNDLE; plus every refusal
the API promises, checked on the wire with Azure's error bodies."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from azure.iot.device import MethodResponse
from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import CloudToDeviceMethod, QuerySpecification, Twin, TwinProperties
from msrest.exceptions import HttpOperationError

from client_app.cloud.sas import generate_token
from client_app.cloud.server import RunningCloud
from client_app.pki import CertificateAuthority
from tests.cloud.sdk import hub_client, register, wait_for
from tests.fixtures.cloud import enroll_root, issue_device_files


@pytest.fixture
def registry(local_cloud: RunningCloud, monkeypatch: pytest.MonkeyPatch) -> Iterator[IoTHubRegistryManager]:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", local_cloud.info.server_ca_pem)
    manager = IoTHubRegistryManager.from_connection_string(local_cloud.info.iothub_connection_string)
    yield manager
    manager.amqp_svc_client.disconnect_sync()


def _service(
    cloud: RunningCloud, policy: str = "iothubowner", *, dps: bool = False, **token: Any
) -> httpx.Client:
    policies = cloud.cloud.dps_policies if dps else cloud.cloud.hub_policies
    sas = generate_token(cloud.info.service_host, policies[policy].primary_key, policy, **token)
    return httpx.Client(
        base_url=f"https://{cloud.info.service_host}",
        verify=ssl.create_default_context(cafile=cloud.info.server_ca_pem),
        headers={"Authorization": sas},
        params={"api-version": "2021-10-01" if dps else "2021-04-12"},
    )


def _hub_error(response: httpx.Response) -> tuple[int, str, int]:
    body = response.json()
    name = body["Message"].split(";", 1)[0].removeprefix("ErrorCode:")
    assert body["ExceptionMessage"].startswith("Tracking ID:")
    assert response.headers["iothub-errorcode"] == name
    return response.status_code, name, body["errorCode"]


def test_connection_json_carries_the_service_endpoint(local_cloud):
    info = local_cloud.info
    assert info.iothub_connection_string.startswith(
        f"HostName={info.service_host};SharedAccessKeyName=iothubowner;"
    )
    assert info.dps_connection_string.startswith(
        f"HostName={info.service_host};SharedAccessKeyName=provisioningserviceowner;"
    )
    assert info.service_host.startswith("127.")  # an address: nothing goes to the system resolver


def test_registry_manager_drives_a_real_device(local_cloud, cloud_api, enrolled_ca, registry, tmp_path):
    files = issue_device_files(enrolled_ca.issuing, "svc-01", tmp_path)
    register(local_cloud.info, files)
    patches: list[dict[str, Any]] = []
    client = hub_client(local_cloud.info, files)
    try:
        client.on_twin_desired_properties_patch_received = patches.append
        client.on_method_request_received = lambda request: client.send_method_response(
            MethodResponse.create_from_method_request(request, 200, {"echo": request.payload})
        )
        client.patch_twin_reported_properties({"appVersion": "1.2.3"})

        device = registry.get_device("svc-01")
        assert (device.device_id, device.status, device.connection_state) == (
            "svc-01",
            "enabled",
            "Connected",
        )
        assert [d.device_id for d in registry.get_devices()] == ["svc-01"]

        twin = registry.get_twin("svc-01")
        assert twin.properties.reported["appVersion"] == "1.2.3"
        patch = Twin(tags={"ring": "beta"}, properties=TwinProperties(desired={"interval": 30}))
        updated = registry.update_twin("svc-01", patch, twin.etag)
        assert updated.tags == {"ring": "beta"} and updated.properties.desired["interval"] == 30
        assert updated.etag != twin.etag
        pushed = wait_for(lambda: next((p for p in patches if "interval" in p), None), what="desired patch")
        assert pushed["interval"] == 30

        query = "SELECT * FROM devices WHERE properties.reported.appVersion = '1.2.3' AND tags.ring = 'beta'"
        result = registry.query_iot_hub(QuerySpecification(query=query))
        assert [t.device_id for t in result.items] == ["svc-01"] and result.type == "twin"
        none = registry.query_iot_hub(
            QuerySpecification(query="SELECT * FROM devices WHERE tags.ring = 'ga'")
        )
        assert none.items == []

        answer = registry.invoke_device_method(
            "svc-01",
            CloudToDeviceMethod(method_name="ping", payload={"n": 1}, response_timeout_in_seconds=10),
        )
        assert (answer.status, answer.payload) == (200, {"echo": {"n": 1}})
    finally:
        client.shutdown()
    wait_for(lambda: registry.get_device("svc-01").connection_state == "Disconnected", what="disconnect")

    for text in ("one", "two"):  # queued for the offline device (C2D send is AMQP, as in Azure)
        cloud_api.send_c2d("svc-01", text)
    # IoTHubRegistryManager has no purge method: its generated REST client (the same SDK) has.
    purged = registry.protocol.cloud_to_device_messages.purge_cloud_to_device_message_queue("svc-01")
    assert purged.total_messages_purged == 2
    assert registry.get_device("svc-01").cloud_to_device_message_count == 0

    stats = registry.get_device_registry_statistics()
    assert (stats.total_device_count, stats.enabled_device_count) == (1, 1)
    with pytest.raises(HttpOperationError) as offline:
        registry.invoke_device_method("svc-01", CloudToDeviceMethod(method_name="ping", payload=None))
    assert _hub_error(offline.value.response) == (404, "DeviceNotOnline", 404103)


def test_identities_create_update_delete_with_etags(local_cloud, registry):
    created = registry.create_device_with_x509("made-here", "AB" * 32, "CD" * 32, "enabled")
    assert created.authentication.x509_thumbprint.primary_thumbprint == "ab" * 32
    with pytest.raises(HttpOperationError) as exists:  # create refuses an existing ID; replacing is explicit
        registry.create_device_with_x509("made-here", "AB" * 32, "CD" * 32, "enabled")
    assert _hub_error(exists.value.response) == (409, "DeviceAlreadyExists", 409001)
    with pytest.raises(HttpOperationError) as stale:
        registry.update_device_with_x509("made-here", '"not-the-etag"', "AB" * 32, "CD" * 32, "disabled")
    assert _hub_error(stale.value.response) == (412, "PreconditionFailed", 412002)
    updated = registry.update_device_with_x509("made-here", created.etag, "AB" * 32, "CD" * 32, "disabled")
    assert updated.status == "disabled"
    registry.delete_device("made-here")
    with pytest.raises(HttpOperationError) as gone:
        registry.get_device("made-here")
    assert _hub_error(gone.value.response) == (404, "DeviceNotFound", 404001)


def test_query_pages_projects_and_counts(local_cloud, registry):
    for n in range(5):
        registry.create_device_with_x509(
            f"q-{n}", f"{n:02x}" * 32, f"{n:02x}" * 32, "disabled" if n else "enabled"
        )
        registry.update_twin(f"q-{n}", Twin(tags={"n": n, "even": n % 2 == 0}), "*")
    seen, token = [], None
    while True:
        page = registry.query_iot_hub(QuerySpecification(query="SELECT * FROM devices"), token, 2)
        seen.append([t.device_id for t in page.items])
        token = page.continuation_token
        if not token:
            break
    assert seen == [["q-0", "q-1"], ["q-2", "q-3"], ["q-4"]]

    with _service(local_cloud) as http:

        def query(text: str) -> Any:
            response = http.post("/devices/query", json={"query": text})
            assert response.status_code == 200, response.text
            return response.json()

        assert query("SELECT deviceId, tags.n FROM devices WHERE tags.n >= 3") == [
            {"deviceId": "q-3", "n": 3}, {"deviceId": "q-4", "n": 4}
        ]  # fmt: skip
        assert query("SELECT COUNT() AS total FROM devices WHERE status = 'disabled'") == [{"total": 4}]
        groups = query("SELECT tags.even AS even, COUNT() AS n FROM devices GROUP BY tags.even")
        assert sorted(groups, key=lambda r: r["even"]) == [{"even": False, "n": 2}, {"even": True, "n": 3}]
        assert [r["deviceId"] for r in query(
            "SELECT * FROM devices WHERE NOT (tags.n < 4) OR (IS_DEFINED(tags.missing) AND tags.n = 0)"
        )] == ["q-4"]  # fmt: skip
        assert query("SELECT * FROM devices WHERE connectionState = 'Connected'") == []


def test_refusals_with_azures_codes(local_cloud, registry):
    registry.create_device_with_x509("r-1", "AB" * 32, "CD" * 32, "enabled")
    host = local_cloud.info.service_host
    with _service(local_cloud) as http:
        # Authentication and rights: each a 401 with IoT Hub's body.
        owner_key = local_cloud.cloud.hub_policies["iothubowner"].primary_key
        other_key = local_cloud.cloud.hub_policies["service"].primary_key
        for header in (
            None,
            generate_token(host, other_key, "iothubowner"),  # signed with another policy's key
            generate_token(host, owner_key, "iothubowner", ttl=-10),  # expired
            generate_token("127.9.9.9", owner_key, "iothubowner"),  # for another hub
            generate_token(host, owner_key, "nosuchpolicy"),
            "Bearer abc",
        ):
            headers = {"Authorization": header} if header else {}
            response = http.get("/devices/r-1", headers=headers or {"Authorization": ""})
            assert _hub_error(response) == (401, "IotHubUnauthorizedAccess", 401003), header
        raw = httpx.Request(
            "GET", f"https://{host}/devices/r-1", headers={"Authorization": "SharedAccess é".encode()}
        )
        assert http.send(raw).status_code == 401  # a non-ASCII header is refused, never a 500
    with _service(local_cloud, "registryRead") as read_only:
        assert read_only.get("/devices/r-1").status_code == 200
        assert _hub_error(read_only.delete("/devices/r-1"))[0] == 401  # lacks RegistryWrite
        assert _hub_error(read_only.post("/twins/r-1/methods", json={"methodName": "m"}))[0] == 401
    with _service(local_cloud, "service") as service_only:
        assert _hub_error(service_only.get("/devices/r-1"))[0] == 401  # lacks RegistryRead
        assert service_only.get("/twins/r-1").status_code == 200

    with _service(local_cloud) as http:
        assert _hub_error(http.get("/twins/nobody")) == (404, "DeviceNotFound", 404001)
        stale = http.patch("/twins/r-1", json={"tags": {"a": 1}}, headers={"If-Match": '"stale"'})
        assert _hub_error(stale) == (412, "PreconditionFailed", 412002)
        for bad in ("SELECT FROM devices", "SELECT * FROM devices WHERE", "SELECT * FROM jobs",
                    "SELECT * FROM devices WHERE tags.a === 1", "x" * 9000):  # fmt: skip
            assert _hub_error(http.post("/devices/query", json={"query": bad}))[:2] == (
                400,
                "ArgumentInvalid",
            )
        assert _hub_error(http.post("/devices/query", content=b"{not json"))[0] == 400
        surrogate = b'{"tags": {"name": "\\ud800"}}'
        assert _hub_error(http.patch("/twins/r-1", content=surrogate))[0] == 400
        deep = {"tags": {"a": json.loads("[" * 300 + "]" * 300)}}
        assert _hub_error(http.patch("/twins/r-1", json=deep))[0] == 400
        assert http.get("/twins/r-1").status_code == 200  # nothing of the refused patches was stored
        oversize = http.patch("/twins/r-1", content=b'{"tags": {"a": "' + b"x" * (2 * 1024 * 1024) + b'"}}')
        assert _hub_error(oversize) == (413, "MessageTooLarge", 413001)
        big_tags = http.patch(
            "/twins/r-1", json={"tags": {"a": "x" * 4000, "b": "y" * 4000, "c": "z" * 4000}}
        )
        assert _hub_error(big_tags)[0] in (400, 413)
        method = http.post("/twins/r-1/methods", json={"methodName": "m", "responseTimeoutInSeconds": 1})
        assert _hub_error(method) == (400, "ArgumentInvalid", 400004)  # Azure's minimum is 5 s
        offline = http.post("/twins/r-1/methods", json={"methodName": "m", "connectTimeoutInSeconds": 1})
        assert _hub_error(offline) == (404, "DeviceNotOnline", 404103)
        assert http.put("/devices/bad%2Fid", json={}).status_code in (400, 404)
    assert registry.get_twin("r-1").tags == {}


def test_method_timeout_is_504101(local_cloud, enrolled_ca, registry, tmp_path):
    files = issue_device_files(enrolled_ca.issuing, "slow-01", tmp_path)
    register(local_cloud.info, files)
    client = hub_client(local_cloud.info, files)
    try:
        client.on_method_request_received = lambda request: time.sleep(7)  # never answers in time
        wait_for(lambda: local_cloud.cloud.hub.listening_for_methods("slow-01"), what="method subscription")
        with pytest.raises(HttpOperationError) as late:
            registry.invoke_device_method(
                "slow-01", CloudToDeviceMethod(method_name="slow", response_timeout_in_seconds=5)
            )
        assert _hub_error(late.value.response) == (504, "GatewayTimeout", 504101)
    finally:
        client.shutdown()


def test_dps_service_routes(local_cloud, enrolled_ca, tmp_path):
    files = issue_device_files(enrolled_ca.issuing, "dps-01", tmp_path)
    register(local_cloud.info, files)
    with _service(local_cloud, "provisioningserviceowner", dps=True) as dps:
        group = dps.get(f"/enrollmentGroups/{enrolled_ca.group_id}").json()
        assert group["attestation"]["x509"]["caReferences"]["primary"] == enrolled_ca.ca_name
        again = dps.put(f"/enrollmentGroups/{enrolled_ca.group_id}", json=group | {"etag": None})
        assert (again.status_code, again.json()["errorCode"]) == (
            409,
            409001,
        )  # create refuses an existing ID
        disabled = dps.put(
            f"/enrollmentGroups/{enrolled_ca.group_id}",
            json=group | {"provisioningStatus": "disabled"},
            headers={"If-Match": group["etag"]},
        )
        assert disabled.json()["provisioningStatus"] == "disabled"
        stale = dps.put(
            f"/enrollmentGroups/{enrolled_ca.group_id}", json=group, headers={"If-Match": group["etag"]}
        )
        assert (stale.status_code, stale.json()["errorCode"]) == (412, 412001)
        assert [
            g["enrollmentGroupId"] for g in dps.post("/enrollmentGroups/query", json={"query": "*"}).json()
        ] == [enrolled_ca.group_id]
        states = dps.post(f"/registrations/{enrolled_ca.group_id}/query", json={})
        assert [s["registrationId"] for s in states.json()] == ["dps-01"]
        assert states.headers["x-ms-item-type"] == "deviceRegistration"
        enrollment = {
            "registrationId": "dps-02",
            "attestation": {"type": "x509"},
            "provisioningStatus": "disabled",
        }
        individual = dps.put("/enrollments/dps-02", json=enrollment)
        assert individual.json()["provisioningStatus"] == "disabled"
        missing = dps.get("/registrations/nobody")
        assert set(missing.json()) == {"errorCode", "trackingId", "message", "timestampUtc"}
        assert missing.json()["errorCode"] == 404202
    with _service(local_cloud, "enrollmentread", dps=True) as read_only:
        assert read_only.get(f"/enrollmentGroups/{enrolled_ca.group_id}").status_code == 200
        assert read_only.delete("/enrollments/dps-02").status_code == 401
    with _service(local_cloud, "iothubowner") as hub_token:  # a hub policy is no DPS policy
        assert hub_token.get(f"/enrollmentGroups/{enrolled_ca.group_id}").status_code == 401


def test_concurrent_creates_of_one_name_one_wins(local_cloud, cloud_api, enrolled_ca):
    """Issue 14 item 9: 8 concurrent creates of one group and of one device: exactly one succeeds."""
    from concurrent.futures import ThreadPoolExecutor

    other = CertificateAuthority.root("race Root")
    enroll_root(cloud_api, other, "race-root", group_id=None)
    group = {"attestation": {"type": "x509", "x509": {"caReferences": {"primary": "race-root"}}}}
    device = {"deviceId": "race-dev", "authentication": {"type": "selfSigned",
              "x509Thumbprint": {"primaryThumbprint": "AB" * 32}}}  # fmt: skip

    def create(kind: str) -> int:
        with _service(local_cloud, "provisioningserviceowner" if kind == "group" else "iothubowner",
                      dps=kind == "group") as http:  # fmt: skip
            if kind == "group":
                return http.put("/enrollmentGroups/race-group", json=group).status_code
            return http.put("/devices/race-dev", json=device).status_code

    for kind in ("group", "device"):
        with ThreadPoolExecutor(8) as pool:
            statuses = sorted(pool.map(create, [kind] * 8))
        assert statuses == [200] + [409] * 7, (kind, statuses)
