"""The AMQP 1.0 service endpoint: one proton handler that routes links by address, in one of two roles.

Nodes (addresses may come as `amqps://host/path`, `/path` or `path`):
  $cbs                                    put-token (auth.py)                                     both roles
  /messages/devicebound                   C2D sends (c2d.py), settled once the hub has queued     HUB
                                          or refused them
  /messages/serviceBound/feedback         C2D feedback batches                                    HUB
  $management                             Event Hubs `READ` of com.microsoft:eventhub / :partition  EVENT_HUBS
  {entity}/ConsumerGroups/{cg}/Partitions/{n}   Event Hubs-compatible receivers (eventhub.py)   EVENT_HUBS
A role refuses the other's addresses as any unknown entity (amqp:not-found). The HUB role runs on a thread of
the cloud's process (hub calls are handed to its asyncio loop and answered back through `AmqpThread.call`, so
neither side waits for the other); the EVENT_HUBS role runs in a process of its own (eventhubs_process.py) and
reads telemetry from the cloud's SQLite database only, so the MQTT path does no work per event for it.
"""

from __future__ import annotations

import enum
import json
import logging
import sqlite3
from collections.abc import Callable
from typing import Any

from cproton_ffi import ffi, lib
from proton import Condition, Delivery, Endpoint, Handler, Link, Message, ProtonException, Terminus, int32

from client_app.cloud.amqp.auth import ConnectionAuth, TokenChecker, split_address
from client_app.cloud.amqp.bridge import AmqpThread
from client_app.cloud.amqp.c2d import (
    C2D_PATH,
    FEEDBACK_PATH,
    C2dRefused,
    C2dRequest,
    c2d_request,
    feedback_message,
    refusal_for,
)
from client_app.cloud.amqp.eventhub import (
    SELECTOR_FILTER,
    SEQUENCE_NUMBER,
    EventEncoder,
    FilterError,
    StoredEvent,
    TelemetryReader,
    parse_partition_address,
    parse_selector,
)
from client_app.cloud.errors import CloudError

log = logging.getLogger("client_app.cloud.amqp")

CBS_NODE = "$cbs"
MANAGEMENT_NODE = "$management"
CREDIT = 100  # credit we give senders (C2D, requests); topped up as deliveries arrive
READ_BATCH = 500  # rows per query when a receiver has credit
POLL_SECONDS = 0.05  # while receivers are attached, new telemetry goes out at most this long after its commit


class _Refused(Exception):
    def __init__(self, condition: str, description: str) -> None:
        super().__init__(description)
        self.condition = condition
        self.description = description


class _EventReader:
    """One Event Hubs receiver: its partition, the next sequence number it gets, and its connection's I/O."""

    def __init__(self, partition: int, next_sequence: int, io: Any) -> None:
        self.partition = partition
        self.next_sequence = next_sequence
        self.io = io


class Role(enum.Enum):
    HUB = "hub"  # the hub's own AMQP host: C2D and feedback (needs the running hub)
    EVENT_HUBS = "eventhubs"  # the Event Hubs-compatible endpoint: `$management` and partition receivers


