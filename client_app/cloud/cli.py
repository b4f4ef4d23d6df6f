"""`client-app-cloud`: run the local cloud (`serve`) and operate it, or a real hub and DPS, through Azure's
service APIs (the operator client); reading stored telemetry and consumer groups use the local-only API."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from functools import update_wrapper
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import httpx
from azure.core.exceptions import AzureError

from client_app.cloud.info import CONNECTION_FILE, ConnectionInfo
from client_app.cloud.service.client import (
    ArmCertificates,
    ServiceClient,
    ServiceError,
    local_amqp_connection_string,
)

DATA_ENV = "CLIENT_APP_CLOUD_DATA"
EVENTHUB_CONNECTION_ENV = "EVENTHUB_CONNECTION_STRING"
FOLLOW_INTERVAL = 0.5


def _segment(value: str) -> str:
    """A user-given name as one URL path segment: device IDs may contain `?`, `%` or `'`."""
    return quote(value, safe="")


class CliError(click.ClickException):
    """One line on stderr, exit 1; never a traceback."""

    def show(self, file: Any = None) -> None:
        click.echo(f"client-app-cloud: {self.format_message()}", err=True)


class Context:
    def __init__(
        self,
        data: Path | None,
        as_json: bool,
        hub_cs: str | None = None,
        dps_cs: str | None = None,
        arm: tuple[str, str, str] | None = None,
    ) -> None:
        self.data = data
        self.as_json = as_json
        self.hub_cs = hub_cs  # a real hub's (or any) service connection strings; default: the local cloud's
        self.dps_cs = dps_cs
        self.arm = arm  # (subscription, resource group, DPS name) for certificates on Azure
        self._info: ConnectionInfo | None = None

    def service(self) -> ServiceClient:
        """Azure's service API: the given connection strings (real Azure, system trust) or the local cloud."""
        try:
            if self.hub_cs or self.dps_cs:
                return ServiceClient(self.hub_cs, self.dps_cs, certificates=self._azure_certificates())
            return ServiceClient.for_local_cloud(self.info())
        except ValueError as exc:
            raise CliError(str(exc)) from exc

    def _azure_certificates(self) -> ArmCertificates | None:
        if self.arm is None:
            return None
        from azure.identity import DefaultAzureCredential  # heavy: only for Azure's ARM

        return ArmCertificates(DefaultAzureCredential(), *self.arm)

    def serve_call(self, work: Callable[[ServiceClient], Any]) -> Any:
        with self.service() as client:
            try:
                return work(client)
            except (ServiceError, ValueError, AzureError) as exc:  # AzureError: ARM (certificates)
                raise CliError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc

    def info(self) -> ConnectionInfo:
        if self._info is None:
            if self.data is None:
                raise CliError(f"no data directory: pass --data DIR or set {DATA_ENV}")
            if not (self.data / CONNECTION_FILE).exists():
                raise CliError(
                    f"{self.data / CONNECTION_FILE} not found:"
                    f" is `client-app-cloud serve --data {self.data}` running?"
                )
            try:
                self._info = ConnectionInfo.load(self.data)
            except (OSError, ValueError, TypeError) as exc:
                raise CliError(f"{self.data / CONNECTION_FILE}: unreadable ({exc})") from exc
        return self._info

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The local cloud's local-only API (stored telemetry, consumer groups: bearer_api.py)."""
        info = self.info()
        headers = {**kwargs.pop("headers", {}), "Authorization": f"Bearer {info.api_token}"}
        timeout = kwargs.pop("timeout", 30.0)
        try:
            response = httpx.request(method, info.api_url + path, headers=headers, timeout=timeout, **kwargs)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach the local cloud API at {info.api_url}: {exc}") from exc
        if response.is_error:
            try:
                message = response.json().get("message") or response.text
            except ValueError:
                message = response.text
            raise CliError(f"{message} (HTTP {response.status_code})")
        return response.json() if response.content else None

    def output(self, value: Any, human: Callable[[Any], Iterable[str]]) -> None:
        if self.as_json:
            click.echo(json.dumps(value, indent=2))
        else:
            for line in human(value):
                click.echo(line)


