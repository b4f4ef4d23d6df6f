"""The DPS custom allocation webhook (client_app/allocation_webhook.py): its rules, the local DPS calling a
group's webhook as Azure does, and the Azure Functions wrapper in deploy/allocation-webhook/."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from client_app import allocation_webhook as webhook
from client_app.cloud.dps.allocation import allocation_request
from client_app.cloud.service.client import ServiceError
from client_app.pki import CertificateAuthority, generate_key, load_certificates, self_certifying_id
from client_app.pki.names import registration_payload
from tests.cloud.sdk import PAHO_SOCKET_LEAKS, provisioning_client, wait_for
from tests.cloud.test_takeover import dps_answer, install, mint_takeover
from tests.fixtures.cloud import DeviceFiles, configure_group

ROOT = Path(__file__).resolve().parents[2]
HUBS = ["hub-a.azure-devices.net", "hub-b.azure-devices.net"]


def leaf_of(files: DeviceFiles) -> Any:
    return load_certificates(files.cert_file.read_bytes())[0]


def azure_request(
    presented: Any, payload_leaf: Any = None, registration_id: str | None = None
) -> dict[str, Any]:
    """An AllocationRequest as the local DPS builds it: `presented` authenticated, `payload_leaf` sent."""
    group = {"enrollmentGroupId": "g", "allocationPolicy": "custom"}
    payload = registration_payload(payload_leaf) if payload_leaf is not None else None
    rid = registration_id or str(presented.subject.rfc4514_string()).removeprefix("CN=")
    return allocation_request(group, rid, presented, payload, HUBS, None)


# ---- the rules ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def issuing() -> CertificateAuthority:
    return CertificateAuthority.root("webhook root").intermediate("webhook issuing")


def test_allows_a_self_certifying_certificate(issuing):
    key = generate_key()
    leaf = issuing.issue_device(self_certifying_id(key.public_key()), key.public_key())
    answer = webhook.decide(azure_request(leaf, leaf))
    assert answer["iotHubHostName"] in HUBS
    assert webhook.decide(azure_request(leaf, leaf)) == answer  # stable


def test_keeps_the_current_hub(issuing):
    key = generate_key()
    leaf = issuing.issue_device(self_certifying_id(key.public_key()), key.public_key())
    request = azure_request(leaf, leaf)
    for hub in HUBS:
        request["deviceRuntimeContext"]["currentIotHubHostName"] = hub
        assert webhook.decide(request)["iotHubHostName"] == hub


def test_refuses_takeover_shapes(issuing):
    victim_key, attacker_key = generate_key(), generate_key()
    victim_id = self_certifying_id(victim_key.public_key())
    victim = issuing.issue_device(victim_id, victim_key.public_key())
    takeover = issuing.issue_device(victim_id, attacker_key.public_key())
    old_style = issuing.issue_device("ca-0123456789abcdef0123", attacker_key.public_key())
    refusals = {
        "CN not the key's ID": (azure_request(takeover, takeover), "not the self-certifying ID"),
        "victim's certificate replayed": (azure_request(takeover, victim), "not the certificate the device"),
        "no payload": (azure_request(takeover), "carries no deviceCertificate"),
        "old-style id": (azure_request(old_style, old_style), "not the self-certifying ID"),
    }
    for name, (request, reason) in refusals.items():
        with pytest.raises(webhook.Refused, match=reason):
            webhook.decide(request)
        assert webhook.decide(azure_request(victim, victim)), name  # the victim's own request passes
    no_thumbprints = azure_request(victim, victim)
    no_thumbprints["deviceRuntimeContext"]["x509"] = {}  # fail closed if DPS sent no certificate details
    with pytest.raises(webhook.Refused, match="no certificate thumbprint"):
        webhook.decide(no_thumbprints)
    other_id = azure_request(victim, victim, registration_id="k1-" + "a" * 52)
    with pytest.raises(webhook.Refused, match="CN is not the registration ID"):
        webhook.decide(other_id)
    # Azure's documented (symmetric-key) example: no certificate at all.
    documented = {
        "enrollmentGroup": {"enrollmentGroupId": "contoso", "allocationPolicy": "custom"},
        "deviceRuntimeContext": {"registrationId": "breakroom499-contoso-tstrsd-007", "symmetricKey": {}},
        "linkedHubs": HUBS,
    }
    for bad in (documented, [], {"deviceRuntimeContext": {}}, {**documented, "linkedHubs": []}):
        with pytest.raises(webhook.Refused):
            webhook.decide(bad)


# ---- through the local cloud's DPS --------------------------------------------------------------


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """The ASGI app under uvicorn on 127.0.0.1, a free port; yields the base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_config=None, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="webhook", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, what="uvicorn")
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def custom_allocation(url: str) -> dict[str, Any]:
    return {
        "allocationPolicy": "custom",
        "customAllocationDefinition": {"webhookUrl": url, "apiVersion": "2021-10-01"},
        "identityPolicy": {"requireSelfCertifyingId": False, "allowKeyChange": True},  # the webhook decides
    }


