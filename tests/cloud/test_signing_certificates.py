"""Enrollment groups attested by `signingCertificates` (the group holds a CA certificate's PEM) and the DPS
rule that goes with them: an individual enrollment decides first, else the group whose certificate is closest
to the leaf in the device's chain. Driven through the operator client (Azure's DPS service API) and real
devices (azure-iot-device); the device's raw answer is read over MQTT where the SDK hides it."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import httpx
import pytest
from azure.iot.device.exceptions import ClientError, CredentialError
from cryptography.hazmat.primitives.serialization import Encoding

from client_app.cloud import store as store_module
from client_app.cloud.dps.certificates import CertificateStore
from client_app.cloud.dps.enrollment import Enrollments
from client_app.cloud.sas import generate_token
from client_app.cloud.service.client import ServiceError
from client_app.cloud.store import Store
from client_app.pki import (
    CertificateAuthority,
    certificate_to_pem,
    generate_key,
    load_certificates,
    sha256_thumbprint,
)
from tests.cloud.sdk import PAHO_SOCKET_LEAKS, register
from tests.cloud.test_cli import run
from tests.cloud.test_takeover import dps_answer
from tests.fixtures.cloud import issue_device_files

pytestmark = PAHO_SOCKET_LEAKS


def _pem(ca) -> bytes:
    return certificate_to_pem(ca.certificate)


def _group_of(operator, registration_id: str) -> str | None:
    return operator.registration(registration_id)["x509"].get("enrollmentGroupId")


def test_closest_to_leaf_decides_between_two_releases(local_cloud, cloud_api, enrolled_ca, tmp_path):
    """Root group (caReferences) + a group on release A's intermediate (signingCertificates): A's devices go
    through A's group; disabled, it refuses A's devices while release B's still provision via the root."""
    info = local_cloud.info
    release_a = enrolled_ca.root.intermediate("release A", path_length=0)
    release_b = enrolled_ca.root.intermediate("release B", path_length=0)
    cloud_api.create_group("release-a", signing_certificate=_pem(release_a))
    assert register(info, issue_device_files(release_a, "a-01", tmp_path)).status == "assigned"
    assert register(info, issue_device_files(release_b, "b-01", tmp_path)).status == "assigned"
    assert (_group_of(cloud_api, "a-01"), _group_of(cloud_api, "b-01")) == (
        "release-a",
        enrolled_ca.group_id,
    )

    a2 = issue_device_files(release_a, "a-02", tmp_path)
    answer = dps_answer(info, a2)  # what the device itself receives (X509RegistrationResult)
    assert answer["status"] == "assigned"
    x509 = answer["registrationState"]["x509"]
    assert x509["enrollmentGroupId"] == "release-a"
    assert x509["signingCertificateInfo"]["sha256Thumbprint"] == sha256_thumbprint(release_a.certificate)
    assert x509["signingCertificateInfo"]["subjectName"] == "CN=release A"
    leaf = load_certificates(a2.cert_file.read_bytes())[0]
    assert x509["certificateInfo"]["sha256Thumbprint"] == sha256_thumbprint(leaf)
    assert cloud_api.registration("a-02")["x509"] == x509  # the service API shows what the device received
    root_answer = dps_answer(info, issue_device_files(release_b, "b-02", tmp_path))
    assert "signingCertificateInfo" not in root_answer["registrationState"]["x509"]  # a caReferences group

    cloud_api.set_group_status("release-a", False)
    a3 = issue_device_files(release_a, "a-03", tmp_path)
    with pytest.raises((ClientError, CredentialError)):
        register(info, a3)
    # DPS's documented answer for a disabled enrollment, read raw (a refused SDK client reconnects)
    refusal = dps_answer(info, issue_device_files(release_a, "a-05", tmp_path))
    assert (refusal["httpStatus"], refusal["status"], refusal["registrationState"]["status"]) == (
        200,
        "disabled",
        "disabled",
    )
    assert register(info, issue_device_files(release_b, "b-03", tmp_path)).status == "assigned"
    assert _group_of(cloud_api, "b-03") == enrolled_ca.group_id

    cloud_api.put_enrollment("a-03", enabled=True)  # an individual enrollment comes before any group
    assert register(info, a3).status == "assigned"
    assert _group_of(cloud_api, "a-03") is None
    cloud_api.put_enrollment("b-04", enabled=False)  # ... and blocks a device its group would take
    with pytest.raises((ClientError, CredentialError)):
        register(info, issue_device_files(release_b, "b-04", tmp_path))

    cloud_api.delete_group("release-a")  # gone: release A falls back to the root's group
    assert register(info, issue_device_files(release_a, "a-04", tmp_path)).status == "assigned"
    assert _group_of(cloud_api, "a-04") == enrolled_ca.group_id


