"""Outgoing AMQP frames with every field of their performative present.

Proton (like most AMQP 1.0 engines) leaves out trailing null fields, as the spec allows. Azure's pure-Python
AMQP client inside azure-eventhub and azure-servicebus (`_pyamqp`) indexes fields by position and fails on
short lists (`frame[4]` of an open: IndexError); Azure's own services always send every field (see
Azure/azure-sdk-for-python PR #39894 and mxsdev/LocalSandbox issue #70). So we pad each outgoing performative
to its full field count with nulls (AMQP 1.0 part 2.7 and 5.3), which every conforming peer also accepts.
"""

from __future__ import annotations

# descriptor code → number of fields (AMQP 1.0 §2.7.1–2.7.9, §5.3.3.1/5.3.3.6)
FULL_FIELDS = {0x10: 10, 0x11: 8, 0x12: 14, 0x13: 11, 0x14: 11, 0x15: 6, 0x16: 3, 0x17: 1, 0x18: 1,
               0x40: 1, 0x44: 2}  # fmt: skip
_NULL = b"\x40"


def pad_frame(frame: bytes) -> bytes:
    """One whole frame (size header included), its performative list padded to the full field count."""
    body_start = frame[4] * 4
    body = frame[body_start:]
    if len(body) < 4 or body[0] != 0x00 or body[1] != 0x53:  # heartbeat, or not a small-ulong descriptor
        return frame
    want = FULL_FIELDS.get(body[2])
    pos = 3
    constructor = body[pos]
    if constructor == 0x45:  # list0
        count, items, end = 0, b"", pos + 1
    elif constructor == 0xC0:  # list8: size, count, items
        size, count = body[pos + 1], body[pos + 2]
        items, end = body[pos + 3 : pos + 2 + size], pos + 2 + size
    elif constructor == 0xD0:  # list32
        size, count = (
            int.from_bytes(body[pos + 1 : pos + 5], "big"),
            int.from_bytes(body[pos + 5 : pos + 9], "big"),
        )
        items, end = body[pos + 9 : pos + 5 + size], pos + 5 + size
    else:
        return frame
    if want is None or count >= want:
        return frame
    items += _NULL * (want - count)
    padded = b"\xd0" + (len(items) + 4).to_bytes(4, "big") + want.to_bytes(4, "big") + items
    new_body = body[:pos] + padded + body[end:]
    return (body_start + len(new_body)).to_bytes(4, "big") + frame[4:body_start] + new_body


class FramePadder:
    """Splits an outgoing byte stream into frames (keeping protocol headers as they are) and pads them."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> bytes:
        buffer = self._buffer
        buffer += data
        out = bytearray()
        while len(buffer) >= 8:
            if buffer[:4] == b"AMQP":  # protocol header (AMQP or SASL layer)
                out += buffer[:8]
                del buffer[:8]
                continue
            size = int.from_bytes(buffer[:4], "big")
            if len(buffer) < size:
                break
            out += pad_frame(bytes(buffer[:size]))
            del buffer[:size]
        return bytes(out)
