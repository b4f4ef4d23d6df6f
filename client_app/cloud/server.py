"""Runs the local cloud: MQTT listeners (direct TLS, HTTP CONNECT front), the service API (HTTPS), the AMQP
endpoint and the local-only API, one loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import json
import logging
import secrets
import signal
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client_app.cloud.amqp.service import (
    AMQPS_PORT,
    AmqpService,
    AmqpTls,
    EventHubsConfig,
    EventHubsService,
    pick_loopback_host,
    policies_for_wire,
)
from client_app.cloud.dps.certificates import CertificateStore
from client_app.cloud.dps.enrollment import Enrollments
from client_app.cloud.dps.registration import Dps
from client_app.cloud.handler import CloudHandler
from client_app.cloud.hub.hub import Hub
from client_app.cloud.info import CONNECTION_FILE, SECRET_FIELDS, ConnectionInfo
from client_app.cloud.mqtt.ratelog import RateLimitedLog
from client_app.cloud.mqtt.server import WEBSOCKET_PORT, MqttConnection, MqttServer
from client_app.cloud.mqtt.tls import add_trusted, server_context
from client_app.cloud.sas import DPS_POLICIES, HUB_POLICIES, AccessPolicy, connection_string
from client_app.cloud.service.arm_api import add_arm_routes
from client_app.cloud.service.bearer_api import create_app
from client_app.cloud.service.http_server import BodyLimit, HttpServer, listening_socket
from client_app.cloud.service.policies import load_policies
from client_app.cloud.service.rest_api import ServiceAuth, create_service_app, error_response
from client_app.cloud.store import Store, TelemetryWriter, utc_now
from client_app.hosts import is_ip_address
from client_app.pki import (
    CertificateAuthority,
    atomic_write,
    certificate_to_pem,
    load_certificates,
    load_private_key,
    private_key_to_pem,
)

log = logging.getLogger("client_app.cloud")

SERVER_CA_FILE = "server-ca.pem"
MQTT_PORT = 8883  # Azure's SDKs dial 8883 and nothing else: DPS's assignedHub is a host name without a port
_ACCEPT_FAILED = "socket.accept() out of system resource"  # asyncio's message at fd exhaustion (EMFILE)


@dataclass
class CloudSettings:
    data_dir: Path
    bind_host: str = "127.0.0.1"  # proxy front and API
    proxy_port: int | None = 0  # 0 = a free port, None = no proxy front
    mqtt_listen: tuple[str, int] | None = None  # direct TLS listener, e.g. ("127.0.0.2", 8883)
    # Direct MQTT-over-WebSockets listener, e.g. ("127.0.0.2", 443); not the service API's address (443 too).
    websocket_listen: tuple[str, int] | None = None
    api_port: int = 0
    assignment_delay: float = 0.0
    dps_name: str = "dps.client-app.localhost"
    hub_name: str = "hub.client-app.localhost"
    telemetry_retention: int | None = 1_000_000  # newest messages kept; None keeps everything
    # HTTPS service API (IoT Hub + DPS REST, SAS). None: a free 127.x address on 443, where Azure's SDKs dial
    # (Node keeps no port from a host name); without the privilege for 443, 127.0.0.1 and a free port.
    service_listen: tuple[str, int] | None = None
    amqp: bool = True  # the AMQP service endpoint (C2D, feedback, Event Hubs-compatible telemetry)
    # its loopback address (ports 5671/5672); None = the service API's when free there, kept across restarts
    amqp_host: str | None = None
    # the Event Hubs-compatible endpoint's loopback address (5671/5672; a process of its own, as Azure gives
    # it a host of its own); None = a free one, kept across restarts
    eventhub_host: str | None = None
    partitions: int = 4  # Event Hubs-compatible partitions; fixed once telemetry is stored

    def __post_init__(self) -> None:
        service = [self.service_listen[0]] if self.service_listen else []
        amqp = [host for host in (self.amqp_host, self.eventhub_host) if host]
        if amqp and self.amqp_host == self.eventhub_host:
            raise ValueError("the AMQP and Event Hubs-compatible endpoints need an address each")
        for host in (self.bind_host, *self.direct_hosts, *service, *amqp):
            if not _is_loopback(host):
                raise ValueError(f"{host!r} is not a loopback address: the local cloud serves loopback only")
        # DPS answers assignedHub = the listener's address and devices dial it at 8883 (443 over WebSockets):
        # another port would send them to the wrong place. Other ports are for the HTTP CONNECT front.
        for what, listen, port in (("MQTT", self.mqtt_listen, MQTT_PORT),
                                   ("WebSocket", self.websocket_listen, WEBSOCKET_PORT)):  # fmt: skip
            if listen and listen[1] != port:
                raise ValueError(
                    f"the direct {what} listener must use port {port} (devices dial DPS's assignedHub at "
                    f"{port}); pick another loopback address instead, e.g. 127.0.0.2:{port}"
                )

    @property
    def direct_hosts(self) -> list[str]:
        """Addresses of the direct listeners: devices dial them and may name them as their hub."""
        return [listen[0] for listen in (self.mqtt_listen, self.websocket_listen) if listen]


class _ServerIdentity:
    """The cloud's own CA and TLS server certificate. Keys on disk are encrypted; the random passphrase is in
    the database, so this keeps keys out of plain text, not away from someone who can read DATA_DIR."""

    def __init__(self, store: Store, data_dir: Path) -> None:
        self.passphrase = store.secret("key-passphrase")
        if self.passphrase is None:
            self.passphrase = secrets.token_hex(32).encode()
            store.set_secret("key-passphrase", self.passphrase)
        self.ca_pem = data_dir / SERVER_CA_FILE
        self.ca_key = data_dir / "server-ca.key.pem"
        self.chain_pem = data_dir / "server.pem"
        self.key_pem = data_dir / "server.key.pem"
        self.ca = self._load_or_create_ca()

    def _load_or_create_ca(self) -> CertificateAuthority:
        if self.ca_pem.exists() and self.ca_key.exists():
            key = load_private_key(self.ca_key.read_bytes(), self.passphrase, str(self.ca_key))
            return CertificateAuthority(load_certificates(self.ca_pem)[0], key)
        ca = CertificateAuthority.root("client-app-cloud local server CA", days=3650)
        atomic_write(self.ca_key, private_key_to_pem(ca.key, self.passphrase), 0o600)
        atomic_write(self.ca_pem, certificate_to_pem(ca.certificate), 0o644)
        return ca

    def issue(self, dns_names: list[str], ip_addresses: list[str]) -> None:
        """A fresh server certificate at every start, so the SANs always match the current configuration."""
        cert, key = self.ca.issue_server(dns_names, ip_addresses, days=397)
        atomic_write(self.key_pem, private_key_to_pem(key, self.passphrase), 0o600)
        atomic_write(
            self.chain_pem, certificate_to_pem(cert) + certificate_to_pem(self.ca.certificate), 0o644
        )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class LocalCloud:
    """Everything of one running cloud; start()/stop() run on its event loop."""

    def __init__(self, settings: CloudSettings) -> None:
        self.settings = settings
        self.data_dir = Path(settings.data_dir).resolve()
        self.info: ConnectionInfo | None = None
        self._mqtt: MqttServer | None = None
        self._api: HttpServer | None = None
        self._service: HttpServer | None = None
        self._service_sock: socket.socket | None = None
        self._store: Store | None = None
        self._telemetry: TelemetryWriter | None = None
        self._amqp: AmqpService | None = None
        self.eventhubs: EventHubsService | None = None  # its `pid`: the endpoint's process, once started
        self._expiry_task: asyncio.Task[None] | None = None
        self.hub: Hub | None = None
        self.hub_policies: dict[str, AccessPolicy] = {}
        self.dps_policies: dict[str, AccessPolicy] = {}

    async def start(self) -> ConnectionInfo:
        s = self.settings
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(self._loop_exception)
        self._accept_errors = RateLimitedLog(log)
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.data_dir / CONNECTION_FILE).unlink(missing_ok=True)  # a stale file must not look "ready"
        store = self._store = Store(self.data_dir / "cloud.db")
        id_scope = store.meta("id_scope") or _new_id_scope(store)
        # The service API's address is chosen before the server certificate is issued, which names it.
        # Before the certificate: its IPs. The AMQP endpoint shares the service API's address where it can, so
        # one connection string serves REST and AMQP; that address is kept for the next start.
        service_sock = self._service_sock = _service_socket(s.service_listen, store.meta("amqp_host"))
        amqp_host = self._amqp_host(store, service_sock.getsockname()[0])
        eventhub_host = self._eventhub_host(store, amqp_host)
        identity = self._server_identity(store, service_sock.getsockname()[0], amqp_host, eventhub_host)
        certificates = CertificateStore(store)
        context = server_context(
            identity.chain_pem, identity.key_pem, _all_pem(certificates), identity.passphrase
        )
        certificates.on_change = lambda: add_trusted(
            context, _all_pem(certificates)
        )  # new CAs: next handshake
        self._telemetry = TelemetryWriter(store, keep=s.telemetry_retention, partitions=_partitions(store, s))
        self._telemetry.start()
        hub = self.hub = Hub(store, self._telemetry, {s.hub_name, *s.direct_hosts})
        enrollments = Enrollments(store, certificates)
        dps = Dps(id_scope, enrollments, hub, s.assignment_delay, self._hub_host_for)
        self._mqtt = MqttServer(
            CloudHandler(dps, hub), context, log=logging.getLogger("client_app.cloud.mqtt")
        )
        proxy = await self._mqtt.listen_proxy(s.bind_host, s.proxy_port) if s.proxy_port is not None else None
        direct = await self._mqtt.listen_tls(*s.mqtt_listen) if s.mqtt_listen else None
        if s.websocket_listen:
            await self._mqtt.listen_tls(*s.websocket_listen, websocket=True)
        token = _api_token(self.data_dir)
        api_url = await self._start_api(create_app(hub, token))
        service_host = await self._start_service(store, identity, certificates, enrollments, token)
        if amqp_host is not None:
            created = self._start_amqp(store, identity, amqp_host)
            if eventhub_host is not None:  # never without the hub's AMQP (see _eventhub_host)
                self._start_eventhubs(store, identity, eventhub_host, created)
        self.info = ConnectionInfo(
            id_scope=id_scope,
            # Through the proxy devices dial names; over the direct listener they dial its address.
            provisioning_host=s.dps_name if proxy or not direct else direct[0],
            hub_hostname=s.hub_name if proxy or not direct else direct[0],
            server_ca_pem=str(identity.ca_pem),
            mqtt_host=direct[0] if direct else None,
            mqtt_port=direct[1] if direct else None,
            proxy_host=proxy[0] if proxy else None,
            proxy_port=proxy[1] if proxy else None,
            api_url=api_url,
            api_token=token,
            data_dir=str(self.data_dir),
            service_host=service_host,
            iothub_connection_string=connection_string(service_host, self.hub_policies["iothubowner"]),
            dps_connection_string=connection_string(
                service_host, self.dps_policies["provisioningserviceowner"]
            ),
            amqp_host=amqp_host,
            amqp_port=AMQPS_PORT if amqp_host else None,
            eventhub_host=eventhub_host,
            eventhub_compatible_connection_string=self._eventhub_connection_string(eventhub_host),
        )
        atomic_write(
            self.data_dir / CONNECTION_FILE, json.dumps(self.info.to_json(), indent=2).encode(), 0o600
        )
        public = {k: v for k, v in self.info.to_json().items() if k not in SECRET_FIELDS}
        log.info("local cloud ready: %s", json.dumps(public))
        return self.info

    async def _start_service(self, store: Store, identity: _ServerIdentity, certificates: CertificateStore,
                             enrollments: Enrollments, token: str) -> str:  # fmt: skip
        """Azure's service API (IoT Hub and DPS REST, ARM certificates) over HTTPS; returns its HostName."""
        assert self.hub is not None and self._service_sock is not None
        host = _host_name(*self._service_sock.getsockname()[:2])
        self.hub_policies = load_policies(store, "hub", HUB_POLICIES)
        self.dps_policies = load_policies(store, "dps", DPS_POLICIES)
        app = create_service_app(
            self.hub, enrollments, ServiceAuth(host, self.hub_policies, self.dps_policies)
        )
        add_arm_routes(app, certificates, token)
        app.add_middleware(BodyLimit, render=error_response)
        tls = (str(identity.chain_pem), str(identity.key_pem), identity.passphrase.decode())
        self._service = HttpServer(app, self._service_sock, tls)
        await self._service.start()
        return host

    def _amqp_host(self, store: Store, service_ip: str) -> str | None:
        """The AMQP endpoint's loopback address: configured, else the service API's (one connection string
        for both) while 5671/5672 are free there, else the one used last time, else a new one."""
        if not self.settings.amqp:
            return None
        shared = service_ip if service_ip != "127.0.0.1" else store.meta("amqp_host")
        host = self.settings.amqp_host or pick_loopback_host(shared)
        if host is None:  # the MQTT side runs anyway: AMQP is for backends, devices never need it
            log.warning("AMQP endpoint off: no loopback address with ports 5671 and 5672 free")
            return None
        store.set_meta("amqp_host", host)
        return host

    def _eventhub_host(self, store: Store, amqp_host: str | None) -> str | None:
        """The Event Hubs-compatible endpoint's loopback address: configured, else last time's while its ports
        are free, else a new one; never the AMQP endpoint's (each has its own 5671/5672)."""
        if amqp_host is None:
            return None
        host = self.settings.eventhub_host or pick_loopback_host(
            store.meta("eventhub_host"), taken=[amqp_host]
        )
        if host is None:
            log.warning(
                "Event Hubs-compatible endpoint off: no loopback address with ports 5671 and 5672 free"
            )
            return None
        store.set_meta("eventhub_host", host)
        return host

    def _start_amqp(self, store: Store, identity: _ServerIdentity, host: str) -> str:
        """The hub's AMQP; returns when the hub was created (kept in the store), which Event Hubs reports."""
        s = self.settings
        assert self.hub is not None and self._telemetry is not None
        created = store.meta("hub_created") or utc_now()
        store.set_meta("hub_created", created)
        self._amqp = AmqpService(
            hub=self.hub, db_path=store.path, policies=lambda: self.hub_policies, hosts={host, s.hub_name},
            hub_name=s.hub_name, entity=eventhub_entity(s.hub_name), partitions=self._telemetry.partitions,
            created=created,
        )  # fmt: skip
        self.hub.on_feedback.append(self._amqp.endpoint.feedback_added)
        self._amqp.start(self._loop, host, AmqpTls(identity.chain_pem, identity.key_pem, identity.passphrase))
        self._expiry_task = asyncio.create_task(_sweep_expired_c2d(self.hub), name="c2d-expiry")
        return created

    def _start_eventhubs(self, store: Store, identity: _ServerIdentity, host: str, created: str) -> None:
        s = self.settings
        assert self._telemetry is not None
        self.eventhubs = EventHubsService(EventHubsConfig(
            db_path=str(store.path), host=host, entity=eventhub_entity(s.hub_name), hub_name=s.hub_name,
            created=created, partitions=self._telemetry.partitions,
            chain_pem=str(identity.chain_pem), key_pem=str(identity.key_pem),
            passphrase=identity.passphrase.decode(), policies=policies_for_wire(self.hub_policies),
            log_level=logging.getLogger("client_app.cloud").getEffectiveLevel(),
        ))  # fmt: skip
        self.eventhubs.start(self._loop)

    def _eventhub_connection_string(self, host: str | None) -> str | None:
        """What Azure's portal shows under "Built-in endpoints" (here with the `service` policy)."""
        if host is None:
            return None
        policy = self.hub_policies["service"]
        return (f"Endpoint=sb://{host}/;SharedAccessKeyName={policy.name};SharedAccessKey={policy.primary_key};"
                f"EntityPath={eventhub_entity(self.settings.hub_name)}")  # fmt: skip

    def _server_identity(self, store: Store, service_ip: str, *amqp_hosts: str | None) -> _ServerIdentity:
        """The TLS identity, its SANs covering both service names and every address clients may dial."""
        s = self.settings
        identity = _ServerIdentity(store, self.data_dir)
        hosts = (s.bind_host, *s.direct_hosts, service_ip, *amqp_hosts)
        identity.issue(
            [s.dps_name, s.hub_name, "localhost"],
            sorted({"127.0.0.1", *filter(is_ip_address, filter(None, hosts))}),
        )
        return identity

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """At fd exhaustion asyncio reports every failed accept() with a traceback (tens of thousands a
        second under a flood): one line per interval instead. Everything else goes to the default handler."""
        if context.get("message") == _ACCEPT_FAILED:
            self._accept_errors.log(
                logging.ERROR, "accept",
                "cannot accept connections: %s (out of file descriptors; `ulimit -n` is the limit)",
                context.get("exception"),
            )  # fmt: skip
            return
        loop.default_exception_handler(context)

    def drop_connection(self, client_id: str) -> bool:
        """Close a device's MQTT connection as a network failure would (tests, operator tooling)."""
        conn = self._mqtt.connections.get(client_id) if self._mqtt else None
        if conn is not None:
            self._loop.call_soon_threadsafe(conn.close, "dropped by the operator")
        return conn is not None

    def _hub_host_for(self, conn: MqttConnection) -> str:
        # Proxied devices dial names (the CONNECT line carries them); direct ones dial the listener address.
        return self.settings.hub_name if conn.proxy_target is not None else conn.local_host

    async def _start_api(self, app: Any) -> str:
        self._api = HttpServer(app, listening_socket(self.settings.bind_host, self.settings.api_port))
        await self._api.start()
        host, port = self._api.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    async def stop(self) -> None:
        (self.data_dir / CONNECTION_FILE).unlink(missing_ok=True)
        if self._mqtt is not None:
            await self._mqtt.close()
        if self._expiry_task is not None:
            self._expiry_task.cancel()
        if self._amqp is not None:
            self._amqp.stop()  # not to_thread: at interpreter exit (the demo) no executor takes new work
        if self.eventhubs is not None:
            self.eventhubs.stop()
        await asyncio.gather(*(http.stop() for http in (self._api, self._service) if http is not None))
        if self._service is None and self._service_sock is not None:  # start failed before serving it
            self._service_sock.close()
        if self.hub is not None:
            await self.hub.close()
        if self._telemetry is not None:
            await self._telemetry.stop()
        if self._store is not None:
            self._store.close()
        log.info("local cloud stopped")


