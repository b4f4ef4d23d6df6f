"""`client-app-cloud`: run the local cloud (`serve`) and operate it through its HTTP API."""

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

from client_app.cloud.info import CONNECTION_FILE, ConnectionInfo

DATA_ENV = "CLIENT_APP_CLOUD_DATA"
HUB_CONNECTION_ENV = "IOTHUB_CONNECTION_STRING"
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
    def __init__(self, data: Path | None, as_json: bool) -> None:
        self.data = data
        self.as_json = as_json
        self._info: ConnectionInfo | None = None

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
        info = self.info()
        headers = {"Authorization": f"Bearer {info.api_token}"}
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
        merged = Context(data or parent.data, parent.as_json if as_json is None else as_json)
        return ctx.invoke(function, merged, **kwargs)

    return update_wrapper(wrapper, function)


def _list(ctx: Context, path: str, lines: Callable[[dict[str, Any]], list[str]]) -> None:
    """GET a collection (`{"value": [...]}`) and print each item's lines."""
    result = ctx.call("GET", path)
    ctx.output(result, lambda r: [line for item in r["value"] for line in lines(item)] or ["(none)"])


def _delete(ctx: Context, path: str, what: str, name: str) -> None:
    ctx.call("DELETE", path)
    ctx.output({"deleted": name}, lambda _: [f"deleted {what} {name}"])


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
@click.pass_context
def cli(ctx: click.Context, data: Path | None, as_json: bool) -> None:
    """Local DPS + IoT Hub for client_app: run it, and operate it."""
    ctx.obj = Context(data, as_json)


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
@click.option("--no-amqp", is_flag=True, help="Do not open the AMQP endpoint (C2D, Event Hubs-compatible).")
@click.option("--partitions", type=click.IntRange(1, 32), default=4, show_default=True,
              help="Event Hubs-compatible partitions (fixed once telemetry is stored).")  # fmt: skip
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_obj
def serve(obj: Context, data: Path | None, bind: str, proxy_port: int, no_proxy: bool,
          mqtt_listen: str, no_direct: bool, websocket_listen: str | None, api_port: int,
          assignment_delay: float, telemetry_retention: int, dps_name: str, hub_name: str,
          amqp_host: str | None, no_amqp: bool, partitions: int,
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
            telemetry_retention=telemetry_retention or None, amqp=not no_amqp, amqp_host=amqp_host,
            partitions=partitions,
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
    state = "verified" if p["isVerified"] else "unverified"
    return [
        f"{cert['name']}: {p['subject']} ({state}, expires {p['expiry']}, SHA-256 {p['sha256Thumbprint']})"
    ]


def _read_pem(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from exc


@cli.group()
def certificates() -> None:
    """CA certificates: upload, prove possession, list, delete."""


@certificates.command("upload")
@click.argument("name")
@click.argument("pemfile", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--verified", is_flag=True, help="Trust without proof of possession (Azure's auto-verify).")
@_options
def certificates_upload(ctx: Context, name: str, pemfile: Path, verified: bool) -> None:
    """Upload CA certificate NAME from PEMFILE (unverified unless --verified)."""
    body = {"certificate": _read_pem(pemfile), "isVerified": verified}
    ctx.output(ctx.call("PUT", f"/certificates/{_segment(name)}", json=body), _certificate_lines)


@certificates.command("verification-code")
@click.argument("name")
@_options
def certificates_code(ctx: Context, name: str) -> None:
    """Generate a verification code for NAME (printed alone on the last line)."""
    result = ctx.call("POST", f"/certificates/{_segment(name)}/generateVerificationCode")
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
    result = ctx.call(
        "POST", f"/certificates/{_segment(name)}/verify", json={"certificate": _read_pem(pemfile)}
    )
    ctx.output(result, _certificate_lines)


@certificates.command("list")
@_options
def certificates_list(ctx: Context) -> None:
    """List CA certificates."""
    _list(ctx, "/certificates", _certificate_lines)


@certificates.command("delete")
@click.argument("name")
@_options
def certificates_delete(ctx: Context, name: str) -> None:
    """Delete CA certificate NAME (groups that name it match nothing until it is back)."""
    _delete(ctx, f"/certificates/{_segment(name)}", "certificate", name)


# ---- enrollment groups and enrollments ------------------------------------------------------------------


def _group_lines(group: dict[str, Any]) -> list[str]:
    ca = group["attestation"]["x509"]["caReferences"]["primary"]
    return [f"{group['enrollmentGroupId']}: CA {ca}, {group['provisioningStatus']}"]


def _registration_rows(registrations: list[dict[str, Any]]) -> Iterable[str]:
    rows = [[r["registrationId"], r["deviceId"], r["status"], r["substatus"], r["lastUpdatedDateTimeUtc"]]
            for r in registrations]  # fmt: skip
    return _table(rows, ["REGISTRATION ID", "DEVICE ID", "STATUS", "SUBSTATUS", "UPDATED"])


@cli.group("enrollment-groups")
def enrollment_groups() -> None:
    """X.509 enrollment groups backed by a verified CA certificate."""


@enrollment_groups.command("create")
@click.argument("group_id")
@click.option("--ca", "ca_name", required=True, help="Name of a verified CA certificate.")
@click.option("--disabled", is_flag=True, help="Create it disabled.")
@_options
def groups_create(ctx: Context, group_id: str, ca_name: str, disabled: bool) -> None:
    """Create (or replace) enrollment group GROUP_ID on CA certificate --ca."""
    body = {
        "attestation": {"type": "x509", "x509": {"caReferences": {"primary": ca_name}}},
        "provisioningStatus": "disabled" if disabled else "enabled",
    }
    ctx.output(ctx.call("PUT", f"/enrollmentGroups/{_segment(group_id)}", json=body), _group_lines)


def _set_group_status(ctx: Context, group_id: str, status: str) -> None:
    group = ctx.call("GET", f"/enrollmentGroups/{_segment(group_id)}")
    body = {
        "attestation": group["attestation"],
        "provisioningStatus": status,
        "initialTwin": group["initialTwin"],
    }
    ctx.output(ctx.call("PUT", f"/enrollmentGroups/{_segment(group_id)}", json=body), _group_lines)


@enrollment_groups.command("enable")
@click.argument("group_id")
@_options
def groups_enable(ctx: Context, group_id: str) -> None:
    """Enable GROUP_ID."""
    _set_group_status(ctx, group_id, "enabled")


@enrollment_groups.command("disable")
@click.argument("group_id")
@_options
def groups_disable(ctx: Context, group_id: str) -> None:
    """Disable GROUP_ID: its devices can no longer register (hub devices stay)."""
    _set_group_status(ctx, group_id, "disabled")


@enrollment_groups.command("show")
@click.argument("group_id")
@_options
def groups_show(ctx: Context, group_id: str) -> None:
    """Show GROUP_ID."""
    ctx.output(ctx.call("GET", f"/enrollmentGroups/{_segment(group_id)}"), _group_lines)


@enrollment_groups.command("list")
@_options
def groups_list(ctx: Context) -> None:
    """List enrollment groups."""
    _list(ctx, "/enrollmentGroups", _group_lines)


@enrollment_groups.command("delete")
@click.argument("group_id")
@_options
def groups_delete(ctx: Context, group_id: str) -> None:
    """Delete GROUP_ID (registrations and hub devices stay)."""
    _delete(ctx, f"/enrollmentGroups/{_segment(group_id)}", "enrollment group", group_id)


@enrollment_groups.command("registrations")
@click.argument("group_id")
@_options
def groups_registrations(ctx: Context, group_id: str) -> None:
    """Registrations provisioned through GROUP_ID."""
    result = ctx.call("GET", f"/enrollmentGroups/{_segment(group_id)}/registrations")
    ctx.output(result, lambda r: _registration_rows(r["value"]))


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
    result = ctx.call(
        "PUT", f"/enrollments/{_segment(registration_id)}", json={"provisioningStatus": "disabled"}
    )
    ctx.output(result, _enrollment_lines)


@enrollments.command("unblock")
@click.argument("registration_id")
@_options
def enrollments_unblock(ctx: Context, registration_id: str) -> None:
    """Delete the individual enrollment of REGISTRATION_ID (the device falls back to its group)."""
    _delete(ctx, f"/enrollments/{_segment(registration_id)}", "individual enrollment", registration_id)


@enrollments.command("list")
@_options
def enrollments_list(ctx: Context) -> None:
    """List individual enrollments."""
    _list(ctx, "/enrollments", _enrollment_lines)


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
    ctx.output(ctx.call("GET", "/devices"), lambda r: _device_rows(r["value"]))


@devices.command("show")
@click.argument("device_id")
@_options
def devices_show(ctx: Context, device_id: str) -> None:
    """One device."""
    ctx.output(
        ctx.call("GET", f"/devices/{_segment(device_id)}"), lambda d: json.dumps(d, indent=2).splitlines()
    )


@devices.command("enable")
@click.argument("device_id")
@_options
def devices_enable(ctx: Context, device_id: str) -> None:
    """Let DEVICE_ID connect again."""
    ctx.output(
        ctx.call("PUT", f"/devices/{_segment(device_id)}", json={"status": "enabled"}),
        lambda d: _device_rows([d]),
    )


@devices.command("disable")
@click.argument("device_id")
@_options
def devices_disable(ctx: Context, device_id: str) -> None:
    """Refuse DEVICE_ID at the hub (CONNACK 5) and drop its connection."""
    ctx.output(
        ctx.call("PUT", f"/devices/{_segment(device_id)}", json={"status": "disabled"}),
        lambda d: _device_rows([d]),
    )


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
@click.option("--hub-connection-string", envvar=HUB_CONNECTION_ENV, default=None,
              help=f"Send over AMQP to this IoT hub (env {HUB_CONNECTION_ENV}).")  # fmt: skip
@_options
def send(ctx: Context, device_id: str, text: str, props: tuple[str, ...], content_type: str | None,
         message_id: str | None, ttl: float | None, ack: str | None, hub_connection_string: str | None
         ) -> None:  # fmt: skip
    """Send a cloud-to-device message with body TEXT to DEVICE_ID over AMQP, as a backend does."""
    from client_app.cloud.amqp.operator import C2dMessage, OperatorError, send_c2d  # proton: only here

    connection_string, ca_file = _amqp_target(ctx, hub_connection_string, "hub")
    if connection_string is None:  # a local cloud without its AMQP endpoint (serve --no-amqp)
        body = {"body": text, "properties": _properties(props), "contentType": content_type,
                "messageId": message_id, "ttlSeconds": ttl}  # fmt: skip
        result = ctx.call("POST", f"/devices/{_segment(device_id)}/messages/deviceBound", json=body)
        ctx.output(result, lambda r: [f"queued message {r['messageId']} for {device_id}"])
        return
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
@click.option("--hub-connection-string", envvar=HUB_CONNECTION_ENV, default=None,
              help=f"Read this IoT hub's feedback (env {HUB_CONNECTION_ENV}).")  # fmt: skip
@_options
def feedback(ctx: Context, timeout: float, hub_connection_string: str | None) -> None:
    """The next batch of C2D delivery feedback (messages sent with --ack), completed once printed."""
    from client_app.cloud.amqp.operator import OperatorError, receive_feedback

    connection_string, ca_file = _amqp_target(ctx, hub_connection_string, "hub")
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
    eventhub = info.eventhub_compatible_connection_string
    if not eventhub or not info.amqp_host:
        return None, None
    if kind == "eventhub":
        return eventhub, info.server_ca_pem
    from client_app.cloud.sas import parse_connection_string

    fields = parse_connection_string(eventhub)
    policy, key = fields["SharedAccessKeyName"], fields["SharedAccessKey"]
    return f"HostName={info.amqp_host};SharedAccessKeyName={policy};SharedAccessKey={key}", info.server_ca_pem


@cli.command()
@click.argument("device_id")
@click.argument("method")
@click.option("--payload", default=None, help="JSON payload (default null).")
@click.option("--timeout", type=click.FloatRange(min=0.1, max=300), default=30.0, show_default=True)
@_options
def invoke(ctx: Context, device_id: str, method: str, payload: str | None, timeout: float) -> None:
    """Invoke direct method METHOD on DEVICE_ID; prints the device's status and payload."""
    body = {
        "methodName": method,
        "payload": _json_arg(payload, "--payload"),
        "responseTimeoutInSeconds": timeout,
    }
    result = ctx.call("POST", f"/twins/{_segment(device_id)}/methods", json=body, timeout=timeout + 10)
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
        result = ctx.call("GET", f"/twins/{_segment(device_id)}")
    else:
        result = ctx.call("PATCH", f"/twins/{_segment(device_id)}", json={"properties": {"desired": patch}})
    ctx.output(result, lambda r: json.dumps(r["properties"], indent=2).splitlines())


@cli.group("consumer-groups")
def consumer_groups() -> None:
    """Consumer groups of the Event Hubs-compatible endpoint ($Default and yours)."""


@consumer_groups.command("list")
@_options
def consumer_groups_list(ctx: Context) -> None:
    _list(ctx, "/consumerGroups", lambda g: [g["name"]])


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
    _delete(ctx, f"/consumerGroups/{_segment(name)}", "consumer group", name)


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
