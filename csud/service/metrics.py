"""Prometheus metrics: every name is declared here, and only here.

The names are a contract (dashboards and alerts use them; see DESIGN.md). The hot path never
touches these objects: recorders keep plain counters (:class:`csud.recording.stats.CameraStats`)
and :func:`export` copies them into the registry in aggregate, every few seconds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily

from csud import __version__
from csud.recording.segmenter import (
    DROP_DISCONTINUITY,
    DROP_GAP,
    DROP_GOP_TOO_LARGE,
    DROP_NO_PARAMETER_SETS,
    DROP_WAIT_KEYFRAME,
)
from csud.store.durable import FSYNC_FAILURES

if TYPE_CHECKING:
    from csud.recording.recorder import CameraRecorder

# No ``*_created`` series: they would double the series per camera for nothing we alert on.
disable_created_metrics()
REGISTRY = CollectorRegistry(auto_describe=True)
# process_start_time_seconds (a watchdog restart shows as a change of it), CPU, RSS, open fds.
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
_CAM = ("camera", "commune")

camera_up = Gauge("csud_camera_up", "1 while the camera's session delivers media", _CAM, registry=REGISTRY)
camera_last_frame = Gauge(
    "csud_camera_last_frame_timestamp_seconds",
    "Server time of the last frame received",
    _CAM,
    registry=REGISTRY,
)
camera_received_bytes = Counter(
    "csud_camera_received_bytes", "Bytes received from the camera (RTSP and media)", _CAM, registry=REGISTRY
)
camera_frames = Counter(
    "csud_camera_frames", "Access units received from the camera", _CAM, registry=REGISTRY
)
camera_lost = Counter(
    "csud_camera_rtp_packets_lost", "RTP packets lost (sequence gaps)", _CAM, registry=REGISTRY
)
camera_reconnects = Counter(
    "csud_camera_reconnects", "Session restarts after a failure", _CAM, registry=REGISTRY
)
camera_clock_offset = Gauge(
    "csud_camera_clock_offset_seconds", "Camera clock minus server clock (RTCP)", _CAM, registry=REGISTRY
)
camera_clock_drift = Gauge(
    "csud_camera_clock_drift_ppm",
    "Camera RTP clock rate against the server clock, in ppm (positive: camera fast; timeline estimate)",
    _CAM,
    registry=REGISTRY,
)
camera_arrival_jitter = Gauge(
    "csud_camera_arrival_jitter_seconds",
    "Interarrival jitter of the frames (RFC 3550)",
    _CAM,
    registry=REGISTRY,
)
camera_time_discontinuities = Counter(
    "csud_camera_time_discontinuities",
    "Timeline re-anchors (new SSRC, clock step, drift beyond the slew), each at a keyframe",
    _CAM,
    registry=REGISTRY,
)
camera_gops_dropped = Counter(
    "csud_camera_gops_dropped",
    "Whole GOPs not recorded because the camera was over its share of the memory budget",
    _CAM,
    registry=REGISTRY,
)
camera_dropped_frames = Counter(
    "csud_camera_dropped_frames", "Frames not recorded, by reason", (*_CAM, "reason"), registry=REGISTRY
)
camera_rtp_errors = Counter(
    "csud_camera_rtp_errors",
    "Packets refused: malformed RTP payload, other payload type, malformed RTCP",
    (*_CAM, "reason"),
    registry=REGISTRY,
)
camera_auth_failures = Counter(
    "csud_camera_auth_failures", "Sessions refused for their credentials (401)", _CAM, registry=REGISTRY
)
segments_written = Counter("csud_segments_written", "Segments closed and indexed", _CAM, registry=REGISTRY)
camera_last_segment = Gauge(
    "csud_camera_last_segment_timestamp_seconds",
    "End of the last segment indexed (before the first: when the camera's recorder started)",
    _CAM,
    registry=REGISTRY,
)
segment_write_seconds = Histogram(
    "csud_segment_write_seconds",
    "Time to finish a segment: flush, fsync, rename, directory fsync, index row",
    _CAM,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
memory_budget = Gauge(
    "csud_memory_budget_bytes", "The one memory budget for frames queued to the writers", registry=REGISTRY
)
memory_budget_used = Gauge(
    "csud_memory_budget_used_bytes", "Frame bytes queued to the writers, all cameras", registry=REGISTRY
)
storage_used = Gauge(
    "csud_storage_used_bytes", "Bytes of footage in the store", ("commune",), registry=REGISTRY
)
storage_free = Gauge("csud_storage_free_bytes", "Free bytes on the store's filesystem", registry=REGISTRY)
storage_size = Gauge("csud_storage_size_bytes", "Size of the store's filesystem", registry=REGISTRY)
retention_deleted = Counter(
    "csud_retention_deleted_segments",
    "Segments destroyed, by reason (retention, disk_pressure)",
    ("commune", "reason"),
    registry=REGISTRY,
)
retention_overdue = Gauge(
    "csud_retention_overdue_segments",
    "Unheld segments past their commune's window after the last retention pass (should be 0)",
    ("commune",),
    registry=REGISTRY,
)
holds_active = Gauge("csud_holds_active", "Judicial holds in force", registry=REGISTRY)
disk_pressure = Gauge(
    "csud_storage_disk_pressure",
    "1 when the last pass found free space below storage.min_free_percent",
    registry=REGISTRY,
)
storage_write_errors = Counter(
    "csud_storage_write_errors",
    "Segment writes that failed (e.g. ENOSPC); the segment was closed at its last good fragment",
    _CAM,
    registry=REGISTRY,
)


class _FsyncFailures:
    """``csud_storage_fsync_failures_total``, read at scrape time from csud.store.durable."""

    def collect(self) -> Iterable[CounterMetricFamily]:
        family = CounterMetricFamily(
            "csud_storage_fsync_failures",
            "fsync calls on segment files that failed (EIO): only the fragments synced before are kept",
        )
        family.add_metric([], FSYNC_FAILURES.count)
        yield family


REGISTRY.register(_FsyncFailures())
extractions = Counter(
    "csud_extractions",
    "Judicial extractions journaled (one per camera of a requisition), read from the journal",
    _CAM,
    registry=REGISTRY,
)
event_loop_lag = Gauge(
    "csud_event_loop_lag_seconds",
    "Largest event-loop lag since the previous export (overshoot of a 0.5 s sleep)",
    registry=REGISTRY,
)
config_reload_failures = Counter(
    "csud_config_reload_failures",
    "Configuration reloads (SIGHUP) refused: invalid file, or a change that needs a restart",
    registry=REGISTRY,
)
config_reloads = Counter("csud_config_reloads", "Configuration reloads (SIGHUP) applied", registry=REGISTRY)
# Live viewing (csud.live.web updates these from the event loop, once per view or per skip).
live_viewers = Gauge("csud_live_viewers", "Open live-view WebSockets", ("camera",), registry=REGISTRY)
live_frames_skipped = Counter(
    "csud_live_frames_skipped", "Frames a slow live viewer skipped to the next keyframe", registry=REGISTRY
)
live_send_latency = Histogram(
    "csud_live_send_latency_seconds",
    "From a frame's last packet received to its fragment handed to the viewer's socket",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
    registry=REGISTRY,
)
# Cluster (csud.cluster.node): absent [cluster], these stay at their defaults.
cluster_members = Gauge("csud_cluster_members", "Nodes holding a live lease in etcd", registry=REGISTRY)
camera_owned = Gauge(
    "csud_camera_owned", "1 while this node owns the camera (its key in etcd)", ("camera",), registry=REGISTRY
)
cluster_unassigned = Gauge(
    "csud_cluster_unassigned_cameras", "Configured cameras that no node owns", registry=REGISTRY
)
build_info = Info("csud_build", "csud version", registry=REGISTRY)
build_info.info({"version": __version__})

# Label values known in advance, so that every series exists at 0 before its first event: an
# alert on increase() or rate() needs a sample before the first increment to see it.
DROP_REASONS = (
    DROP_WAIT_KEYFRAME, DROP_NO_PARAMETER_SETS, DROP_GAP, DROP_DISCONTINUITY, DROP_GOP_TOO_LARGE,
    "overload", "storage_error",
)  # fmt: skip
RTP_ERROR_REASONS = ("malformed", "payload_type", "malformed_rtcp")
DELETION_REASONS = ("retention", "disk_pressure")

_last: dict[tuple[str, str], dict[str, int]] = {}
_initialised: set[tuple[str, str]] = set()
_extractions_seen: dict[tuple[str, str], dict[str, int]] = {}
# Every series labelled exactly (camera, commune); forget() removes a camera's from each.
_PER_CAMERA = (
    camera_up,
    camera_last_frame,
    camera_received_bytes,
    camera_frames,
    camera_lost,
    camera_reconnects,
    camera_auth_failures,
    camera_clock_offset,
    camera_clock_drift,
    camera_arrival_jitter,
    camera_time_discontinuities,
    camera_gops_dropped,
    segments_written,
    camera_last_segment,
    segment_write_seconds,
    storage_write_errors,
)


def _inc(counter: Counter, labels: tuple[str, ...], key: str, value: int, seen: dict[str, int]) -> None:
    child = counter.labels(*labels)  # exists from the first export, at 0: increase() needs it
    delta = value - seen.get(key, 0)
    if delta > 0:
        child.inc(delta)
    seen[key] = value


def initialise(camera: str, commune: str) -> None:
    """Create a configured camera's counter series (and its commune's) at 0, once."""
    labels = (camera, commune)
    if labels in _initialised:
        return
    _initialised.add(labels)
    for counter in (
        camera_received_bytes, camera_frames, camera_lost, camera_reconnects, camera_auth_failures,
        segments_written, storage_write_errors, extractions,
    ):  # fmt: skip
        counter.labels(*labels)
    segment_write_seconds.labels(*labels)
    for reason in DROP_REASONS:
        camera_dropped_frames.labels(*labels, reason)
    for reason in RTP_ERROR_REASONS:
        camera_rtp_errors.labels(*labels, reason)
    for reason in DELETION_REASONS:
        retention_deleted.labels(commune, reason)


def export(recorders: Iterable[CameraRecorder]) -> None:
    """Copy the recorders' plain counters into the registry (counters advance by their delta)."""
    for rec in recorders:
        labels = (rec.camera.id, rec.commune.id)
        initialise(*labels)
        stats = rec.stats
        seen = _last.setdefault(labels, {})
        camera_up.labels(*labels).set(1 if stats.up else 0)
        if stats.last_frame_ns:
            camera_last_frame.labels(*labels).set(stats.last_frame_ns / 1e9)
        camera_clock_offset.labels(*labels).set(stats.clock_offset_seconds)
        camera_clock_drift.labels(*labels).set(stats.clock_drift_ppm)
        camera_arrival_jitter.labels(*labels).set(stats.arrival_jitter_seconds)
        _inc(camera_time_discontinuities, labels, "time_disc", stats.time_discontinuities, seen)
        _inc(camera_gops_dropped, labels, "gops_dropped", stats.gops_dropped, seen)
        _inc(camera_received_bytes, labels, "bytes", stats.bytes_received, seen)
        _inc(camera_frames, labels, "frames", stats.frames_received, seen)
        _inc(camera_lost, labels, "lost", stats.lost_packets, seen)
        _inc(camera_reconnects, labels, "reconnects", stats.reconnects, seen)
        _inc(segments_written, labels, "segments", stats.segments_written, seen)
        camera_last_segment.labels(*labels).set((stats.last_segment_end_ns or stats.created_ns) / 1e9)
        for reason, count in stats.dropped_frames.items():
            _inc(camera_dropped_frames, (*labels, reason), f"drop:{reason}", count, seen)
        _inc(camera_auth_failures, labels, "auth", stats.auth_failures, seen)
        _inc(storage_write_errors, labels, "storage", stats.storage_errors, seen)
        for reason, count in (  # the order of RTP_ERROR_REASONS
            ("malformed", stats.malformed_packets),
            ("payload_type", stats.foreign_packets),
            ("malformed_rtcp", stats.malformed_rtcp),
        ):
            _inc(camera_rtp_errors, (*labels, reason), f"rtp:{reason}", count, seen)
        durations, stats.segment_write_seconds = stats.segment_write_seconds, []
        for seconds in durations:
            segment_write_seconds.labels(*labels).observe(seconds)