def test_signing_group_api(local_cloud, cloud_api, enrolled_ca):
    release = enrolled_ca.root.intermediate("release C", path_length=0)
    der = release.certificate.public_bytes(Encoding.DER)
    created = cloud_api.create_group("release-c", signing_certificate=_pem(release))
    got = cloud_api.group("release-c")
    entry = got["attestation"]["x509"]["signingCertificates"]["primary"]
    assert "certificate" not in entry and "caReferences" not in got["attestation"]["x509"]  # no PEM back
    assert entry["info"]["sha256Thumbprint"] == sha256_thumbprint(release.certificate)
    assert entry["info"]["issuerName"] == "CN=test Root CA" and entry["info"]["version"] == 3
    assert created["attestation"] == got["attestation"]
    assert got in cloud_api.groups()

    # The group as read, PUT back (its etag: a replace) keeps its certificate; a wrong info does not pass.
    replaced = cloud_api.replace_group({**got, "initialTwin": {"tags": {"release": "C"}}})
    assert replaced["attestation"] == got["attestation"] and replaced["initialTwin"]["tags"] == {
        "release": "C"
    }
    forged = {"primary": {"info": {**entry["info"], "sha256Thumbprint": "00" * 32}}}
    with pytest.raises(ServiceError) as wrong:
        cloud_api.replace_group(
            {**replaced, "attestation": {"type": "x509", "x509": {"signingCertificates": forged}}}
        )
    assert (wrong.value.status, wrong.value.code) == (400, 400005)

    # One PEM as primary and secondary, as azure-iot-deviceprovisioning's README sample sends it.
    both = {slot: {"certificate": _pem(release).decode()} for slot in ("primary", "secondary")}
    twice = cloud_api.replace_group(
        {**replaced, "attestation": {"type": "x509", "x509": {"signingCertificates": both}}}
    )
    infos = twice["attestation"]["x509"]["signingCertificates"]
    assert infos["primary"] == infos["secondary"] == entry

    # The one-line PEM the .NET SDK sends, and base64 DER ("PEM or CER", the Node SDK), both parse.
    one_line = f"-----BEGIN CERTIFICATE-----{base64.b64encode(der).decode()}-----END CERTIFICATE-----"
    cloud_api.delete_group("release-c")
    assert (
        cloud_api.create_group("release-c", signing_certificate=one_line.encode())["attestation"]
        == (got["attestation"])
    )
    cloud_api.delete_group("release-c")
    assert (
        cloud_api.create_group("release-c", signing_certificate=base64.b64encode(der))["attestation"]
        == (got["attestation"])
    )

    leaf = release.issue_device("not-a-ca", generate_key().public_key())
    refusals = {
        "bad PEM": b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
        "not base64": b"hello",
        "two certificates": _pem(release) + _pem(enrolled_ca.root),
        "not a CA": certificate_to_pem(leaf),
    }
    for what, pem in refusals.items():
        with pytest.raises(ServiceError) as refused:
            cloud_api.create_group("refused", signing_certificate=pem)
        assert (refused.value.status, refused.value.code) == (400, 400005), what
    # A certificate backs one enrollment entry: as another group's signing certificate or CA reference.
    with pytest.raises(ServiceError) as taken:
        cloud_api.create_group("release-c-again", signing_certificate=_pem(release))
    assert (taken.value.status, taken.value.code) == (409, 409001)
    with pytest.raises(ServiceError) as root_taken:
        cloud_api.create_group("root-again", signing_certificate=_pem(enrolled_ca.root))
    assert (root_taken.value.status, root_taken.value.code) == (409, 409001)
    cloud_api.certificates.enroll(release, "release-c-ca")  # the same certificate, uploaded and verified
    with pytest.raises(ServiceError) as reference_taken:
        cloud_api.create_group("release-c-by-name", "release-c-ca")
    assert (reference_taken.value.status, reference_taken.value.code) == (409, 409001)
    assert [g["enrollmentGroupId"] for g in cloud_api.groups()] == ["release-c", enrolled_ca.group_id]


def test_individual_enrollment_with_client_certificate(local_cloud, cloud_api, enrolled_ca, tmp_path):
    """`clientCertificates` on an individual enrollment: only the enrolled leaf registers as that ID (the
    individual enrollment decides before the group); GET answers its info, not the PEM."""
    info = local_cloud.info
    key = generate_key()
    enrolled = issue_device_files(enrolled_ca.issuing, "ind-01", tmp_path / "enrolled", key=key)
    leaf = load_certificates(enrolled.cert_file.read_bytes())[0]
    body = cloud_api.put_enrollment("ind-01", enabled=True, client_certificate=certificate_to_pem(leaf))
    entry = body["attestation"]["x509"]["clientCertificates"]["primary"]
    assert list(entry) == ["info"] and entry["info"]["sha256Thumbprint"] == sha256_thumbprint(leaf)
    assert cloud_api.enrollments() == [body]
    assert register(info, enrolled).status == "assigned"
    assert _group_of(cloud_api, "ind-01") is None  # the individual enrollment decided, not test-group

    other = issue_device_files(enrolled_ca.issuing, "ind-01", tmp_path / "other")  # same ID, another leaf
    answer = dps_answer(info, other)
    assert (answer["httpStatus"], answer["errorCode"]) == (401, 401002)

    refusals = {
        "CN is not the ID": ("ind-02", certificate_to_pem(leaf)),
        "a CA": ("test-issuing-ca", _pem(enrolled_ca.issuing)),
    }
    for what, (registration_id, pem) in refusals.items():
        with pytest.raises(ServiceError) as refused:
            cloud_api.put_enrollment(registration_id, enabled=True, client_certificate=pem)
        assert (refused.value.status, refused.value.code) == (400, 400005), what
    with _service_dps(local_cloud) as dps:  # attestations that are "NOT VALID" in the other kind of entry
        signing = {"signingCertificates": {"primary": {"certificate": _pem(enrolled_ca.issuing).decode()}}}
        put = dps.put("/enrollments/ind-03", json={"attestation": {"type": "x509", "x509": signing}})
        assert (put.status_code, put.json()["errorCode"]) == (400, 400004)
        client = {"clientCertificates": {"primary": {"certificate": certificate_to_pem(leaf).decode()}}}
        put = dps.put("/enrollmentGroups/g-03", json={"attestation": {"type": "x509", "x509": client}})
        assert (put.status_code, put.json()["errorCode"]) == (400, 400004)


