"""The inbox's and outbox's message types: plain data, stdlib only.

Apart from the store so that the desktop app's process (which never opens the store: the core process
owns it) can hold messages without importing the store, its state files and cryptography.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

OutboxState = Literal["queued", "delivered"]


@dataclass(frozen=True)
class OutboxMessage:
    id: int
    message_id: str  # sent as Message.message_id so the backend can drop duplicates
    text: str
    properties: dict[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    state: OutboxState = "queued"
    delivered_at: datetime | None = None


@dataclass(frozen=True)
class InboxMessage:
    id: int
    message_id: str
    text: str
    properties: dict[str, str | None] = field(default_factory=dict)
    received_at: datetime | None = None
    read: bool = False
