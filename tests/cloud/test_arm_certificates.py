"""azure-mgmt-iothubprovisioningservices (IotDpsClient) runs the CA certificate flow against the local cloud:
upload → Unverified → verification code → proof-of-possession certificate → Verified, with the documented
development credential (LocalCloudCredential + base_url), then a group on that CA provisions a device."""

from __future__ import annotations

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError
from azure.mgmt.iothubprovisioningservices import IotDpsClient
from azure.mgmt.iothubprovisioningservices.models import (
    CertificateProperties,
    CertificateResponse,
    VerificationCodeRequest,
)

from client_app.cloud.service.client import LocalCloudCredential
from client_app.pki import CertificateAuthority, certificate_to_pem
from tests.cloud.sdk import register
from tests.fixtures.cloud import issue_device_files

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"


@pytest.fixture
def dps_client(local_cloud):
    info = local_cloud.info
    with IotDpsClient(LocalCloudCredential(info.api_token), SUBSCRIPTION, base_url=f"https://{info.service_host}",
                      connection_verify=info.server_ca_pem) as client:  # fmt: skip
        yield client.dps_certificate


def test_certificate_flow_with_the_mgmt_sdk(local_cloud, cloud_api, dps_client, tmp_path):
    root = CertificateAuthority.root("arm Root CA")
    where = ("rg", "local-dps")
    body = CertificateResponse(
        properties=CertificateProperties(certificate=certificate_to_pem(root.certificate))
    )
    uploaded = dps_client.create_or_update(*where, "arm-root", body)
    assert (uploaded.name, uploaded.properties.is_verified) == ("arm-root", False)
    assert uploaded.properties.subject and uploaded.properties.expiry is not None

    with pytest.raises(HttpResponseError) as again:  # create never replaces; replacing needs the etag
        dps_client.create_or_update(*where, "arm-root", body)
    assert again.value.status_code == 409

    code = dps_client.generate_verification_code(
        "arm-root", *where, etag=uploaded.etag, match_condition=MatchConditions.IfNotModified
    )
    proof, _ = root.issue_verification(code.properties.verification_code)
    with pytest.raises(HttpResponseError) as stale:
        request = VerificationCodeRequest(certificate=certificate_to_pem(proof).decode())
        dps_client.verify_certificate("arm-root", *where, request, etag=uploaded.etag,
                                      match_condition=MatchConditions.IfNotModified)  # fmt: skip
    assert stale.value.status_code == 412  # the etag changed with the code
    verified = dps_client.verify_certificate(
        "arm-root", *where, VerificationCodeRequest(certificate=certificate_to_pem(proof).decode()),
        etag=code.etag, match_condition=MatchConditions.IfNotModified,
    )  # fmt: skip
    assert verified.properties.is_verified is True
    assert [c.name for c in dps_client.list(*where).value] == ["arm-root"]

    issuing = root.intermediate("arm Issuing CA", path_length=0)
    cloud_api.create_group("arm-group", "arm-root")
    assert register(local_cloud.info, issue_device_files(issuing, "arm-01", tmp_path)).status == "assigned"

    with pytest.raises(HttpResponseError) as missing:
        dps_client.get("nope", *where)
    assert missing.value.status_code == 404


def test_arm_needs_the_development_credential(local_cloud):
    info = local_cloud.info
    with (
        IotDpsClient(LocalCloudCredential("wrong"), SUBSCRIPTION, base_url=f"https://{info.service_host}",
                     connection_verify=info.server_ca_pem) as client,
        pytest.raises(HttpResponseError) as refused,
    ):  # fmt: skip
        client.dps_certificate.list("rg", "local-dps")
    assert refused.value.status_code == 401
