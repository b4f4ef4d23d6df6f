"""Chain verification with cryptography's verifier, relaxed for SAN-less device leaves."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from client_app.pki.errors import PkiError


def verify_client_chain(
    leaf: x509.Certificate,
    trust_anchors: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate] = (),
    *,
    at: datetime | None = None,
) -> list[x509.Certificate]:
    """Verify a TLS client (device) chain; returns the built chain, leaf first, or raises PkiError.

    The Web-PKI end-entity policy demands a SAN; DPS device leaves have none (the CN is the identity),
    so the SAN is made optional. Everything else (CA:TRUE leaves, pathlen, key usage, AKI) stays strict.
    """
    ee_policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
    )
    builder = PolicyBuilder().store(Store(list(trust_anchors)))
    builder = builder.extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee_policy)
    if at is not None:
        builder = builder.time(at)
    try:
        return builder.build_client_verifier().verify(leaf, list(intermediates)).chain
    except VerificationError as exc:
        raise PkiError(f"verification failed: {exc}") from exc