def _options(function: Callable[..., Any]) -> Callable[..., Any]:
    """--data and --json on every command (also accepted before the command name)."""
    function = click.option("--json", "as_json", is_flag=True, default=None, help="Machine-readable output.")(
        function
    )
    function = click.option(
        "--data", type=click.Path(file_okay=False, path_type=Path), default=None,
        help=f"Local cloud data directory (default: ${DATA_ENV}).",
    )(function)  # fmt: skip

    @click.pass_context
    def wrapper(ctx: click.Context, data: Path | None, as_json: bool | None, **kwargs: Any) -> Any:
        parent: Context = ctx.obj
        merged = Context(data or parent.data, parent.as_json if as_json is None else as_json, parent.hub_cs,
                         parent.dps_cs, parent.arm)  # fmt: skip
        return ctx.invoke(function, merged, **kwargs)

    return update_wrapper(wrapper, function)


def _table(rows: list[list[str]], header: list[str]) -> Iterable[str]:
    if not rows:
        yield "(none)"
        return
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        yield "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()


@click.group()
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), envvar=DATA_ENV, default=None,
              help=f"Local cloud data directory (env {DATA_ENV}).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--hub-connection-string", envvar="IOTHUB_CONNECTION_STRING", default=None,
              help="Operate this IoT Hub (e.g. a real one) instead of the local cloud's.")  # fmt: skip
@click.option("--dps-connection-string", envvar="DPS_CONNECTION_STRING", default=None,
              help="Operate this DPS instead of the local cloud's.")  # fmt: skip
@click.option("--subscription", envvar="AZURE_SUBSCRIPTION_ID", default=None,
              help="Azure subscription of the DPS (certificates through ARM, with azure-identity's default "
                   "credential).")  # fmt: skip
@click.option("--resource-group", default=None, help="Resource group of the DPS on Azure.")
@click.option("--dps-name", "dps_resource", default=None, help="Name of the DPS resource on Azure.")
@click.pass_context
def cli(ctx: click.Context, data: Path | None, as_json: bool, hub_connection_string: str | None,
        dps_connection_string: str | None, subscription: str | None, resource_group: str | None,
        dps_resource: str | None) -> None:  # fmt: skip
    """Local DPS + IoT Hub for client_app: run it, and operate it (or a real hub and DPS)."""
    arm = (subscription, resource_group, dps_resource)
    if any(arm) and not all(arm):
        raise CliError("--subscription, --resource-group and --dps-name go together")
    ctx.obj = Context(data, as_json, hub_connection_string, dps_connection_string,
                      arm if all(arm) else None)  # type: ignore[arg-type]  # fmt: skip


# ---- serve ------------------------------------------------------------------------------------------