def restarted(camera: str, commune: str) -> None:
    """A camera's recorder was replaced (reload): its new counters start at 0, count from there."""
    _last.pop((camera, commune), None)


def forget(camera: str, commune: str) -> None:
    """Remove a camera's series (removed by a reload, or moved to another commune)."""
    labels = (camera, commune)
    seen = _last.pop(labels, {})
    _initialised.discard(labels)
    for metric in _PER_CAMERA:
        with contextlib.suppress(KeyError):
            metric.remove(*labels)
    reasons = {f"drop:{r}" for r in DROP_REASONS} | {f"rtp:{r}" for r in RTP_ERROR_REASONS}
    for key in reasons | set(seen):
        for prefix, metric in (("drop:", camera_dropped_frames), ("rtp:", camera_rtp_errors)):
            if key.startswith(prefix):
                with contextlib.suppress(KeyError):
                    metric.remove(*labels, key.removeprefix(prefix))


def export_extractions(counts: dict[tuple[str, str], int]) -> None:
    """Journal counts of ``extraction`` entries per (camera, commune) -> ``csud_extractions_total``.

    The journal is append-only, so its counts only grow: the counter advances by their delta
    (from 0 at daemon start, like every counter here).
    """
    for labels, count in counts.items():
        _inc(extractions, labels, "n", count, _extractions_seen.setdefault(labels, {}))
