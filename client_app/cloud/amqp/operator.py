"""The operator's AMQP side: C2D sends and a telemetry follower that work the same against Azure and the local
cloud, chosen only by connection string (plus the local cloud's CA file).

C2D goes out with python-qpid-proton (a runtime dependency; azure-iot-hub's uamqp is only a test
dependency), the way Azure's SDKs send it: SASL ANONYMOUS, a CBS put-token of a policy's SAS token for the hub
host on `$cbs`, then a message to `/messages/devicebound` with `to = /devices/{id}/messages/devicebound`; a
refusal comes back on the delivery. Telemetry is read with azure-eventhub from the Event Hubs-compatible
endpoint.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from proton import ConnectionException, Delivery, Message, ProtonException, SSLDomain, Timeout
from proton.utils import BlockingConnection, LinkDetached

from client_app.cloud.sas import generate_token, parse_connection_string
from client_app.hosts import is_ip_address

TOKEN_TYPE = "servicebus.windows.net:sastoken"


class OperatorError(Exception):
    """One line for the operator (the CLI prints it)."""


@dataclass(frozen=True)
class C2dMessage:
    device_id: str
    body: bytes
    properties: Mapping[str, str]
    message_id: str | None = None
    correlation_id: str | None = None
    content_type: str | None = None
    ttl_seconds: float | None = None
    ack: str | None = None


def _hub(connection_string: str) -> tuple[str, str, str]:
    try:
        fields = parse_connection_string(connection_string)
        return fields["HostName"], fields["SharedAccessKeyName"], fields["SharedAccessKey"]
    except (KeyError, ValueError) as exc:
        raise OperatorError(f"not an IoT Hub connection string with a shared access key ({exc})") from exc


def _ssl(host: str, ca_file: str | None) -> SSLDomain:
    """Azure: the system's CAs and the host name. With the local cloud's own CA file and a loopback IP
    address (proton checks names as DNS names only, never IP SANs): the chain up to that CA alone."""
    domain = SSLDomain(SSLDomain.MODE_CLIENT)
    ca_file = ca_file or os.environ.get("SSL_CERT_FILE")  # the usual override, as the service client's
    if ca_file:
        domain.set_trusted_ca_db(ca_file)
    name_check = not (ca_file and is_ip_address(host))
    domain.set_peer_authentication(
        SSLDomain.VERIFY_PEER_NAME if name_check else SSLDomain.VERIFY_PEER, ca_file
    )
    return domain


@contextmanager
def _hub_connection(
    connection_string: str, ca_file: str | None, timeout: float
) -> Iterator[BlockingConnection]:
    host, policy, key = _hub(connection_string)
    try:
        connection = BlockingConnection(f"amqps://{host}:5671", timeout=timeout,
                                        ssl_domain=_ssl(host, ca_file), allowed_mechs="ANONYMOUS",
                                        sasl_enabled=True)  # fmt: skip
    except (ProtonException, OSError) as exc:
        raise OperatorError(f"cannot reach {host}:5671 over AMQP ({exc})") from exc
    try:
        _put_token(connection, host, generate_token(host, key, policy), timeout)
        yield connection
    except (ConnectionException, LinkDetached, Timeout) as exc:
        raise OperatorError(f"AMQP connection to {host} failed: {exc}") from exc
    finally:
        connection.close()


def _put_token(connection: BlockingConnection, host: str, token: str, timeout: float) -> None:
    requests = connection.create_sender("$cbs")
    replies = connection.create_receiver("$cbs")
    request = Message(body=token, id=str(uuid.uuid4()), reply_to="cbs",
                      properties={"operation": "put-token", "type": TOKEN_TYPE, "name": host})  # fmt: skip
    requests.send(request)
    reply = replies.receive(timeout=timeout)
    replies.accept()
    status = (reply.properties or {}).get("status-code")
    if status not in (200, 202):
        description = (reply.properties or {}).get("status-description", "")
        raise OperatorError(f"the hub refused the token ({status and int(status)}): {description}")


class C2dSender:
    """One AMQP connection and `/messages/devicebound` link for many C2D messages, as a backend keeps its
    service client open; its SAS token is good for `TOKEN_TTL` seconds, so reopen one older than that."""

    TOKEN_TTL = 3600

    def __init__(self, connection_string: str, *, ca_file: str | None = None, timeout: float = 30) -> None:
        self._timeout = timeout
        self.broken = False  # the connection failed: open a new sender
        self._stack = ExitStack()
        self.opened = time.monotonic()
        self._connection = self._stack.enter_context(_hub_connection(connection_string, ca_file, timeout))
        try:
            self._link = self._connection.create_sender("/messages/devicebound").link
        except (ConnectionException, LinkDetached, Timeout) as exc:
            self.close()
            raise OperatorError(f"AMQP sender link refused: {exc}") from exc

    def send(self, message: C2dMessage) -> str:
        """Send one message; returns its message id, or raises OperatorError with the hub's refusal."""
        message_id = message.message_id or str(uuid.uuid4())
        properties: dict[str, Any] = dict(message.properties)
        if message.ack:
            properties["iothub-ack"] = message.ack
        address = f"/devices/{quote(message.device_id, safe='')}/messages/devicebound"
        amqp = Message(body=message.body, inferred=True, id=message_id, correlation_id=message.correlation_id,
                       content_type=message.content_type, properties=properties or None,
                       address=address)  # fmt: skip
        if message.ttl_seconds is not None:  # Azure's SDKs set the absolute expiry time, not the header's ttl
            amqp.expiry_time = time.time() + message.ttl_seconds
        try:
            delivery = self._link.send(amqp)
            self._connection.wait(
                lambda: delivery.settled, timeout=self._timeout, msg="waiting for the hub to take the message"
            )
        except (ProtonException, OSError) as exc:  # the connection broke, the link detached, or a timeout
            self.broken = True
            raise OperatorError(f"AMQP send failed: {exc}") from exc
        state, condition = delivery.remote_state, delivery.remote.condition
        delivery.settle()  # a kept-open link must not collect its deliveries
        if state != Delivery.ACCEPTED:
            reason = f"{condition.name}: {condition.description}" if condition else f"outcome {state}"
            raise OperatorError(f"the hub refused the message ({reason})")
        return message_id

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> C2dSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def send_c2d(connection_string: str, message: C2dMessage, *, ca_file: str | None = None, timeout: float = 30
             ) -> str:  # fmt: skip
    """Send one C2D message; returns its message id, or raises OperatorError with the hub's refusal."""
    with C2dSender(connection_string, ca_file=ca_file, timeout=timeout) as sender:
        return sender.send(message)