class AmqpEndpoint(Handler):
    """Proton event handler; `thread` (set by whoever starts it) runs it."""

    def __init__(self, *, role: Role, hub: Any, checker: TokenChecker, reader: TelemetryReader, entity: str,
                 hub_name: str, created: str) -> None:  # fmt: skip
        super().__init__()
        self.role = role
        self.hub = hub
        self.checker = checker
        self.reader = reader
        self.entity = entity
        self.hub_name = hub_name
        self.created = created
        self.thread: AmqpThread | None = None
        self._event_links: set[Link] = set()
        self._feedback_links: set[Link] = set()
        self._encode_event = EventEncoder().encode  # this endpoint's thread's own
        self._polling = False  # a poll for new telemetry is scheduled
        self._newest: int | None = None  # the newest offset the last poll saw

    # ---- hand-offs -------------------------------------------------------------------------------
    def feedback_added(self) -> None:
        if self.thread is not None:
            self.thread.call(self._pump_feedback_all)

    # ---- connections -----------------------------------------------------------------------------
    def on_connection_init(self, event: Any) -> None:
        event.connection.auth = ConnectionAuth()
        event.connection.reply_links = {}
        event.connection.early_replies = {}

    def on_connection_remote_open(self, event: Any) -> None:
        connection = event.connection
        if connection.state & Endpoint.LOCAL_UNINIT:
            connection.container = "client-app-cloud"
            connection.open()

    def on_session_remote_open(self, event: Any) -> None:
        if event.session.state & Endpoint.LOCAL_UNINIT:
            event.session.open()

    def on_session_remote_close(self, event: Any) -> None:
        event.session.close()

    def on_connection_remote_close(self, event: Any) -> None:
        event.connection.close()

    def on_transport_error(self, event: Any) -> None:
        condition = event.transport.condition
        log.info("AMQP connection failed: %s", condition.description if condition else "transport error")

    def connection_gone(self, connection: Any) -> None:
        """The socket closed: its links no longer take events or feedback."""
        for link in [link for link in self._event_links if link.connection == connection]:
            self._event_links.discard(link)
        for link in [link for link in self._feedback_links if link.connection == connection]:
            self._feedback_links.discard(link)

    # ---- links -----------------------------------------------------------------------------------
    def on_link_remote_open(self, event: Any) -> None:
        link: Link = event.link
        if not link.state & Endpoint.LOCAL_UNINIT:
            return
        terminus = link.remote_source if link.is_sender else link.remote_target
        address = terminus.address or ""
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        try:
            self._attach(link, address)
        except _Refused as refused:
            # Refuse as AMQP says: attach with a null terminus, then detach with the error.
            (link.source if link.is_sender else link.target).type = Terminus.UNSPECIFIED
            link.open()
            link.condition = Condition(refused.condition, refused.description)
            link.close()
            log.info("AMQP link to %r refused: %s", address, refused.description)
            return
        link.open()
        if link.is_receiver:
            link.flow(CREDIT)
        _, path = split_address(address)
        for answer in link.connection.early_replies.pop(path, []) if link.is_sender else []:
            link.send(answer)  # requests that came before this reply link's attach

    def _attach(self, link: Link, address: str) -> None:
        _, path = split_address(address)
        connection = link.connection
        if path == CBS_NODE or (path == MANAGEMENT_NODE and self.role is Role.EVENT_HUBS):
            if link.is_sender:
                connection.reply_links[path] = link
            return
        lowered = path.lower()
        partition = parse_partition_address(path)
        ours = lowered in (C2D_PATH, FEEDBACK_PATH) if self.role is Role.HUB else partition is not None
        if not ours:  # unknown, or the other role's (Event Hubs has a host of its own, as on Azure)
            raise _Refused("amqp:not-found", f"The messaging entity {address!r} could not be found.")
        if not connection.auth.covers(path):
            raise _Refused(
                "amqp:unauthorized-access", f"Unauthorized: put a token for {address!r} on $cbs first."
            )
        if lowered == FEEDBACK_PATH and link.is_sender:
            link.feedback_in_flight = set()
            self._feedback_links.add(link)
        elif partition is not None and link.is_sender:
            self._attach_event_receiver(link, partition)
        elif lowered != C2D_PATH or not link.is_receiver:
            raise _Refused("amqp:not-found", f"The messaging entity {address!r} could not be found.")

    def _attach_event_receiver(self, link: Link, address: Any) -> None:
        if address.entity.lower() != self.entity.lower():
            raise _Refused("amqp:not-found", f"The messaging entity '{address.entity}' could not be found.")
        if address.consumer_group.lower() not in self.reader.consumer_groups():
            raise _Refused(
                "amqp:not-found", f"The consumer group '{address.consumer_group}' could not be found."
            )
        if not 0 <= address.partition < self.reader.partitions:
            raise _Refused("amqp:not-found", f"The partition '{address.partition}' could not be found.")
        try:
            position = parse_selector(_selector(link))
            first = self.reader.start_sequence(address.partition, position)
        except FilterError as exc:
            raise _Refused("amqp:not-implemented", str(exc)) from exc
        link.event_reader = _EventReader(address.partition, first, link.connection.io)
        # Events go pre-settled (AMQP 1.0 part 2.7.3: the sender's attach states the mode it uses), as Event
        # Hubs sends them to the receivers of Azure's .NET SDK, which ask for that (`SettleType =
        # SettleMode.SettleOnSend` in Azure.Messaging.EventHubs AmqpConnectionScope.CreateReceivingLinkAsync).
        # The Python and Node SDKs ask for unsettled and take settled ones as they come; a reader's position
        # is its own, so nothing hangs on a settlement, and the endpoint keeps no record of each event sent.
        link.snd_settle_mode = Link.SND_SETTLED
        self._event_links.add(link)
        if not self._polling:
            self._polling, self._newest = True, None
            self._schedule_poll()

    def on_link_remote_close(self, event: Any) -> None:
        link = event.link
        self._event_links.discard(link)
        self._feedback_links.discard(link)
        if not link.state & Endpoint.LOCAL_CLOSED:
            link.close()

    def on_link_flow(self, event: Any) -> None:
        link = event.link
        if link in self._event_links:
            self._pump(link)
        elif link in self._feedback_links:
            self._pump_feedback(link)

    # ---- deliveries ------------------------------------------------------------------------------
    def on_delivery(self, event: Any) -> None:
        delivery: Delivery = event.delivery
        link = delivery.link
        if link.is_sender:
            if delivery.updated:
                self._sent_settled(link, delivery)
            return
        if not delivery.readable or delivery.partial:
            return
        message = Message()
        payload = link.recv(delivery.pending)
        link.advance()
        _, path = split_address(link.target.address or "")
        if path != CBS_NODE and path != MANAGEMENT_NODE:
            self._c2d(delivery, payload)  # credit comes back once the hub has taken or refused it
            return
        link.flow(1)
        try:
            message.decode(payload)
        except ProtonException as exc:
            _reject(delivery, C2dRefused("amqp:decode-error", f"the request cannot be decoded ({exc})"))
            return
        if path == CBS_NODE:
            self._put_token(link, delivery, message)
        else:
            self._management(link, delivery, message)

    def _reply(self, link: Link, node: str, request: Message, status: int, description: str, body: Any = None
               ) -> None:  # fmt: skip
        answer = Message(
            body=body,
            correlation_id=request.id,
            address=request.reply_to,
            properties={"status-code": int32(status), "status-description": description},
        )
        # Answer in a later round, once the request's settlement has gone out: proton may write a transfer
        # before a disposition, and uamqp drops an answer to a request it has no settlement for yet
        # ("Did not receive send confirmation for pending operation", azure-uamqp-c amqp_management.c).
        assert self.thread is not None
        self.thread.call(self._send_reply, link.connection, node, answer)

    @staticmethod
    def _send_reply(connection: Any, node: str, answer: Message) -> None:
        reply_link = connection.reply_links.get(node)
        if reply_link is None or reply_link.state & Endpoint.LOCAL_CLOSED:
            # A client may send its request before its reply link's attach arrives: answer once it does.
            connection.early_replies.setdefault(node, []).append(answer)
            return
        reply_link.send(answer)

    def _put_token(self, link: Link, delivery: Delivery, request: Message) -> None:
        props = request.properties or {}
        if props.get("operation") != "put-token":
            status, description = 400, f"The $cbs operation {props.get('operation')!r} is not supported."
        else:
            status, description = self.checker.put_token(
                link.connection.auth, props.get("type"), props.get("name"), request.body
            )
        _settle(delivery, Delivery.ACCEPTED)
        self._reply(link, CBS_NODE, request, status, description)

    def _management(self, link: Link, delivery: Delivery, request: Message) -> None:
        props = request.properties or {}
        _settle(delivery, Delivery.ACCEPTED)
        name, kind = props.get("name"), props.get("type")
        if props.get("operation") != "READ":
            return self._reply(link, MANAGEMENT_NODE, request, 400, "Only READ operations are supported.")
        if str(name).lower() != self.entity.lower():
            return self._reply(
                link, MANAGEMENT_NODE, request, 404, f"The messaging entity {name!r} could not be found."
            )
        if not link.connection.auth.covers(self.entity):
            problem = self.checker.verify(props.get("security_token"), self.entity)
            if problem is not None:
                return self._reply(link, MANAGEMENT_NODE, request, 401, problem)
        if kind == "com.microsoft:eventhub":
            body = self.reader.hub_properties(self.entity, self.created)
        elif kind == "com.microsoft:partition":
            partition = str(props.get("partition", ""))
            if not partition.isdigit() or int(partition) >= self.reader.partitions:
                return self._reply(
                    link, MANAGEMENT_NODE, request, 404, f"The partition {partition!r} could not be found."
                )
            body = self.reader.partition_properties(self.entity, int(partition))
        else:
            return self._reply(link, MANAGEMENT_NODE, request, 400, f"The type {kind!r} is not supported.")
        return self._reply(link, MANAGEMENT_NODE, request, 200, "OK", body)

    def _c2d(self, delivery: Delivery, payload: bytes) -> None:
        message = Message()
        try:
            message.decode(payload)
            request = c2d_request(message)
        except ProtonException as exc:
            _reject(delivery, C2dRefused("amqp:decode-error", f"the message cannot be decoded ({exc})"))
            return
        except C2dRefused as refused:
            _reject(delivery, refused)
            return
        assert self.thread is not None
        self.thread.on_loop(self._send_on_loop, delivery, request)

    def _send_on_loop(self, delivery: Delivery, request: C2dRequest) -> None:
        """On the asyncio loop: queue the message at the hub, then settle the delivery on the reactor."""
        assert self.thread is not None
        try:
            self.hub.send_c2d(request.device_id, request.body, **request.options)
        except CloudError as error:
            self.thread.call(_reject, delivery, refusal_for(error))
            return
        except Exception as exc:  # an internal failure is the sender's error to see, not a dead endpoint
            log.exception("C2D over AMQP failed")
            self.thread.call(_reject, delivery, C2dRefused("amqp:internal-error", str(exc)))
            return
        self.thread.call(_settle, delivery, Delivery.ACCEPTED)

    # ---- Event Hubs receivers --------------------------------------------------------------------
    def _schedule_poll(self) -> None:
        assert self.thread is not None
        self.thread.call_later(POLL_SECONDS, self._poll)

    def _poll(self) -> None:
        """While receivers are attached: when telemetry was committed since the last look (one indexed
        `MAX(seq)`), serve every receiver from SQLite and flush its connection. A commit between the look and
        the reads goes out now or at the next poll, which sees a newer offset: nothing is missed, and each
        receiver's next sequence number keeps it from getting an event twice."""
        if not self._event_links:
            self._polling = False
            return
        try:
            newest = self.reader.newest_offset()
        except sqlite3.Error as exc:
            log.warning("looking for new telemetry failed: %s", exc)
            newest = None
        if newest is None or newest != self._newest:
            self._newest = newest
            links = list(self._event_links)
            for link in links:
                self._pump(link)
            for io in {link.event_reader.io for link in links}:
                io.process()
        self._schedule_poll()

    def _pump(self, link: Link) -> None:
        """Send as many events as the link has credit for, from SQLite in batches."""
        reader: _EventReader = link.event_reader
        try:
            while link.credit > 0 and link.state & Endpoint.LOCAL_ACTIVE:
                limit = min(link.credit, READ_BATCH)
                events, offsets = self.reader.read(reader.partition, reader.next_sequence, limit)
                _send_settled(link, events, offsets, self._encode_event)
                if events:
                    reader.next_sequence = events[-1][SEQUENCE_NUMBER] + 1
                if len(events) < limit:  # all there is (newer rows: the next poll)
                    break
        except sqlite3.Error as exc:
            log.warning("reading telemetry for an Event Hubs receiver failed: %s", exc)

    def _sent_settled(self, link: Link, delivery: Delivery) -> None:
        """The peer settled or decided on something we sent: events just settle; feedback is completed
        (deleted) on ACCEPTED, and stays for the next receiver otherwise."""
        if link in self._feedback_links and self.thread is not None:
            if delivery.remote_state == Delivery.ACCEPTED:  # ids stay "in flight": they are never reused
                self.thread.on_loop(self.hub.delete_feedback, delivery.feedback_ids)
            else:
                link.feedback_in_flight.difference_update(delivery.feedback_ids)
                self.thread.call(self._pump_feedback, link)
        delivery.settle()

    # ---- feedback --------------------------------------------------------------------------------
    def _pump_feedback_all(self) -> None:
        for link in list(self._feedback_links):
            self._pump_feedback(link)

    def _pump_feedback(self, link: Link) -> None:
        if link.credit <= 0 or not link.state & Endpoint.LOCAL_ACTIVE:
            return
        # A record goes to one receiver at a time; it is deleted when accepted (back on the loop), and offered
        # again to the next receiver if its link goes away first.
        in_flight = set().union(*(other.feedback_in_flight for other in self._feedback_links))
        rows = self.reader.db.execute("SELECT id, record FROM c2d_feedback ORDER BY id LIMIT 100").fetchall()
        rows = [row for row in rows if row["id"] not in in_flight]
        if not rows:
            return
        delivery = link.send(feedback_message([json.loads(row["record"]) for row in rows], self.hub_name))
        delivery.feedback_ids = [row["id"] for row in rows]
        link.feedback_in_flight.update(delivery.feedback_ids)