def webhook_refused(answer: dict[str, Any]) -> bool:
    """The local DPS's answer to a registration its webhook refused (docs/local-cloud.md)."""
    state = answer.get("registrationState") or {}
    failed = answer.get("status") == state.get("status") == "failed"
    return answer["httpStatus"] == 200 and failed and state.get("errorCode") == 401002


def register_with(info: Any, files: DeviceFiles, payload: Any) -> Any:
    client = provisioning_client(info, files)
    client.provisioning_payload = payload
    return client.register()


@PAHO_SOCKET_LEAKS
def test_shipped_webhook_through_the_local_dps(local_cloud, cloud_api, enrolled_ca, tmp_path):
    info = local_cloud.info
    with serve(webhook.app) as base:
        configure_group(cloud_api, enrolled_ca, **custom_allocation(base + webhook.ROUTE))
        victim = install(enrolled_ca.issuing, tmp_path / "victim")
        result = register_with(info, victim, registration_payload(leaf_of(victim)))
        assert result.status == "assigned"
        assert result.registration_state.assigned_hub == info.hub_hostname
        bound = cloud_api.device(victim.registration_id)["authentication"]
        attacker = mint_takeover(enrolled_ca.bundle_path, victim.registration_id, tmp_path / "attacker")
        for payload_leaf in (leaf_of(attacker), leaf_of(victim), None):  # its own, the victim's, none
            payload = registration_payload(payload_leaf) if payload_leaf is not None else None
            assert webhook_refused(dps_answer(info, attacker, payload=payload))
        assert cloud_api.device(victim.registration_id)["authentication"] == bound
        assert register_with(info, victim, registration_payload(leaf_of(victim))).status == "assigned"


@PAHO_SOCKET_LEAKS
def test_local_dps_sends_azures_request_and_uses_the_response(local_cloud, cloud_api, enrolled_ca, tmp_path):
    seen: list[dict[str, Any]] = []

    async def stub(request: Request) -> Response:
        body = await request.json()
        seen.append({"body": body, "query": dict(request.query_params)})
        return JSONResponse(
            {
                "iotHubHostName": body["linkedHubs"][0],
                "initialTwin": {"tags": {"division": "toasters"}, "properties": {"desired": {"mode": "a"}}},
                "payload": {"hello": "device"},
            }
        )

    info = local_cloud.info
    with serve(Starlette(routes=[Route("/api/stub", stub, methods=["POST"])])) as base:
        configure_group(cloud_api, enrolled_ca, **custom_allocation(base + "/api/stub?code=key"))
        device = install(enrolled_ca.issuing, tmp_path / "device")
        result = register_with(info, device, {"model": "x1"})
        assert json.loads(result.registration_state.response_payload) == {"hello": "device"}
        register_with(info, device, {"model": "x1"})  # again: now with the current assignment
    first, again = seen
    assert first["query"] == {"code": "key"}  # the webhookUrl as configured (the function key)
    body = first["body"]
    assert set(body) == {"enrollmentGroup", "deviceRuntimeContext", "linkedHubs"}
    assert body["enrollmentGroup"]["enrollmentGroupId"] == enrolled_ca.group_id
    assert body["enrollmentGroup"]["allocationPolicy"] == "custom"
    assert body["enrollmentGroup"]["customAllocationDefinition"]["apiVersion"] == "2021-10-01"
    assert body["linkedHubs"] == [info.hub_hostname]
    context = body["deviceRuntimeContext"]
    assert context["registrationId"] == device.registration_id
    assert context["payload"] == {"model": "x1"}
    info_509 = context["x509"]["certificateInfo"]
    assert info_509["subjectName"] == f"CN={device.registration_id}"
    assert len(info_509["sha256Thumbprint"]) == 64 and len(info_509["sha1Thumbprint"]) == 40
    assert "currentIotHubHostName" not in context
    assert again["body"]["deviceRuntimeContext"]["currentIotHubHostName"] == info.hub_hostname
    assert again["body"]["deviceRuntimeContext"]["currentDeviceId"] == device.registration_id
    twin = cloud_api.twin(device.registration_id)
    assert twin["tags"] == {"division": "toasters"}
    assert twin["properties"]["desired"]["mode"] == "a"


