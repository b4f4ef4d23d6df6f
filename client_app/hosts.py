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


def is_loopback_address(text: str) -> bool:
    """True for a loopback IP literal (127.0.0.0/8, ::1): reaching it needs no resolver and no network."""
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False