def _host_port(value: str | None) -> tuple[str, int] | None:
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise click.BadParameter(f"{value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


@cli.command()
@click.option(
    "--data", type=click.Path(file_okay=False, path_type=Path), default=None, help="Data directory."
)
@click.option(
    "--bind", default="127.0.0.1", show_default=True, help="Address of the proxy front and the API."
)
@click.option("--proxy-port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="HTTP CONNECT front port (0 = a free port).")  # fmt: skip
@click.option("--no-proxy", is_flag=True, help="Do not open the HTTP CONNECT front.")
@click.option(
    "--mqtt-listen",
    metavar="HOST:8883",
    default="127.0.0.1:8883",
    show_default=True,
    help="Direct TLS listener (port 8883, the only one devices dial; another copy: 127.0.0.2:8883).",
)
@click.option("--no-direct", is_flag=True, help="No direct listener: devices come through the proxy front.")
@click.option(
    "--websocket-listen",
    metavar="HOST:443",
    default=None,
    help="Direct MQTT-over-WebSockets listener (port 443; the proxy front serves it on CONNECT …:443).",
)
@click.option("--api-port", type=click.IntRange(0, 65535), default=0, show_default=True)
@click.option("--service-listen", metavar="HOST:PORT", default=None,
              help="Azure's service API (HTTPS), e.g. 127.0.0.3:443 (default: free 127.x:443).")  # fmt: skip
@click.option("--assignment-delay", type=click.FloatRange(0, 300), default=0.0, show_default=True,
              help="Seconds DPS reports 'assigning' before 'assigned' (0 = answer at once).")  # fmt: skip
@click.option("--telemetry-retention", type=click.IntRange(0), default=1_000_000, show_default=True,
              help="Keep the newest N telemetry messages (0 = keep everything).")  # fmt: skip
@click.option("--dps-name", default="dps.client-app.localhost", show_default=True)
@click.option("--hub-name", default="hub.client-app.localhost", show_default=True)
@click.option(
    "--amqp-host",
    default=None,
    metavar="ADDRESS",
    help="Loopback address of the AMQP endpoint, ports 5671/5672 (default: one kept per data dir).",
)
@click.option(
    "--eventhub-host",
    default=None,
    metavar="ADDRESS",
    help="Loopback address of the Event Hubs-compatible endpoint, ports 5671/5672 (default: one kept per"
    " data dir).",
)
@click.option("--no-amqp", is_flag=True, help="Do not open the AMQP endpoint (C2D, Event Hubs-compatible).")
@click.option("--partitions", type=click.IntRange(1, 32), default=4, show_default=True,
              help="Event Hubs-compatible partitions (fixed once telemetry is stored).")  # fmt: skip
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_obj
def serve(obj: Context, data: Path | None, bind: str, proxy_port: int, no_proxy: bool,
          mqtt_listen: str, no_direct: bool, websocket_listen: str | None, api_port: int,
          service_listen: str | None, assignment_delay: float, telemetry_retention: int, dps_name: str,
          hub_name: str, amqp_host: str | None, eventhub_host: str | None, no_amqp: bool, partitions: int,
          verbose: bool) -> None:  # fmt: skip
    """Run the local cloud in the foreground; writes DATA/connection.json once ready. Ctrl-C stops it."""
    data_dir = data or obj.data
    if data_dir is None:
        raise CliError(f"no data directory: pass --data DIR or set {DATA_ENV}")
    from client_app.cloud.server import CloudSettings, serve_forever  # heavy (FastAPI, uvicorn): only here

    listen = None if no_direct else _host_port(mqtt_listen)
    if no_proxy and listen is None:
        raise CliError("--no-proxy with --no-direct: devices could not reach the cloud at all")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = CloudSettings(
            data_dir=data_dir, bind_host=bind, proxy_port=None if no_proxy else proxy_port,
            mqtt_listen=listen, websocket_listen=_host_port(websocket_listen), api_port=api_port,
            assignment_delay=assignment_delay, dps_name=dps_name, hub_name=hub_name,
            telemetry_retention=telemetry_retention or None, service_listen=_host_port(service_listen),
            amqp=not no_amqp, amqp_host=amqp_host, eventhub_host=eventhub_host, partitions=partitions,
        )  # fmt: skip
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    try:
        serve_forever(settings)
    except OSError as exc:
        hint = " (another local cloud? --mqtt-listen 127.0.0.2:8883 or --no-direct)" if listen else ""
        raise CliError(f"cannot start: {exc}{hint}") from exc


# ---- certificates ---------------------------------------------------------------------------------------


def _certificate_lines(cert: dict[str, Any]) -> list[str]:
    p = cert["properties"]
    state = "verified" if p.get("isVerified") else "unverified"
    expiry, thumbprint = p.get("expiry"), p.get("thumbprint")
    return [f"{cert['name']}: {p.get('subject')} ({state}, expires {expiry}, thumbprint {thumbprint})"]


def _read_pem(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from exc


def _arm(ctx: Context, work: Callable[[ArmCertificates], Any]) -> Any:
    """Certificates go through ARM: the local cloud's, or Azure's (with --subscription, --resource-group
    and --dps-name besides the connection strings)."""

    def call(client: ServiceClient) -> Any:
        if client.certificates is None:
            raise ValueError("certificates need --subscription, --resource-group and --dps-name (Azure ARM)")
        result = work(client.certificates)
        return result.as_dict() if hasattr(result, "as_dict") else result

    return ctx.serve_call(call)


@cli.group()
def certificates() -> None:
    """CA certificates: upload, prove possession, list, delete."""


@certificates.command("upload")
@click.argument("name")
@click.argument("pemfile", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--verified", is_flag=True, help="Trust without proof of possession (Azure's auto-verify).")
@_options
def certificates_upload(ctx: Context, name: str, pemfile: Path, verified: bool) -> None:
    """Upload CA certificate NAME from PEMFILE (unverified unless --verified; an existing NAME is refused)."""
    pem = _read_pem(pemfile).encode()
    ctx.output(_arm(ctx, lambda arm: arm.upload(name, pem, verified=verified)), _certificate_lines)


@certificates.command("verification-code")
@click.argument("name")
@_options
def certificates_code(ctx: Context, name: str) -> None:
    """Generate a verification code for NAME (printed alone on the last line)."""
    result = _arm(ctx, lambda arm: arm.verification_code(name))
    code = result["properties"]["verificationCode"]
    ctx.output(result, lambda _: [
        f"Issue a certificate with CN = this code, signed by the key of '{name}', then run"
        f" `client-app-cloud certificates verify {name} PEMFILE`:",
        code,
    ])  # fmt: skip


@certificates.command("verify")
@click.argument("name")
@click.argument("pemfile", type=click.Path(dir_okay=False, path_type=Path))
@_options
def certificates_verify(ctx: Context, name: str, pemfile: Path) -> None:
    """Verify NAME with the proof-of-possession certificate in PEMFILE."""
    pem = _read_pem(pemfile)
    ctx.output(_arm(ctx, lambda arm: arm.verify(name, pem)), _certificate_lines)


@certificates.command("list")
@_options
def certificates_list(ctx: Context) -> None:
    """List CA certificates."""
    result = _arm(ctx, lambda arm: [c.as_dict() for c in arm.list()])
    ctx.output(result, lambda r: [line for c in r for line in _certificate_lines(c)] or ["(none)"])


@certificates.command("delete")
@click.argument("name")
@_options
def certificates_delete(ctx: Context, name: str) -> None:
    """Delete CA certificate NAME (groups that name it match nothing until it is back)."""
    _arm(ctx, lambda arm: arm.delete(name))
    ctx.output({"deleted": name}, lambda _: [f"deleted certificate {name}"])


# ---- enrollment groups and enrollments ------------------------------------------------------------------


def _group_lines(group: dict[str, Any]) -> list[str]:
    x509 = group["attestation"]["x509"]
    if x509.get("caReferences"):
        backing = f"CA {x509['caReferences']['primary']}"
    else:  # signingCertificates: DPS returns the certificate's info, not its PEM
        info = x509["signingCertificates"]["primary"]["info"]
        backing = f"signing certificate {info['subjectName']} (SHA-256 {info['sha256Thumbprint']})"
    return [f"{group['enrollmentGroupId']}: {backing}, {group['provisioningStatus']}"]


def _registration_rows(registrations: list[dict[str, Any]]) -> Iterable[str]:
    rows = [[r["registrationId"], r["deviceId"], r["status"], r["substatus"], r["lastUpdatedDateTimeUtc"]]
            for r in registrations]  # fmt: skip
    return _table(rows, ["REGISTRATION ID", "DEVICE ID", "STATUS", "SUBSTATUS", "UPDATED"])


@cli.group("enrollment-groups")
def enrollment_groups() -> None:
    """X.509 enrollment groups backed by a verified CA certificate."""


@enrollment_groups.command("create")
@click.argument("group_id")
@click.option("--ca", "ca_name", help="Name of a verified CA certificate (caReferences).")
@click.option(
    "--signing-certificate",
    type=click.Path(dir_okay=False, path_type=Path),
    help="PEM of a CA certificate the group holds itself (signingCertificates): a release's intermediate.",
)
@click.option("--disabled", is_flag=True, help="Create it disabled.")
@_options
def groups_create(
    ctx: Context, group_id: str, ca_name: str | None, signing_certificate: Path | None, disabled: bool
) -> None:
    """Create enrollment group GROUP_ID on CA certificate --ca, or on --signing-certificate (an existing
    GROUP_ID is refused)."""
    if (ca_name is None) == (signing_certificate is None):
        raise CliError("give exactly one of --ca NAME and --signing-certificate FILE")
    try:
        pem = signing_certificate.read_bytes() if signing_certificate else None
    except OSError as exc:
        raise CliError(f"cannot read {signing_certificate}: {exc}") from exc
    ctx.output(
        ctx.serve_call(
            lambda c: c.create_group(group_id, ca_name, enabled=not disabled, signing_certificate=pem)
        ),
        _group_lines,
    )


@enrollment_groups.command("enable")
@click.argument("group_id")
@_options
def groups_enable(ctx: Context, group_id: str) -> None:
    """Enable GROUP_ID."""
    ctx.output(ctx.serve_call(lambda c: c.set_group_status(group_id, True)), _group_lines)


@enrollment_groups.command("disable")
@click.argument("group_id")
@_options
def groups_disable(ctx: Context, group_id: str) -> None:
    """Disable GROUP_ID: its devices can no longer register (hub devices stay)."""
    ctx.output(ctx.serve_call(lambda c: c.set_group_status(group_id, False)), _group_lines)


@enrollment_groups.command("show")
@click.argument("group_id")
@_options
def groups_show(ctx: Context, group_id: str) -> None:
    """Show GROUP_ID."""
    ctx.output(ctx.serve_call(lambda c: c.group(group_id)), _group_lines)


@enrollment_groups.command("list")
@_options
def groups_list(ctx: Context) -> None:
    """List enrollment groups."""
    groups = ctx.serve_call(lambda c: c.groups())
    ctx.output(groups, lambda r: [line for g in r for line in _group_lines(g)] or ["(none)"])


@enrollment_groups.command("delete")
@click.argument("group_id")
@_options
def groups_delete(ctx: Context, group_id: str) -> None:
    """Delete GROUP_ID (registrations and hub devices stay)."""
    ctx.serve_call(lambda c: c.delete_group(group_id))
    ctx.output({"deleted": group_id}, lambda _: [f"deleted enrollment group {group_id}"])


@enrollment_groups.command("registrations")
@click.argument("group_id")
@_options
def groups_registrations(ctx: Context, group_id: str) -> None:
    """Registrations provisioned through GROUP_ID."""
    ctx.output(ctx.serve_call(lambda c: c.registrations(group_id)), _registration_rows)


@cli.group()
def enrollments() -> None:
    """Individual enrollments (by registration ID): block one device of a group."""


def _enrollment_lines(enrollment: dict[str, Any]) -> list[str]:
    return [f"{enrollment['registrationId']}: individual enrollment, {enrollment['provisioningStatus']}"]


@enrollments.command("block")
@click.argument("registration_id")
@_options
def enrollments_block(ctx: Context, registration_id: str) -> None:
    """Block REGISTRATION_ID: a disabled individual enrollment (refused even if its group is enabled)."""
    ctx.output(ctx.serve_call(lambda c: c.put_enrollment(registration_id, enabled=False)), _enrollment_lines)


@enrollments.command("unblock")
@click.argument("registration_id")
@_options
def enrollments_unblock(ctx: Context, registration_id: str) -> None:
    """Delete the individual enrollment of REGISTRATION_ID (the device falls back to its group)."""
    ctx.serve_call(lambda c: c.delete_enrollment(registration_id))
    ctx.output({"deleted": registration_id}, lambda _: [f"deleted individual enrollment {registration_id}"])


@enrollments.command("list")
@_options
def enrollments_list(ctx: Context) -> None:
    """List individual enrollments."""
    items = ctx.serve_call(lambda c: c.enrollments())
    ctx.output(items, lambda r: [line for e in r for line in _enrollment_lines(e)] or ["(none)"])


# ---- devices ----------------------------------------------------------------------------------------------


def _device_rows(devices: list[dict[str, Any]]) -> Iterable[str]:
    rows = [[d["deviceId"], d["status"], d["connectionState"], d["lastActivityTime"] or "-",
             str(d["cloudToDeviceMessageCount"])] for d in devices]  # fmt: skip
    return _table(rows, ["DEVICE ID", "STATUS", "CONNECTION", "LAST ACTIVITY", "C2D QUEUED"])


@cli.group()
def devices() -> None:
    """Hub devices: list, show, enable, disable."""


@devices.command("list")
@_options
def devices_list(ctx: Context) -> None:
    """Devices with their connection state."""
    ctx.output(ctx.serve_call(lambda c: c.devices()), _device_rows)


@devices.command("show")
@click.argument("device_id")
@_options
def devices_show(ctx: Context, device_id: str) -> None:
    """One device."""
    ctx.output(ctx.serve_call(lambda c: c.device(device_id)), lambda d: json.dumps(d, indent=2).splitlines())


@devices.command("enable")
@click.argument("device_id")
@_options
def devices_enable(ctx: Context, device_id: str) -> None:
    """Let DEVICE_ID connect again."""
    ctx.output(ctx.serve_call(lambda c: c.set_device_status(device_id, True)), lambda d: _device_rows([d]))


@devices.command("disable")
@click.argument("device_id")
@_options
def devices_disable(ctx: Context, device_id: str) -> None:
    """Refuse DEVICE_ID at the hub (CONNACK 5) and drop its connection."""
    ctx.output(ctx.serve_call(lambda c: c.set_device_status(device_id, False)), lambda d: _device_rows([d]))


# ---- messaging ---------------------------------------------------------------------------------------------


def _json_arg(value: str | None, option: str) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError as exc:
        raise CliError(f"{option}: not valid JSON ({exc})") from exc


def _properties(values: tuple[str, ...]) -> dict[str, str]:
    result = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--property {item!r}: expected KEY=VALUE")
        result[key] = value
    return result


@cli.command()
@click.argument("device_id")
@click.argument("text")
@click.option("--property", "-p", "props", multiple=True, metavar="K=V", help="Custom property (repeatable).")
@click.option("--content-type", default=None, help="e.g. application/json")
@click.option("--message-id", default=None)
@click.option("--ttl", type=float, default=None, help="Seconds until the message expires (default 3600).")
@click.option("--ack", type=click.Choice(["none", "positive", "negative", "full"]), default=None,
              help="Delivery feedback to ask for (IoT Hub's iothub-ack).")  # fmt: skip
@_options
def send(ctx: Context, device_id: str, text: str, props: tuple[str, ...], content_type: str | None,
         message_id: str | None, ttl: float | None, ack: str | None) -> None:  # fmt: skip
    """Send a cloud-to-device message with body TEXT to DEVICE_ID over AMQP, as a backend does (to the hub of
    --hub-connection-string / IOTHUB_CONNECTION_STRING, or the local cloud's)."""
    from client_app.cloud.amqp.operator import C2dMessage, OperatorError, send_c2d  # proton: only here

    connection_string, ca_file = _amqp_target(ctx, ctx.hub_cs, "hub")
    if connection_string is None:
        raise CliError("this local cloud runs without its AMQP endpoint (--no-amqp): C2D goes over AMQP")
    message = C2dMessage(
        device_id, text.encode(), _properties(props), message_id, None, content_type, ttl, ack
    )
    try:
        sent = send_c2d(connection_string, message, ca_file=ca_file)
    except OperatorError as exc:
        raise CliError(str(exc)) from exc
    ctx.output(
        {"messageId": sent, "deviceId": device_id}, lambda r: [f"queued message {sent} for {device_id}"]
    )


@cli.command()
@click.option("--timeout", type=click.FloatRange(0.1, 3600), default=30.0, show_default=True,
              help="Seconds to wait for a batch.")  # fmt: skip
@_options
def feedback(ctx: Context, timeout: float) -> None:
    """The next batch of C2D delivery feedback (messages sent with --ack), completed once printed."""
    from client_app.cloud.amqp.operator import OperatorError, receive_feedback

    connection_string, ca_file = _amqp_target(ctx, ctx.hub_cs, "hub")
    if connection_string is None:
        raise CliError("this local cloud runs without its AMQP endpoint (--no-amqp): no feedback")
    try:
        records = receive_feedback(connection_string, ca_file=ca_file, timeout=timeout)
    except OperatorError as exc:
        raise CliError(str(exc)) from exc
    ctx.output(records, lambda rs: [f"{r['enqueuedTimeUtc']} {r['deviceId']} {r['originalMessageId']}: "
                                    f"{r['statusCode']}" for r in rs] or ["(none)"])  # fmt: skip


def _amqp_target(ctx: Context, explicit: str | None, kind: str) -> tuple[str | None, str | None]:
    """(connection string, CA file) for the AMQP commands: the one given (Azure: the system's CAs, or
    SSL_CERT_FILE), else the local cloud's own: the Event Hubs-compatible connection string, or the hub one
    made of its `service` policy key and the AMQP address; None when that cloud runs without AMQP."""
    if explicit:
        return explicit, None
    info = ctx.info()
    if kind == "eventhub":
        return info.eventhub_compatible_connection_string, info.server_ca_pem
    return local_amqp_connection_string(info), info.server_ca_pem


@cli.command()
@click.argument("device_id")
@click.argument("method")
@click.option("--payload", default=None, help="JSON payload (default null).")
@click.option("--timeout", type=click.FloatRange(min=0.1, max=300), default=30.0, show_default=True)
@_options
def invoke(ctx: Context, device_id: str, method: str, payload: str | None, timeout: float) -> None:
    """Invoke direct method METHOD on DEVICE_ID; prints the device's status and payload."""
    result = ctx.serve_call(lambda c: c.invoke(device_id, method, _json_arg(payload, "--payload"), timeout))
    ctx.output(result, lambda r: [f"status: {r['status']}", f"payload: {json.dumps(r['payload'])}"])


@cli.command()
@click.argument("device_id")
@click.option("--set-desired", default=None, metavar="JSON", help="Merge-patch the desired properties.")
@_options
def twin(ctx: Context, device_id: str, set_desired: str | None) -> None:
    """Show DEVICE_ID's twin, or patch its desired properties."""
    patch = _json_arg(set_desired, "--set-desired")
    if patch is not None and not isinstance(patch, dict):
        raise CliError("--set-desired: expected a JSON object")
    if patch is None:
        result = ctx.serve_call(lambda c: c.twin(device_id))
    else:
        result = ctx.serve_call(lambda c: c.update_twin(device_id, {"properties": {"desired": patch}}))
    ctx.output(result, lambda r: json.dumps(r["properties"], indent=2).splitlines())


@cli.group("consumer-groups")
def consumer_groups() -> None:
    """Consumer groups of the Event Hubs-compatible endpoint ($Default and yours)."""


@consumer_groups.command("list")
@_options
def consumer_groups_list(ctx: Context) -> None:
    result = ctx.call("GET", "/consumerGroups")
    ctx.output(result, lambda r: [g["name"] for g in r["value"]])


@consumer_groups.command("add")
@click.argument("name")
@_options
def consumer_groups_add(ctx: Context, name: str) -> None:
    result = ctx.call("PUT", f"/consumerGroups/{_segment(name)}")
    ctx.output(result, lambda r: [f"consumer group {r['name']}"])


@consumer_groups.command("delete")
@click.argument("name")
@_options
def consumer_groups_delete(ctx: Context, name: str) -> None:
    ctx.call("DELETE", f"/consumerGroups/{_segment(name)}")
    ctx.output({"deleted": name}, lambda _: [f"deleted consumer group {name}"])


def _telemetry_line(message: dict[str, Any]) -> str:
    body = message.get("body", message.get("bodyBase64", ""))
    extras = {**message["systemProperties"], **message["properties"]}
    tail = f"  {json.dumps(extras)}" if extras else ""
    return f"{message['enqueuedTimeUtc']} {message['deviceId']}: {body}{tail}"


@cli.command()
@click.argument("device_id", required=False)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new messages until Ctrl-C.")
@click.option(
    "--last", type=click.IntRange(1, 1000), default=20, show_default=True, help="How many to show first."
)
@click.option(
    "--eventhub-connection-string",
    envvar=EVENTHUB_CONNECTION_ENV,
    default=None,
    help=f"Follow this Event Hubs-compatible endpoint (env {EVENTHUB_CONNECTION_ENV}).",
)
@_options
def telemetry(ctx: Context, device_id: str | None, follow: bool, last: int,
              eventhub_connection_string: str | None) -> None:  # fmt: skip
    """Device-to-cloud messages (all devices, or DEVICE_ID): the stored ones, then with --follow new ones as
    they arrive on the Event Hubs-compatible endpoint (AMQP), as a backend reads them."""
    after = 0
    if not eventhub_connection_string:  # the local cloud's stored messages first
        params: dict[str, Any] = {"tail": last}
        if device_id:
            params["deviceId"] = device_id
        result = ctx.call("GET", "/telemetry", params=params)
        _print_messages(ctx, result["value"])
        after = result["last"]
    elif not follow:
        raise CliError("--eventhub-connection-string reads new messages only: add --follow")
    try:  # Ctrl-C ends a follow quietly, wherever it lands
        if follow:
            click.echo("following new messages; Ctrl-C stops", err=True)
            connection_string, ca_file = _amqp_target(ctx, eventhub_connection_string, "eventhub")
            if connection_string is not None:
                _follow_amqp(ctx, connection_string, ca_file, device_id)
                return
        while follow:
            time.sleep(FOLLOW_INTERVAL)
            params = {"after": after, "limit": 1000, **({"deviceId": device_id} if device_id else {})}
            result = ctx.call("GET", "/telemetry", params=params)
            _print_messages(ctx, result["value"])
            after = result["last"]
    except KeyboardInterrupt:
        pass


def _follow_amqp(ctx: Context, connection_string: str, ca_file: str | None, device_id: str | None) -> None:
    from client_app.cloud.amqp.operator import OperatorError, follow_telemetry  # azure-eventhub: only here

    def on_event(message: dict[str, Any]) -> None:
        if device_id is None or message["deviceId"] == device_id:
            _print_messages(ctx, [message])

    try:
        follow_telemetry(connection_string, on_event, ca_file=ca_file)
    except OperatorError as exc:
        raise CliError(str(exc)) from exc


def _print_messages(ctx: Context, messages: list[dict[str, Any]]) -> None:
    for message in messages:
        click.echo(json.dumps(message) if ctx.as_json else _telemetry_line(message))
    sys.stdout.flush()


def main() -> None:
    try:
        cli(prog_name="client-app-cloud", auto_envvar_prefix=None)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # a bug must still be one clear line, not a traceback
        click.echo(f"client-app-cloud: internal error: {exc!r}", err=True)
        if os.environ.get("CLIENT_APP_CLOUD_DEBUG"):
            raise
        sys.exit(1)


if __name__ == "__main__":
    main()


# ---- Azure's service API: query and registrations ---------------------------------------------------------


@cli.command()
@click.argument("sql")
@click.option("--page-size", type=click.IntRange(1, 1000), default=100, show_default=True)
@_options
def query(ctx: Context, sql: str, page_size: int) -> None:
    """Run an IoT Hub query, e.g. "SELECT * FROM devices WHERE properties.reported.appVersion = '1.0'"."""
    rows = ctx.serve_call(lambda client: client.query(sql, page_size))

    def human(items: list[dict[str, Any]]) -> Iterable[str]:
        if items and all("deviceId" in r and "properties" in r for r in items):  # whole twins: one line each
            return _table([[r["deviceId"], r.get("status", ""), r.get("connectionState", "")] for r in items],
                          ["DEVICE ID", "STATUS", "CONNECTION"])  # fmt: skip
        return [json.dumps(r, sort_keys=True) for r in items] or ["(none)"]

    ctx.output(rows, human)


@cli.command()
@click.argument("group_id")
@_options
def registrations(ctx: Context, group_id: str) -> None:
    """Registration states DPS holds for enrollment group GROUP_ID (Azure's registration query)."""
    ctx.output(ctx.serve_call(lambda client: client.registrations(group_id)), _registration_rows)


@cli.command("revoke-signer")
@click.argument("certfile", type=click.Path(dir_okay=False, path_type=Path))
@_options
def revoke_signer_command(ctx: Context, certfile: Path) -> None:
    """Revoke the release whose devices CERTFILE (an intermediate) issued: a disabled enrollment group on it
    (other releases keep provisioning) and its hub devices disabled (found by their reported issuer)."""
    from client_app.cloud.service.revoke import revoke_signer
    from client_app.pki import PkiError, load_certificates

    try:
        certificates = load_certificates(certfile.read_bytes())
    except (OSError, PkiError, ValueError) as exc:
        raise CliError(f"cannot read {certfile}: {exc}") from exc
    if len(certificates) != 1:
        raise CliError(f"{certfile}: expected one certificate, found {len(certificates)}")
    result = ctx.serve_call(lambda client: revoke_signer(client, certificates[0]))
    ctx.output(result.__dict__, lambda _: result.lines())
