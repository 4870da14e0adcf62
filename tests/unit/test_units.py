"""``AccessUnit.annexb``: the bytes the writer muxes (one copy of each byte, issue 15)."""

from __future__ import annotations

from csud.media.units import ANNEXB_START_CODE, AccessUnit

SC = ANNEXB_START_CODE


def test_annexb_puts_a_start_code_before_every_nal() -> None:
    au = AccessUnit(0, [b"\x65idr", b"\x06sei"], True)
    assert au.annexb() == SC + b"\x65idr" + SC + b"\x06sei"


def test_annexb_prefix_comes_first_and_is_not_kept() -> None:
    au = AccessUnit(0, [b"\x65idr"], True)
    assert au.annexb([b"\x67sps", b"\x68pps"]) == SC + b"\x67sps" + SC + b"\x68pps" + SC + b"\x65idr"
    assert au.nals == [b"\x65idr"]
    assert au.annexb([]) == SC + b"\x65idr"


def test_annexb_of_nothing_is_empty() -> None:
    assert AccessUnit(0, [], False).annexb() == b""
    assert AccessUnit(0, [], False).annexb([b"\x67sps"]) == SC + b"\x67sps"
    assert AccessUnit(0, [b""], False).annexb() == SC  # an empty NAL keeps its start code