def _send_settled(link: Link, events: list[StoredEvent], offsets: list[int],
                  encode: Callable[[StoredEvent, int], bytes]) -> None:  # fmt: skip
    """Each event as one pre-settled delivery, tagged with its sequence number (unique on the link). These are
    the engine calls `Sender.delivery`, `stream` and `Delivery.settle` make (settling the link's current
    delivery also advances the link past it: `pn_delivery_settle` in proton's engine.c), without the Python
    `Delivery` wrapper they would build on the way (its record and dispositions). Kept on proton's own binding
    (`cproton_ffi`, pinned with python-qpid-proton in uv.lock) because the public calls cost about 4 times as
    much: 6.1 µs of CPU per event instead of 1.6 (`time.process_time` over 10,000 deliveries of 300 bytes,
    proton 0.40). The bytes sent are proton's either way (`EventEncoder` uses its encoder)."""
    impl, new_delivery, send, settle = link._impl, lib.pn_delivery, lib.pn_link_send, lib.pn_delivery_settle
    for event, offset in zip(events, offsets, strict=True):
        payload = encode(event, offset)
        tag = str(event[SEQUENCE_NUMBER]).encode()
        delivery = new_delivery(impl, (len(tag), ffi.from_buffer(tag)))
        send(impl, payload, len(payload))
        settle(delivery)


def _selector(link: Link) -> str | None:
    data = link.remote_source.filter
    data.rewind()
    filters = data.get_object() if data.next() is not None else None
    if not isinstance(filters, dict):
        return None
    for key, value in filters.items():
        if key == SELECTOR_FILTER or getattr(value, "descriptor", None) == SELECTOR_FILTER:
            return str(getattr(value, "value", value))
    return None


def _settle(delivery: Delivery, outcome: int) -> None:
    """Settle a received delivery; a C2D sender gets its credit back only now (back-pressure)."""
    link = delivery.link
    delivery.update(outcome)
    delivery.settle()
    _, path = split_address(link.target.address or "")
    if path.lower() == C2D_PATH and link.state & Endpoint.LOCAL_ACTIVE:
        link.flow(1)


def _reject(delivery: Delivery, refused: C2dRefused) -> None:
    delivery.local.condition = Condition(refused.condition, refused.description)
    _settle(delivery, Delivery.REJECTED)
