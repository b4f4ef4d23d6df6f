"""Outgoing AMQP frames with every field of their performative present.

Proton (like most AMQP 1.0 engines) leaves out trailing null fields, as the spec allows. Azure's pure-Python
AMQP client inside azure-eventhub and azure-servicebus (`_pyamqp`) indexes fields by position and fails on
short lists (`frame[4]` of an open: IndexError); Azure's own services always send every field (see
Azure/azure-sdk-for-python PR #39894 and mxsdev/LocalSandbox issue #70). So we pad each outgoing performative
to its full field count with nulls (AMQP 1.0 part 2.7 and 5.3), which every conforming peer also accepts.
"""

from __future__ import annotations

import struct

# descriptor code → number of fields (AMQP 1.0 §2.7.1–2.7.9, §5.3.3.1/5.3.3.6)
FULL_FIELDS = {0x10: 10, 0x11: 8, 0x12: 14, 0x13: 11, 0x14: 11, 0x15: 6, 0x16: 3, 0x17: 1, 0x18: 1,
               0x40: 1, 0x44: 2}  # fmt: skip
_NULL = b"\x40"
_LIST32 = struct.Struct(">BII")  # constructor 0xd0, size (of count and items), count
_SIZE_COUNT32 = struct.Struct(">II")
# The head of a frame whose performative is a list8, as proton writes a transfer (every event is one): size,
# data offset, type, channel, 0x0053 (described, small ulong), descriptor code, constructor 0xc0, list size,
# count; and the same head with the list32 `pad_frame` makes of it.
_LIST8_HEAD = struct.Struct(">IBBHHBBBB")
_LIST32_HEAD = struct.Struct(">IBBHHBBII")
_WANT = [FULL_FIELDS.get(code, 0) for code in range(256)]
_NULLS = [_NULL * n for n in range(max(FULL_FIELDS.values()) + 1)]


def pad_frame(frame: bytes) -> bytes:
    """One whole frame (size header included), its performative list padded to the full field count."""
    start = frame[4] * 4  # the body: descriptor 0x00 0x53 code, then the list
    if len(frame) < start + 4 or frame[start] != 0x00 or frame[start + 1] != 0x53:
        return frame  # heartbeat, or not a small-ulong descriptor
    want = FULL_FIELDS.get(frame[start + 2])
    pos = start + 3
    constructor = frame[pos]
    if constructor == 0x45:  # list0
        count, items, end = 0, pos + 1, pos + 1
    elif constructor == 0xC0:  # list8: size, count, items
        count, items, end = frame[pos + 2], pos + 3, pos + 2 + frame[pos + 1]
    elif constructor == 0xD0:  # list32
        size, count = _SIZE_COUNT32.unpack_from(frame, pos + 1)
        items, end = pos + 9, pos + 5 + size
    else:
        return frame
    if want is None or count >= want:
        return frame
    items_size = end - items + want - count
    total = pos + 9 + items_size + len(frame) - end
    return b"".join((
        total.to_bytes(4, "big"), frame[4:pos], _LIST32.pack(0xD0, items_size + 4, want), frame[items:end],
        _NULL * (want - count), frame[end:],
    ))  # fmt: skip


class FramePadder:
    """Splits an outgoing byte stream into frames (keeping protocol headers as they are) and pads them."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> bytes:
        """Each event is a transfer frame: one whose performative is a list8 is padded right here, from one
        `unpack_from` of its head (as `pad_frame` pads it, at about half the cost); anything else by
        `pad_frame`."""
        buffer = self._rest + data if self._rest else data
        out: list[bytes] = []
        pos, end = 0, len(buffer)
        unpack, pack, want_of = _LIST8_HEAD.unpack_from, _LIST32_HEAD.pack, _WANT
        while end - pos >= 8:
            if end - pos >= 14:
                size, doff, kind, channel, described, code, list8, list_size, count = unpack(buffer, pos)
                want = want_of[code]
                if (14 <= size <= end - pos and doff == 2 and described == 0x53 and list8 == 0xC0
                        and count < want):  # fmt: skip
                    missing, items, stop = want - count, pos + 13 + list_size, pos + size
                    out += (
                        pack(size + 6 + missing, 2, kind, channel, 0x53, code, 0xD0,
                             list_size + 3 + missing, want),
                        buffer[pos + 14 : items], _NULLS[missing], buffer[items:stop],
                    )  # fmt: skip
                    pos = stop
                    continue
            if buffer.startswith(b"AMQP", pos):  # protocol header (AMQP or SASL layer)
                out.append(buffer[pos : pos + 8])
                pos += 8
                continue
            size = max(8, int.from_bytes(buffer[pos : pos + 4], "big"))
            if end - pos < size:
                break
            out.append(pad_frame(buffer[pos : pos + size]))
            pos += size
        self._rest = buffer[pos:]
        return b"".join(out)
