"""What the index records of a segment file: small frozen records, no I/O.

:class:`SegmentInfo` and :class:`FragmentInfo` are made by the writer
(:mod:`csud.recording.writer`) when a segment is published, stored by the index
(:mod:`csud.store.index`) and read back by extraction. They live apart from the writer so that
opening the index (``csud verify``, ``csud segments``) loads neither PyAV nor aiofiles.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FragmentInfo:
    """One fragment (one GOP): starts with the keyframe at ``start_ns``; its ``moof`` is at ``offset``."""

    start_ns: int
    offset: int
    size: int
    frames: int


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """A closed, durable segment file, as the index records it. ``sha256`` is of the whole file."""

    relpath: str
    start_ns: int
    end_ns: int
    bytes: int  # file size: exactly the bytes hashed
    frames: int
    sha256: str
    fragments: tuple[FragmentInfo, ...]
