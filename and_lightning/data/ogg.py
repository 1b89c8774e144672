"""Ogg pages with a chosen stream serial number, so an encoded file is the same bytes on every run.

libsndfile picks a random serial number for each Ogg stream it writes; the serial sits in every page header and is
covered by the page's CRC. `with_serial` rewrites both (RFC 3533 §6: the CRC-32 of the page with its CRC field
zeroed, polynomial 0x04C11DB7, initial value 0, no reflection, no final xor).
"""
from __future__ import annotations

import struct

_POLY = 0x04C11DB7


def _crc_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ _POLY) if r & 0x80000000 else r << 1
        table.append(r & 0xFFFFFFFF)
    return tuple(table)


_TABLE = _crc_table()


def ogg_crc(data: bytes) -> int:
    """The Ogg page checksum of `data`."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _TABLE[(crc >> 24) ^ byte]
    return crc


def with_serial(data: bytes, serial: int) -> bytes:
    """`data` (a single-stream Ogg file) with every page's serial number set to `serial` and its CRC recomputed."""
    out = bytearray(data)
    pos = 0
    while pos < len(out):
        if out[pos:pos + 4] != b"OggS" or pos + 27 > len(out):
            raise ValueError(f"not an Ogg page at byte {pos}")
        n_segments = out[pos + 26]
        end = pos + 27 + n_segments + sum(out[pos + 27:pos + 27 + n_segments])
        if end > len(out):
            raise ValueError(f"Ogg page at byte {pos} runs past the end of the data")
        struct.pack_into("<I", out, pos + 14, serial)
        struct.pack_into("<I", out, pos + 22, 0)
        struct.pack_into("<I", out, pos + 22, ogg_crc(out[pos:end]))
        pos = end
    return bytes(out)
