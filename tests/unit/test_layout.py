"""Storage layout: paths, names, stagger. Pure."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from csud.store.layout import (
    RESERVED_NAMES,
    parse_segment_filename,
    partial_name,
    segment_relpath,
    stagger_phase_ns,
    validate_path_component,
)

# 2026-11-26T13:00:00.250Z
START_NS = 1_795_698_000_250_000_000


def test_segment_relpath() -> None:
    assert segment_relpath("metz", "metz-gare-01", START_NS) == (
        "metz/metz-gare-01/2026/11/26/20261126T130000.250Z.mp4"
    )


def test_relpath_truncates_to_the_millisecond() -> None:
    assert segment_relpath("a", "b", START_NS + 999_999).endswith("T130000.250Z.mp4")


def test_epoch_and_leap_day() -> None:
    assert segment_relpath("a", "b", 0) == "a/b/1970/01/01/19700101T000000.000Z.mp4"
    leap_ns = 1_709_164_799_999_000_000  # 2024-02-28T23:59:59.999Z
    assert segment_relpath("a", "b", leap_ns) == "a/b/2024/02/28/20240228T235959.999Z.mp4"
    assert segment_relpath("a", "b", leap_ns + 1_000_000).startswith("a/b/2024/02/29/")


def test_partial_name() -> None:
    assert partial_name("a/b/x.mp4") == "a/b/x.mp4.partial"


@given(st.integers(0, 4_102_444_800 * 10**9 - 1))  # up to 2100
def test_parse_is_the_inverse_to_the_millisecond(start_ns: int) -> None:
    name = segment_relpath("c", "k", start_ns).rsplit("/", 1)[1]
    assert parse_segment_filename(name) == start_ns - start_ns % 1_000_000


@pytest.mark.parametrize(
    "name",
    [
        "",
        "20261126T130000.250Z.mp4.partial",
        "x/20261126T130000.250Z.mp4",
        "20261126T130000Z.mp4",
        "20261126T130000.250.mp4",
        "20261326T130000.250Z.mp4",  # month 13
        "20260230T130000.250Z.mp4",  # Feb 30
        "20261126T250000.250Z.mp4",
        "２0261126T130000.250Z.mp4",  # non-ASCII digit
    ],
)
def test_parse_rejects(name: str) -> None:
    with pytest.raises(ValueError, match="not a segment file name"):
        parse_segment_filename(name)


@pytest.mark.parametrize("value", ["metz", "metz-gare-01", "A_b.c", "x" * 128, "a..b"])
def test_valid_components(value: str) -> None:
    assert validate_path_component("camera", value) == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "empty"),
        (".", "must not start with '.'"),
        ("..", "must not start with '.'"),
        (".hidden", "must not start with '.'"),
        ("a/b", "only letters"),
        ("a\\b", "only letters"),
        ("a b", "only letters"),
        ("café", "only letters"),
        ("a\x00", "only letters"),
        ("x" * 129, "longer than 128"),
        ("quarantine", "reserved"),  # startup recovery skips <root>/quarantine
        ("Quarantine", "reserved"),
        ("index.sqlite3", "reserved"),
        ("index.sqlite3-wal", "reserved"),
    ],
)
def test_invalid_components(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"invalid commune id.*{message}"):
        validate_path_component("commune", value)


def test_relpath_validates_ids() -> None:
    with pytest.raises(ValueError, match="invalid camera id"):
        segment_relpath("metz", "../etc", START_NS)
    with pytest.raises(ValueError, match="invalid commune id"):
        segment_relpath("", "cam", START_NS)
    with pytest.raises(ValueError, match="before 1970"):
        segment_relpath("metz", "cam", -1)


def test_stagger_is_deterministic_and_in_range() -> None:
    seg_ns = 60_000_000_000
    phases = {stagger_phase_ns(f"cam-{i:03d}", seg_ns) for i in range(300)}
    assert all(0 <= p < seg_ns and p % 1_000_000 == 0 for p in phases)
    assert len(phases) > 250  # spread, not bunched
    assert stagger_phase_ns("metz-gare-01", seg_ns) == stagger_phase_ns("metz-gare-01", seg_ns)
    assert stagger_phase_ns("metz-gare-01", seg_ns) == 17_485_000_000  # stable across versions
    with pytest.raises(ValueError):
        stagger_phase_ns("x", 999_999)


def test_reserved_names_are_the_roots_own_entries() -> None:
    from csud.service.daemon import INDEX_FILENAME
    from csud.store.recovery import QUARANTINE_DIR

    assert {QUARANTINE_DIR, INDEX_FILENAME} <= RESERVED_NAMES