def receive_feedback(connection_string: str, *, ca_file: str | None = None, timeout: float = 30
                     ) -> list[dict[str, Any]]:  # fmt: skip
    """The next batch of C2D feedback records (completed, so the hub forgets them); [] after `timeout`."""
    with _hub_connection(connection_string, ca_file, timeout) as connection:
        receiver = connection.create_receiver("/messages/serviceBound/feedback")
        try:
            batch = receiver.receive(timeout=timeout)
        except Timeout:
            return []
        try:
            records = json.loads(bytes(batch.body) if not isinstance(batch.body, str) else batch.body)
        except (TypeError, ValueError) as exc:
            receiver.reject()
            raise OperatorError(f"a feedback batch that is not JSON ({exc})") from exc
        receiver.accept()
        return list(records)


def follow_telemetry(eventhub_connection_string: str, on_event: Callable[[dict[str, Any]], None], *,
                     ca_file: str | None = None, consumer_group: str = "$Default",
                     starting_position: str = "@latest", stop: threading.Event | None = None
                     ) -> None:  # fmt: skip
    """Print-ready dicts of every new event on every partition until `stop` is set (or Ctrl-C)."""
    from azure.eventhub import EventHubConsumerClient  # heavy: only for this command

    options: dict[str, Any] = {"connection_verify": ca_file} if ca_file else {}
    try:
        client = EventHubConsumerClient.from_connection_string(eventhub_connection_string, consumer_group,
                                                               **options)  # fmt: skip
    except ValueError as exc:
        raise OperatorError(f"not an Event Hubs connection string ({exc})") from exc
    done = stop or threading.Event()
    failures: list[Exception] = []

    def on_error(_context: Any, error: Exception) -> None:
        failures.append(error)
        done.set()

    worker = threading.Thread(target=client.receive, daemon=True, kwargs={
        "on_event": lambda _context, event: event is not None and on_event(event_dict(event)),
        "on_error": on_error, "starting_position": starting_position, "max_wait_time": 1,
    })  # fmt: skip
    worker.start()
    try:
        while not done.wait(0.5) and worker.is_alive():
            pass
    finally:
        client.close()
        worker.join(10)
    if failures:
        raise OperatorError(f"reading telemetry failed: {failures[0]}")


def _text(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _iso(moment: Any) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


def event_dict(event: Any) -> dict[str, Any]:
    """An EventData as the local-only API's telemetry JSON (deviceId, enqueuedTimeUtc, body, properties)."""
    system = {_text(k): _text(v) for k, v in (event.system_properties or {}).items()}
    body = event.body_as_str(encoding="utf-8") if event.body is not None else ""
    return {
        "sequenceNumber": event.sequence_number,
        "deviceId": system.get("iothub-connection-device-id"),
        "enqueuedTimeUtc": _iso(event.enqueued_time),
        "systemProperties": {k: v for k, v in (("messageId", system.get("message-id")),
                                               ("contentType", system.get("content-type")),
                                               ("contentEncoding", system.get("content-encoding"))) if v},
        "properties": {_text(k): _text(v) for k, v in (event.properties or {}).items()},
        "body": body,
    }  # fmt: skip
