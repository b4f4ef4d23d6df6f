"""tls.server_context and tls.presented_chain outside the server."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading

import pytest

from client_app.cloud.mqtt.tls import add_trusted, presented_chain, server_context
from client_app.pki import CertificateAuthority, certificate_to_pem
from tests.cloud.mqtt.conftest import KEY_PASSWORD, MqttPki


def test_context_settings(pki: MqttPki) -> None:
    context = pki.server_ssl_context()  # encrypted key + password
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.verify_flags & ssl.VERIFY_X509_PARTIAL_CHAIN
    assert len(context.get_ca_certs()) == 2


def test_wrong_key_password_fails(pki: MqttPki) -> None:
    with pytest.raises(ssl.SSLError):
        server_context(pki.server_chain, pki.server_key, pki.trust_pem, b"wrong")


def test_trust_is_additive_and_validated(pki: MqttPki) -> None:
    context = server_context(pki.server_chain, pki.server_key, b"", KEY_PASSWORD)
    assert context.get_ca_certs() == []  # no CA yet: every client is refused
    add_trusted(context, certificate_to_pem(pki.foreign.certificate))
    assert len(context.get_ca_certs()) == 1
    with pytest.raises(ValueError):
        add_trusted(context, b"not a certificate")


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> list:
    """Blocking handshake over a socketpair; returns presented_chain on the server side."""
    left, right = socket.socketpair()
    result: dict[str, object] = {}

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(left, server_side=True) as tls:
                result["chain"] = presented_chain(tls)
        except ssl.SSLError as exc:
            result["error"] = exc

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with contextlib.suppress(ssl.SSLError), client_ctx.wrap_socket(right, server_hostname="localhost"):
            pass  # the server side records the outcome
    finally:
        right.close()
        thread.join(5)
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["chain"]  # type: ignore[return-value]


def test_presented_chain_on_ssl_socket(pki: MqttPki) -> None:
    device = pki.device("dev-sock")
    chain = _handshake(pki.server_ssl_context(), pki.client_context(device))
    assert chain == [device.leaf, pki.issuing.certificate]


def test_intermediate_alone_is_a_trust_anchor(pki: MqttPki) -> None:
    # Partial chain: trusting only the issuing CA accepts a leaf-only client.
    only_issuing = certificate_to_pem(pki.issuing.certificate)
    context = server_context(pki.server_chain, pki.server_key, only_issuing, KEY_PASSWORD)
    device = pki.device("dev-partial", send_chain=False)
    assert _handshake(context, pki.client_context(device)) == [device.leaf]
    other = CertificateAuthority.root("Other").intermediate("Other Issuing")
    with pytest.raises(ssl.SSLError):
        _handshake(context, pki.client_context(pki.device("dev-other", ca=other)))
