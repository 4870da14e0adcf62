"""Bit-level helpers shared by the H.264 and H.265 parameter-set parsers.

What belongs here: emulation-prevention removal (NAL unit payload -> RBSP) and an MSB-first
bit reader with Exp-Golomb codes (H.264/H.265 clause 9.2). What does not: any codec syntax.
Pure: no I/O.
"""

from __future__ import annotations

from csud.media.rtp import Buffer

_EMULATION_PREVENTION = b"\x00\x00\x03"
_ESCAPED = b"\x00\x00"
MAX_EXP_GOLOMB_ZEROS = 31  # ue(v) values up to 2**32 - 2, the widest the standards use


def unescape_rbsp(data: Buffer) -> bytes:
    """``data`` with every emulation prevention byte (the 03 of 00 00 03) removed."""
    return bytes(data).replace(_EMULATION_PREVENTION, _ESCAPED)


class BitReader:
    """MSB-first bit reader over an RBSP; ``ValueError`` on reading past the end.

    ``what`` names the structure in error messages (``"SPS truncated"``).
    """

    __slots__ = ("_bits", "_pos", "_value", "what")

    def __init__(self, data: bytes, what: str = "SPS") -> None:
        self._value = int.from_bytes(data, "big")
        self._bits = len(data) * 8
        self._pos = 0
        self.what = what

    @property
    def bits_left(self) -> int:
        return self._bits - self._pos

    def u(self, n: int) -> int:
        if self._pos + n > self._bits:
            raise ValueError(f"{self.what} truncated")
        self._pos += n
        return (self._value >> (self._bits - self._pos)) & ((1 << n) - 1)

    def skip(self, n: int) -> None:
        if self._pos + n > self._bits:
            raise ValueError(f"{self.what} truncated")
        self._pos += n

    def ue(self) -> int:
        zeros = 0
        while not self.u(1):
            zeros += 1
            if zeros > MAX_EXP_GOLOMB_ZEROS:
                raise ValueError(f"{self.what} exp-Golomb code longer than 32 bits")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)
