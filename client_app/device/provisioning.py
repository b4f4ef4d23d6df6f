"""DPS registration with the device's X.509 identity."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from client_app.device import sdk
from client_app.device.config import DeviceConfig
from client_app.device.identity import Identity
from client_app.device.state import Assignment, utcnow
from client_app.pki.names import registration_payload

log = logging.getLogger(__name__)


class ProvisioningBlocked(Exception):
    """DPS refuses this device for good (unknown/disabled enrollment, revoked CA); retrying will not help."""


class ProvisioningFailed(Exception):
    """A transient failure: retry later with back-off (the SDK already honours DPS's own retry-after)."""


_REFUSED = (401, 403, 404)


def provision(
    config: DeviceConfig, identity: Identity, chain_file: Path, later: list[Callable[[], None]]
) -> Assignment:
    """Register; clean-up work that can wait is appended to `later`."""
    from azure.iot.device import ProvisioningDeviceClient

    try:
        client = sdk.create_client(
            ProvisioningDeviceClient.create_from_x509_certificate, identity, chain_file,
            provisioning_host=config.provisioning_host, registration_id=identity.registration_id,
            id_scope=config.id_scope, **sdk.common_kwargs(config),
        )  # fmt: skip
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ProvisioningFailed(f"cannot set up the provisioning client: {sdk.describe(exc)}") from exc
    # The leaf travels in the registration payload for a custom allocation webhook (docs/pki.md).
    client.provisioning_payload = registration_payload(identity.leaf)
    log.info("registering %s with %s (scope %s)", identity.registration_id, config.provisioning_host,
             config.id_scope)  # fmt: skip
    try:
        result = _register(client)
    except BaseException:
        release_client(client)
        raise
    # On success the SDK has disconnected already; the rest of the clean-up can wait until the hub
    # connection is up (it would compete with it for the CPU).
    later.append(lambda: release_client(client))
    state = result.registration_state
    if result.status != "assigned" or state is None or not state.assigned_hub or not state.device_id:
        raise ProvisioningBlocked(f"The provisioning service did not assign this device ({result.status}).")
    log.info("assigned to %s as %s", state.assigned_hub, state.device_id)
    return Assignment(
        assigned_hub=state.assigned_hub,
        device_id=state.device_id,
        id_scope=config.id_scope,
        provisioning_host=config.provisioning_host,
        provisioned_at=utcnow().isoformat(),
    )


def _register(client: Any) -> Any:
    from azure.iot.device import exceptions

    try:
        return client.register()
    except exceptions.CredentialError as exc:
        raise ProvisioningBlocked("The provisioning service refused this device's certificate.") from exc
    except exceptions.ClientError as exc:
        detail = sdk.describe(exc)
        code = sdk.status_code(exc)
        if code in _REFUSED or "registration status" in detail:
            raise ProvisioningBlocked(
                f"The provisioning service refused this device (status {code or 'failed/disabled'}). "
                "Ask your administrator to enable its enrollment."
            ) from exc
        raise ProvisioningFailed(f"registration failed: {detail}") from exc
    except (exceptions.OperationTimeout, exceptions.OperationCancelled) as exc:
        raise ProvisioningFailed(f"registration timed out: {sdk.describe(exc)}") from exc


def release_client(client: Any) -> None:
    """Shut the DPS pipeline down. After a failed registration the SDK leaves its connection open (protocol
    notes §2.7): one leaked socket and paho thread per attempt. The client has no public shutdown."""
    from azure.iot.device.common.evented_callback import EventedCallback

    pipeline = getattr(client, "_pipeline", None)
    if pipeline is None:
        return
    try:
        done = EventedCallback()
        pipeline.shutdown(callback=done)
        done.wait_for_completion(timeout=5)
    except Exception as exc:
        log.debug("provisioning client shutdown: %s", sdk.describe(exc))
    sdk.close_paho_sockets(client)