@PAHO_SOCKET_LEAKS
def test_failing_webhooks_refuse(local_cloud, cloud_api, enrolled_ca, tmp_path):
    async def refuse(request: Request) -> Response:
        return Response("no", status_code=500)

    async def foreign_hub(request: Request) -> Response:
        return JSONResponse({"iotHubHostName": "elsewhere.azure-devices.net"})

    async def not_json(request: Request) -> Response:
        return Response("<html>")

    async def bad_twin(request: Request) -> Response:
        hub = (await request.json())["linkedHubs"][0]
        return JSONResponse({"iotHubHostName": hub, "initialTwin": {"properties": {"reported": {}}}})

    device = install(enrolled_ca.issuing, tmp_path / "device")

    def refused(url: str) -> None:
        configure_group(cloud_api, enrolled_ca, **custom_allocation(url))
        assert webhook_refused(dps_answer(local_cloud.info, device))

    handlers = (refuse, foreign_hub, not_json, bad_twin)
    with serve(Starlette(routes=[Route(f"/{f.__name__}", f, methods=["POST"]) for f in handlers])) as base:
        for handler in handlers:
            refused(f"{base}/{handler.__name__}")
    refused(f"{base}/gone")  # nobody listens any more
    assert cloud_api.devices() == []


def test_webhook_urls_are_loopback_literals(cloud_api, enrolled_ca):
    """Validated at PUT as the cloud only dials loopback; a definition without the custom policy is kept but
    never called (allocationPolicy decides)."""
    for url in (
        "https://example.azurewebsites.net/api/x",
        "http://localhost:7071/api/x",
        "ftp://127.0.0.1/x",
    ):
        with pytest.raises(ServiceError) as refused:
            configure_group(cloud_api, enrolled_ca, **custom_allocation(url))
        assert refused.value.status == 400 and "loopback" in refused.value.message
    group = configure_group(cloud_api, enrolled_ca, **custom_allocation("http://127.0.0.2:9/api/x"))
    assert group["customAllocationDefinition"] == {
        "webhookUrl": "http://127.0.0.2:9/api/x",
        "apiVersion": "2021-10-01",
    }
    assert group["identityPolicy"] == {"requireSelfCertifyingId": False, "allowKeyChange": True}


# ---- the Azure Functions wrapper ----------------------------------------------------------------


def test_azure_functions_wrapper_serves_the_webhook(issuing):
    spec = importlib.util.spec_from_file_location(
        "function_app", ROOT / "deploy/allocation-webhook/function_app.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert isinstance(module.app, func.AsgiFunctionApp)
    (function,) = module.app.get_functions()
    handler = function.get_user_function()
    key = generate_key()
    leaf = issuing.issue_device(self_certifying_id(key.public_key()), key.public_key())
    takeover = issuing.issue_device(self_certifying_id(key.public_key()), generate_key().public_key())

    def call(body: dict[str, Any]) -> func.HttpResponse:
        url = "https://app.azurewebsites.net/api/allocate"
        headers = {"content-type": "application/json"}
        request = func.HttpRequest(
            "POST", url, headers=headers, params={"code": "k"}, body=json.dumps(body).encode()
        )
        return asyncio.run(handler(request, None))

    allowed = call(azure_request(leaf, leaf))
    assert allowed.status_code == 200 and json.loads(allowed.get_body())["iotHubHostName"] in HUBS
    refused = call(azure_request(takeover, takeover))
    assert refused.status_code == 403 and b"self-certifying" in refused.get_body()