def _all_pem(certificates: CertificateStore) -> bytes:
    return certificates.all_pem().encode()


async def _sweep_expired_c2d(hub: Hub, interval: float = 5.0) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            hub.expire_c2d()
        except Exception:  # a busy or failing store is logged; the next sweep tries again
            log.exception("C2D expiry sweep failed")


def eventhub_entity(hub_name: str) -> str:
    """The Event Hubs-compatible name: the hub's name, i.e. the first label of its host name."""
    return hub_name.split(".", 1)[0]


def _partitions(store: Store, settings: CloudSettings) -> int:
    """Partition count: kept in the store; the setting applies while no telemetry is stored."""
    kept = int(store.meta("partition_count") or settings.partitions)
    if kept != settings.partitions and store.one("SELECT 1 FROM telemetry LIMIT 1") is None:
        kept = settings.partitions
    store.set_meta("partition_count", str(kept))
    return kept


def _service_socket(listen: tuple[str, int] | None, preferred: str | None = None) -> socket.socket:
    """The service API's socket: as configured, or a free loopback address on 443 (see CloudSettings), the
    `preferred` one (last start's) first."""
    if listen is not None:
        try:
            return listening_socket(*listen)
        except OSError as exc:
            raise OSError(f"service API: cannot listen on {listen[0]}:{listen[1]} ({exc.strerror})") from exc
    for attempt in range(64):
        host = f"127.{secrets.randbelow(254) + 1}.{secrets.randbelow(256)}.{secrets.randbelow(253) + 2}"
        host = preferred if attempt == 0 and preferred and preferred != "127.0.0.1" else host
        try:
            return listening_socket(host, 443)
        except PermissionError:
            break  # no privilege for ports below net.ipv4.ip_unprivileged_port_start
        except OSError:
            continue  # taken, or an address this system does not route to loopback (macOS without aliases)
    log.warning("service API: no loopback address free on port 443 (not root? see docs/local-cloud.md); "
                "using 127.0.0.1 on a free port, which Node's service SDKs cannot reach")  # fmt: skip
    return listening_socket("127.0.0.1", 0)


