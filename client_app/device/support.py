"""`client-app --status`: the live instance's status, or what the files say when nothing runs.

Never a secret: nothing here touches the keyring.
"""

from __future__ import annotations

from client_app.device import identity as ids
from client_app.device import state as st
from client_app.device.config import DeviceConfig
from client_app.device.instance_lock import running_pid
from client_app.device.status import ConnectionState, DeviceStatus, read_status_file
from client_app.device.store import Database, Inbox, Outbox
from client_app.pki import PkiError, load_certificates, sha1_thumbprint


def current_status(config: DeviceConfig) -> DeviceStatus:
    layout = config.layout
    pid = running_pid(layout.lock_file)
    if pid is not None:
        live = read_status_file(layout.status_file)
        if live is not None:
            return live
    return offline_status(config)


def offline_status(config: DeviceConfig) -> DeviceStatus:
    layout = config.layout
    fields: dict[str, object] = {
        "log_dir": str(config.log_dir),
        "id_scope": config.id_scope or None,
        "provisioning_host": config.provisioning_host,
    }
    try:
        state = st.load_state(layout.state_file)
    except st.StateCorrupt as exc:
        state = None
        fields["last_error"] = f"{exc}; the identity will be re-created at the next start"
    if state is None or state.assignment is None:
        fields.update(
            state=ConnectionState.NOT_PROVISIONED, message="Not registered yet (the app is not running)."
        )
    else:
        fields.update(
            state=ConnectionState.STOPPED,
            message="The app is not running.",
            device_id=state.assignment.device_id,
            assigned_hub=state.assignment.assigned_hub,
        )
    if state is not None:
        fields.update(
            registration_id=state.registration_id,
            last_connected=st.parse_time(state.last_connected),
            last_disconnected=st.parse_time(state.last_disconnected),
        )
        try:
            leaf = load_certificates(layout.chain_file)[0]
        except (PkiError, OSError, ValueError, IndexError):
            pass
        else:
            fields.update(
                certificate_subject=ids.subject_cn(leaf),
                certificate_issuer=ids.issuer_cn(leaf),
                certificate_not_after=leaf.not_valid_after_utc,
                certificate_thumbprint=sha1_thumbprint(leaf),
            )
    if layout.database.exists():
        db = Database(layout.database)
        try:
            inbox = Inbox(db)
            fields.update(
                outbox=Outbox(db).queued_count(), inbox=inbox.count(), inbox_unread=inbox.unread_count()
            )
        finally:
            db.close()
    return DeviceStatus(**fields)  # type: ignore[arg-type]
