import pytest

from client_app.pki import CertificateAuthority


@pytest.fixture(scope="session")
def root() -> CertificateAuthority:
    return CertificateAuthority.root("Test Root CA")


@pytest.fixture(scope="session")
def issuing(root: CertificateAuthority) -> CertificateAuthority:
    """The usual two-level hierarchy: root -> issuing intermediate (pathLenConstraint 0)."""
    return root.intermediate("Test Issuing CA")