def _host_name(host: str, port: int) -> str:
    """HostName= of the connection strings: the address, with the port unless it is HTTPS's 443."""
    name = f"[{host}]" if ":" in host else host
    return name if port == 443 else f"{name}:{port}"


def _new_id_scope(store: Store) -> str:
    scope = "0ne" + secrets.token_hex(4).upper()
    store.set_meta("id_scope", scope)
    return scope


def _api_token(data_dir: Path) -> str:
    path = data_dir / "api-token"
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    atomic_write(path, token.encode() + b"\n", 0o600)
    return token


class RunningCloud:
    """A LocalCloud on its own event loop in a daemon thread (tests, the demo)."""

    def __init__(self, cloud: LocalCloud, info: ConnectionInfo, loop: asyncio.AbstractEventLoop,
                 stop_event: asyncio.Event, thread: threading.Thread) -> None:  # fmt: skip
        self.cloud = cloud
        self.info = info
        self._loop = loop
        self._stop_event = stop_event
        self._thread = thread

    @property
    def data_dir(self) -> Path:
        return Path(self.info.data_dir)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop_event.set)
            self._thread.join(30)

    def __enter__(self) -> RunningCloud:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_in_thread(settings: CloudSettings, timeout: float = 60) -> RunningCloud:
    ready = threading.Event()
    result: dict[str, Any] = {}

    async def main() -> None:
        cloud = LocalCloud(settings)
        stop_event = asyncio.Event()
        try:
            info = await cloud.start()
        except BaseException as exc:
            result["error"] = exc
            await cloud.stop()
            ready.set()
            return
        result.update(cloud=cloud, info=info, loop=asyncio.get_running_loop(), stop=stop_event)
        ready.set()
        try:
            await stop_event.wait()
        finally:
            await cloud.stop()

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="client-app-cloud", daemon=True)
    thread.start()
    if not ready.wait(timeout):
        raise TimeoutError(f"the local cloud did not start within {timeout} s")
    if "error" in result:
        raise result["error"]
    return RunningCloud(result["cloud"], result["info"], result["loop"], result["stop"], thread)


