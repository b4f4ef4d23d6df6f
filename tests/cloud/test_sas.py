"""SAS tokens and connection strings: our signer, our verifier, and Azure's own SDK signer agree."""

from __future__ import annotations

import time

import pytest

from client_app.cloud.sas import (
    HUB_POLICIES,
    AccessPolicy,
    SasError,
    connection_string,
    generate_token,
    parse_connection_string,
    verify_token,
)

HOST = "127.0.0.9"


@pytest.fixture
def policies() -> dict[str, AccessPolicy]:
    return {name: AccessPolicy.generate(name, rights) for name, rights in HUB_POLICIES.items()}


def test_a_token_from_the_policy_key_grants_its_rights(policies):
    owner = policies["iothubowner"]
    token = generate_token(HOST, owner.primary_key, "iothubowner")
    assert verify_token(token, policies, HOST, "RegistryWrite") is owner
    assert verify_token(token, policies, f"{HOST}/devices/d1", "ServiceConnect") is owner


def test_the_secondary_key_works_too(policies):
    token = generate_token(HOST, policies["service"].secondary_key, "service")
    assert verify_token(token, policies, HOST, "ServiceConnect").name == "service"


def test_azure_sdk_tokens_verify(policies):
    from azure.iot.hub.auth import ConnectionStringAuthentication

    auth = ConnectionStringAuthentication(connection_string(HOST, policies["registryRead"]))
    token = auth.signed_session().headers["Authorization"]
    assert verify_token(token, policies, HOST, "RegistryRead").name == "registryRead"


@pytest.mark.parametrize(
    ("mutate", "right", "reason"),
    [
        (lambda t: t.replace("sig=", "sig=A"), "RegistryRead", "signature"),
        (lambda t: t.replace("skn=registryRead", "skn=nobody"), "RegistryRead", "policy"),
        (lambda t: t, "RegistryWrite", "lacks the RegistryWrite"),
        (lambda t: t.replace("SharedAccessSignature ", "Bearer "), "RegistryRead", "not a SharedAccess"),
        (lambda t: t + "&sr=x", "RegistryRead", "malformed"),
        (lambda t: t + "é", "RegistryRead", "policy"),
        (lambda t: t.replace("sig=", "sig=é"), "RegistryRead", "signature"),
    ],
)
def test_refusals(policies, mutate, right, reason):
    token = mutate(generate_token(HOST, policies["registryRead"].primary_key, "registryRead"))
    with pytest.raises(SasError, match=reason):
        verify_token(token, policies, HOST, right)


def test_expired_and_foreign_audience(policies):
    key = policies["iothubowner"].primary_key
    with pytest.raises(SasError, match="expired"):
        verify_token(generate_token(HOST, key, "iothubowner", ttl=-1), policies, HOST, "RegistryRead")
    with pytest.raises(SasError, match="not for"):
        verify_token(generate_token("127.0.0.10", key, "iothubowner"), policies, HOST, "RegistryRead")
    later = time.time() + 7200
    with pytest.raises(SasError, match="expired"):
        verify_token(generate_token(HOST, key, "iothubowner"), policies, HOST, "RegistryRead", now=later)


def test_connection_strings_split_once_on_equals(policies):
    text = connection_string(HOST, policies["service"])
    fields = parse_connection_string(text)
    assert fields["SharedAccessKey"] == policies["service"].primary_key
    assert fields["HostName"] == HOST
    with pytest.raises(ValueError, match="no value"):
        parse_connection_string("HostName")
