"""The recorders' plain counters reach Prometheus in aggregate, under the contract's names."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import generate_latest

from csud.recording.recorder import CameraStats
from csud.service import metrics


def fake_recorder(camera: str, stats: CameraStats) -> SimpleNamespace:
    return SimpleNamespace(camera=SimpleNamespace(id=camera), commune=SimpleNamespace(id="metz"), stats=stats)


def sample(name: str, **labels: str) -> float | None:
    value = metrics.REGISTRY.get_sample_value(name, labels)
    return value


def test_export_counts_deltas_including_refused_packets_and_credentials() -> None:
    stats = CameraStats(up=True, frames_received=10, malformed_packets=2, foreign_packets=3, auth_failures=1)
    rec = fake_recorder("cam-metrics-1", stats)
    metrics.export([rec])  # type: ignore[list-item]
    labels = {"camera": "cam-metrics-1", "commune": "metz"}
    assert sample("csud_camera_up", **labels) == 1
    assert sample("csud_camera_frames_total", **labels) == 10
    assert sample("csud_camera_rtp_errors_total", **labels, reason="malformed") == 2
    assert sample("csud_camera_rtp_errors_total", **labels, reason="payload_type") == 3
    assert sample("csud_camera_auth_failures_total", **labels) == 1
    stats.malformed_packets, stats.auth_failures, stats.frames_received = 5, 2, 25
    metrics.export([rec])  # type: ignore[list-item]
    assert sample("csud_camera_rtp_errors_total", **labels, reason="malformed") == 5
    assert sample("csud_camera_auth_failures_total", **labels) == 2
    assert sample("csud_camera_frames_total", **labels) == 25
    assert b"csud_camera_rtp_errors_total" in generate_latest(metrics.REGISTRY)
    metrics.forget("cam-metrics-1", "metz")
    assert sample("csud_camera_rtp_errors_total", **labels, reason="malformed") is None


def test_time_and_memory_budget_series() -> None:
    """Drift, jitter, time discontinuities and GOPs dropped by the memory budget, per camera."""
    stats = CameraStats(
        clock_drift_ppm=498.5, arrival_jitter_seconds=0.012, time_discontinuities=2, gops_dropped=3
    )
    metrics.export([fake_recorder("cam-metrics-2", stats)])  # type: ignore[list-item]
    labels = {"camera": "cam-metrics-2", "commune": "metz"}
    assert sample("csud_camera_clock_drift_ppm", **labels) == 498.5
    assert sample("csud_camera_arrival_jitter_seconds", **labels) == 0.012
    assert sample("csud_camera_time_discontinuities_total", **labels) == 2
    assert sample("csud_camera_gops_dropped_total", **labels) == 3
    metrics.forget("cam-metrics-2", "metz")
    assert sample("csud_camera_gops_dropped_total", **labels) is None
