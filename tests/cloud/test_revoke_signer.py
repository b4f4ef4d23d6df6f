"""`client-app-cloud revoke-signer CERT.pem`: one release's intermediate is refused at DPS (the group closest
to the leaf decides) and its hub devices are disabled, while another release under the same root keeps going.
"""

from __future__ import annotations

import json

import pytest
from azure.iot.device.exceptions import ClientError, CredentialError
from click.testing import CliRunner

from client_app.cloud.cli import cli
from client_app.cloud.service.client import ServiceClient
from client_app.cloud.service.revoke import revoke_signer
from client_app.pki import certificate_to_pem, sha256_thumbprint
from tests.cloud.sdk import PAHO_SOCKET_LEAKS, hub_client, register
from tests.fixtures.cloud import issue_device_files


def _report_issuer(info, files, issuer) -> None:
    """What the device core reports after connecting (device/supervisor.py _sync_twin)."""
    client = hub_client(info, files)
    try:
        client.patch_twin_reported_properties({"issuer_thumbprint": sha256_thumbprint(issuer.certificate)})
    finally:
        client.shutdown()


@PAHO_SOCKET_LEAKS
def test_revoke_one_release(local_cloud, cloud_api, enrolled_ca, tmp_path):
    info = local_cloud.info
    release_a = enrolled_ca.root.intermediate("release A", path_length=0)
    release_b = enrolled_ca.root.intermediate("release B", path_length=0)
    a1 = issue_device_files(release_a, "a-01", tmp_path)
    b1 = issue_device_files(release_b, "b-01", tmp_path)
    for files, issuer in ((a1, release_a), (b1, release_b)):
        register(info, files)
        _report_issuer(info, files, issuer)

    pem = tmp_path / "release-a.pem"
    pem.write_bytes(certificate_to_pem(release_a.certificate))
    result = CliRunner().invoke(cli, ["--data", str(info.data_dir), "revoke-signer", str(pem)])
    assert result.exit_code == 0, result.output
    assert "devices disabled: 1 (a-01)" in result.stdout and "devices left enabled: 1" in result.stdout

    api = local_cloud.cloud.hub
    assert api.device("a-01")["status"] == "disabled" and api.device("b-01")["status"] == "enabled"
    # a disabled group holding the intermediate (signingCertificates)
    (group,) = [g for g in cloud_api.groups() if g["enrollmentGroupId"] != enrolled_ca.group_id]
    info_a = group["attestation"]["x509"]["signingCertificates"]["primary"]["info"]
    assert (group["provisioningStatus"], info_a["sha256Thumbprint"]) == (
        "disabled",
        sha256_thumbprint(release_a.certificate),
    )
    with pytest.raises((ClientError, CredentialError)):  # release A: refused by its disabled group
        register(info, issue_device_files(release_a, "a-02", tmp_path))
    assert register(info, issue_device_files(release_b, "b-02", tmp_path)).status == "assigned"

    again = CliRunner().invoke(cli, ["--data", str(info.data_dir), "--json", "revoke-signer", str(pem)])
    summary = json.loads(again.stdout)  # idempotent: the same group, nothing more to disable
    assert (summary["group_created"], summary["disabled"], summary["already_disabled"]) == (
        False,
        [],
        ["a-01"],
    )


@PAHO_SOCKET_LEAKS
def test_revoke_with_connection_strings_only(local_cloud, cloud_api, enrolled_ca, tmp_path):
    """No ARM certificate access (as with only a DPS connection string against Azure): an existing enabled
    group on the release's intermediate is disabled, and the release's hub devices with it."""
    info = local_cloud.info
    release = enrolled_ca.root.intermediate("release C", path_length=0)
    cloud_api.create_group("release-c", signing_certificate=certificate_to_pem(release.certificate))
    files = issue_device_files(release, "c-01", tmp_path)
    register(info, files)
    _report_issuer(info, files, release)
    with ServiceClient(
        info.iothub_connection_string, info.dps_connection_string, ca_file=info.server_ca_pem
    ) as plain:
        assert plain.certificates is None
        result = revoke_signer(plain, release.certificate)
        assert (result.group_id, result.group_created, result.disabled, result.left) == (
            "release-c",
            False,
            ["c-01"],
            0,
        )
        assert plain.group("release-c")["provisioningStatus"] == "disabled"
    with pytest.raises((ClientError, CredentialError)):
        register(info, issue_device_files(release, "c-02", tmp_path))


def test_revoke_finds_a_ca_references_group(local_cloud, cloud_api, enrolled_ca):
    """A group referencing the intermediate by its DPS certificate name (what the former revoke-signer made):
    with ARM access it is found and disabled; without it, a clear refusal instead of DPS's bare 409."""
    info = local_cloud.info
    release = enrolled_ca.root.intermediate("release E", path_length=0)
    cloud_api.certificates.upload("release-e", certificate_to_pem(release.certificate), verified=True)
    cloud_api.create_group("old-revoked-e", "release-e")
    with (
        ServiceClient(
            info.iothub_connection_string, info.dps_connection_string, ca_file=info.server_ca_pem
        ) as plain,
        pytest.raises(ValueError, match="enrollment-groups disable GROUP_ID"),
    ):
        revoke_signer(plain, release.certificate)
    assert cloud_api.group("old-revoked-e")["provisioningStatus"] == "enabled"

    result = revoke_signer(cloud_api, release.certificate)
    assert (result.group_id, result.group_created) == ("old-revoked-e", False)
    assert cloud_api.group("old-revoked-e")["provisioningStatus"] == "disabled"
    assert [g["enrollmentGroupId"] for g in cloud_api.groups()].count("old-revoked-e") == 1


def test_revoke_signer_bad_file(local_cloud, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    result = CliRunner().invoke(cli, ["--data", str(local_cloud.info.data_dir), "revoke-signer", str(junk)])
    assert result.exit_code == 1 and "cannot read" in result.stderr