def _service_dps(cloud):
    policy = cloud.cloud.dps_policies["provisioningserviceowner"]
    return httpx.Client(
        base_url=f"https://{cloud.info.service_host}",
        verify=ssl.create_default_context(cafile=cloud.info.server_ca_pem),
        headers={"Authorization": generate_token(cloud.info.service_host, policy.primary_key, policy.name)},
        params={"api-version": "2021-10-01"},
    )


def test_store_migrates_a_version_3_database_without_losing_rows(tmp_path: Path, monkeypatch):
    """A cloud.db of the schema before signingCertificates (version 3) opens, migrates to the current version
    and keeps every row; its caReferences group and its registration read as before."""
    path = tmp_path / "cloud.db"
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", 3)
    old = Store(path)
    certificates = CertificateStore(old)
    root = CertificateAuthority.root("old Root CA")
    certificates.upload("root", certificate_to_pem(root.certificate).decode(), is_verified=True)
    old.execute(
        """INSERT INTO enrollment_groups VALUES ('old-group', 'root', 1, '{"tags":{"a":1}}', 'e', 'c', 'u')"""
    )
    old.execute(
        """INSERT INTO enrollment_group_options VALUES ('old-group', '{"allocationPolicy":"hashed"}')"""
    )
    old.execute("INSERT INTO enrollments VALUES ('blocked', 0, 'e', 'c', 'u')")
    old.execute(
        "INSERT INTO registrations VALUES ('dev-1', 'dev-1', 'old-group', 'hub', 'assigned',"
        " 'initialAssignment', 'AB', 'op', 'e', 'c', 'u')"
    )
    old.execute("INSERT INTO registration_keys VALUES ('dev-1', 'k')")
    old.execute("INSERT INTO devices VALUES ('dev-1', 'ab', 1, 'g', 'e', 'c', 'u', NULL, NULL)")
    before = _counts(old)
    old.close()
    monkeypatch.undo()

    migrated = Store(path)
    assert migrated.one("PRAGMA user_version")[0] == store_module.SCHEMA_VERSION == 5
    assert _counts(migrated) == before
    assert migrated.one("SELECT COUNT(*) FROM enrollment_group_signing")[0] == 0
    enrollments = Enrollments(migrated, CertificateStore(migrated))
    assert enrollments.enrollment("blocked").client == ()
    group = enrollments.group("old-group")
    assert (group.ca_name, group.signing, group.initial_twin) == ("root", (), {"tags": {"a": 1}})
    # recorded before schema 5 kept the device's X509RegistrationResult: the thumbprint is all there is
    assert enrollments.registration("dev-1").to_json()["x509"] == {
        "certificateInfo": {"sha256Thumbprint": "AB"},
        "enrollmentGroupId": "old-group",
    }
    migrated.close()


def _counts(store: Store) -> dict[str, int]:
    tables = [
        r[0]
        for r in store.all("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")
    ]
    new = ("enrollment_group_signing", "enrollment_client_certificates", "registration_x509")  # schemas 4, 5
    return {t: store.one(f"SELECT COUNT(*) FROM {t}")[0] for t in tables if t not in new}


def test_cli_creates_a_signing_certificate_group(local_cloud, enrolled_ca, tmp_path: Path):
    release = enrolled_ca.root.intermediate("release D", path_length=0)
    pem = tmp_path / "release-d.pem"
    pem.write_bytes(_pem(release))
    data = local_cloud.info.data_dir
    out, _ = run(
        data, "enrollment-groups", "create", "release-d", "--signing-certificate", str(pem), "--disabled"
    )
    thumbprint = sha256_thumbprint(release.certificate)
    assert out.strip() == f"release-d: signing certificate CN=release D (SHA-256 {thumbprint}), disabled"
    assert "release-d: signing certificate" in run(data, "enrollment-groups", "enable", "release-d")[0]
    _, err = run(
        data,
        "enrollment-groups",
        "create",
        "x",
        "--ca",
        "test-root",
        "--signing-certificate",
        str(pem),
        ok=False,
    )
    assert "exactly one of --ca" in err
