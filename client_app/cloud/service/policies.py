"""The cloud's shared access policies (IoT Hub and DPS), generated once and kept in the store's secrets."""

from __future__ import annotations

import json
from collections.abc import Mapping

from client_app.cloud.sas import AccessPolicy
from client_app.cloud.store import Store


def load_policies(
    store: Store, service: str, defaults: Mapping[str, frozenset[str]]
) -> dict[str, AccessPolicy]:
    """The policies of `service` ("hub" or "dps"); Azure's built-in set with fresh keys on first start."""
    key = f"{service}-access-policies"
    raw = store.secret(key)
    if raw is not None:
        return {
            p["name"]: AccessPolicy(p["name"], p["primaryKey"], p["secondaryKey"], frozenset(p["rights"]))
            for p in json.loads(raw)
        }
    policies = {name: AccessPolicy.generate(name, rights) for name, rights in defaults.items()}
    rows = [
        {
            "name": p.name,
            "primaryKey": p.primary_key,
            "secondaryKey": p.secondary_key,
            "rights": sorted(p.rights),
        }
        for p in policies.values()
    ]
    store.set_secret(key, json.dumps(rows).encode())
    return policies