def raise_open_file_limit() -> int | None:
    """Lift the soft RLIMIT_NOFILE to the hard limit and return it (None where there is no such limit).

    Every MQTT client holds a socket (two while it reconnects): the usual default soft limit of 1024 leaves no
    headroom for the 1,000 devices a local cloud is meant to hold; the hard limit is typically far higher.
    """
    try:
        import resource
    except ImportError:  # Windows has no RLIMIT_NOFILE
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):  # macOS refuses an unlimited hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def serve_forever(settings: CloudSettings) -> None:
    """Foreground server (`client-app-cloud serve`): runs until SIGINT or SIGTERM, then stops cleanly."""
    raise_open_file_limit()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop_event = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop_event.set)
        cloud = LocalCloud(settings)
        try:
            info = await cloud.start()
            # The collector's pauses were the service API's p99 (docs/local-cloud.md, "Service API"). What
            # start-up made (modules, the API's schemas: ~75,000 objects) lives as long as this process: out
            # of the collector's way, a full collection costs a third. A larger young generation lets a
            # request's objects die before a collection sees them, so fewer reach the old generation.
            gc.collect()
            gc.freeze()
            gc.set_threshold(50_000, 20, 10)
            print(
                f"client-app-cloud ready: {cloud.data_dir / CONNECTION_FILE} (local-only API {info.api_url},"
                f" service API https://{info.service_host})",
                flush=True,
            )
            await stop_event.wait()
        finally:
            await cloud.stop()

    asyncio.run(main())
