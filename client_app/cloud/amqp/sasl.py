"""The server side of the SASL layer, as Azure's AMQP endpoints offer it: MSSBCBS and ANONYMOUS.

uamqp (azure-iot-hub's C2D client) asks for `MSSBCBS` ("Microsoft Service Bus claims-based security": no
credentials in SASL, a token on `$cbs` afterwards; azure-uamqp-c `sasl_mssbcbs.c`) and gives up if the server
does not list it; the other SDKs take ANONYMOUS. Proton's built-in SASL server knows neither MSSBCBS nor a way
to add it, so this module answers the three SASL frames itself (AMQP 1.0 part 5.3) and hands proton the stream
from the AMQP header on. Both mechanisms grant nothing by themselves: every link needs a put-token first.
"""

from __future__ import annotations

import asyncio

from proton import Data, Described, symbol

SASL_HEADER = b"AMQP\x03\x01\x00\x00"
AMQP_HEADER = b"AMQP\x00\x01\x00\x00"
MECHANISMS = ("MSSBCBS", "ANONYMOUS")
_SASL_INIT = 0x41
_OK, _AUTH_FAILED = 0, 1


class SaslRefused(Exception):
    pass


def _frame(descriptor: int, fill: list[object]) -> bytes:
    data = Data()
    data.put_described()
    data.enter()
    data.put_ulong(descriptor)
    data.put_list()
    data.enter()
    for item in fill:
        if item is None:
            data.put_null()
        elif isinstance(item, tuple):
            data.put_array(False, Data.SYMBOL)
            data.enter()
            for name in item:
                data.put_symbol(symbol(name))
            data.exit()
        else:
            data.put_ubyte(item)  # type: ignore[arg-type]
    data.exit()
    data.exit()
    body = data.encode()
    return (8 + len(body)).to_bytes(4, "big") + b"\x02\x01\x00\x00" + body  # doff 2, type 1 (SASL), channel 0


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(8)
    size = int.from_bytes(header[:4], "big")
    if not 8 <= size <= 65536:
        raise SaslRefused(f"SASL frame of {size} bytes")
    rest = await reader.readexactly(size - 8)
    return rest[header[4] * 4 - 8 :]


async def handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """Run SASL if the client starts with it; returns the bytes that begin the AMQP layer (for proton)."""
    header = await reader.readexactly(8)
    if header != SASL_HEADER:
        return header  # straight to AMQP (or garbage, which proton refuses with a proper close)
    writer.write(SASL_HEADER + _frame(0x40, [MECHANISMS]))
    data = Data()
    data.decode(await _read_frame(reader))
    init = data.get_object()
    if not isinstance(init, Described) or init.descriptor != _SASL_INIT or not init.value:
        raise SaslRefused("expected a sasl-init frame")
    mechanism = str(init.value[0])
    code = _OK if mechanism in MECHANISMS else _AUTH_FAILED
    writer.write(_frame(0x44, [code, None]))
    if code != _OK:
        raise SaslRefused(f"SASL mechanism {mechanism!r} is not offered")
    return b""
