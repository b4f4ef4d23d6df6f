"""Host-name helpers shared by the app's settings and the local cloud (neither may import the other)."""

from __future__ import annotations

import ipaddress


def is_ip_address(text: str) -> bool:
    """True for an IPv4 or IPv6 literal, e.g. '127.0.0.2'; False for a DNS name."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
