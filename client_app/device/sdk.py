"""Shared plumbing for creating azure-iot-device clients from our identity and configuration."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from client_app.device.config import DeviceConfig
from client_app.device.identity import Identity, sdk_key_file

T = TypeVar("T")


def common_kwargs(config: DeviceConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"keep_alive": config.keep_alive}
    ca = config.server_ca_text()
    if ca:
        kwargs["server_verification_cert"] = ca
    if config.proxy:
        kwargs["proxy_options"] = config.proxy.to_sdk()
    return kwargs


def create_client(
    factory: Callable[..., T], identity: Identity, chain_file: Path, *args: Any, **kwargs: Any
) -> T:
    """Create an SDK client; the SDK reads the key at creation, so the temporary key file dies right after."""
    from azure.iot.device import X509

    with sdk_key_file(identity.key) as (key_path, passphrase):
        x509 = X509(str(chain_file), key_path, passphrase)
        return factory(*args, x509=x509, **kwargs)


def describe(exc: BaseException) -> str:
    """One line naming the SDK error and its root cause (the SDK wraps most failures in ClientError)."""
    parts, seen = [], set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).strip()
        parts.append(f"{type(current).__name__}: {text}" if text else type(current).__name__)
        current = current.__cause__ or current.__context__
    return " <- ".join(parts[:3])


def status_code(exc: BaseException) -> int | None:
    """The DPS/hub status code hidden in a ServiceError message, if any."""
    match = re.search(r"status code (?:of )?(\d{3})", describe(exc))
    return int(match.group(1)) if match else None


def close_paho_sockets(client: Any) -> None:
    """Close the wake-up socket pair of the SDK client's paho object, after shutdown/registration.

    paho 1.6 closes that pair only in __del__, and the SDK's pipeline is a reference cycle, so __del__ runs
    at some later garbage collection, after the sockets' own finalizers: two file descriptors per client held
    until then, and a ResourceWarning each. Best effort: this walks private attributes of azure-iot-device
    2.14 and does nothing if they moved.
    """
    pipeline = getattr(client, "_mqtt_pipeline", None) or getattr(client, "_pipeline", None)
    stage = getattr(pipeline, "_pipeline", None)
    while stage is not None:
        paho = getattr(getattr(stage, "transport", None), "_mqtt_client", None)
        if paho is not None and getattr(paho, "_thread", None) is None:  # loop stopped: nobody selects on it
            try:
                paho._reset_sockets(sockpair_only=True)
            except Exception:
                return
            return
        stage = getattr(stage, "next", None)
