"""One camera's plain counters: written by the recording pipeline and its shell, read by metrics.

Pure data: no I/O, no clock, no import of the metrics registry. :mod:`csud.service.metrics`
copies these into Prometheus in aggregate every few seconds; the hot path only bumps ints.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CameraStats:
    """Plain counters, updated on the hot path and exported in aggregate by the metrics task."""

    up: bool = False
    bytes_received: int = 0
    frames_received: int = 0
    frames_recorded: int = 0
    lost_packets: int = 0
    malformed_packets: int = 0
    malformed_rtcp: int = 0
    auth_failures: int = 0
    foreign_packets: int = 0  # other payload types on the RTP channel
    reconnects: int = 0
    failures: int = 0
    segments_written: int = 0
    bytes_written: int = 0
    last_frame_ns: int = 0
    last_error: str = ""
    clock_offset_seconds: float = 0.0
    clock_drift_ppm: float = 0.0  # camera RTP clock against the server's (timeline estimate)
    arrival_jitter_seconds: float = 0.0  # RFC 3550 interarrival jitter of the frames
    time_discontinuities: int = 0  # timeline re-anchors (each starts a segment at a keyframe)
    gops_dropped: int = 0  # whole GOPs refused by the memory budget (storage behind)
    dropped_frames: dict[str, int] = field(default_factory=dict)
    storage_errors: int = 0  # failed opens, writes, syncs (csud_storage_write_errors_total)
    segment_write_seconds: list[float] = field(default_factory=list)  # drained by metrics
    # For `csud status` and the last-segment gauge; set by the writer task, once per segment.
    last_segment_relpath: str = ""
    last_segment_end_ns: int = 0
    created_ns: int = 0  # when this recorder was built (server clock; set by the shell)

    def count_drop(self, reason: str, frames: int) -> None:
        if frames:
            self.dropped_frames[reason] = self.dropped_frames.get(reason, 0) + frames
