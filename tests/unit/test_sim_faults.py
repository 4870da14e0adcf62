"""The fault syntax of ``csud simulate --fault`` (csud.sim.faults.parse_fault)."""

from __future__ import annotations

import pytest

from csud.sim.cli import build_parser, options_from_args
from csud.sim.faults import FaultSpec, parse_fault


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("cam2=loss:5", FaultSpec("loss", 5.0, frozenset({2}))),
        ("loss", FaultSpec("loss", 5.0, None)),
        ("2,5=reboot@12", FaultSpec("reboot", None, frozenset({2, 5}), 12.0)),
        ("2-4=stall:20@10", FaultSpec("stall", 20.0, frozenset({2, 3, 4}), 10.0)),
        ("cam1=401-loop@5+30", FaultSpec("401-loop", None, frozenset({1}), 5.0, 30.0)),
        ("cam3,cam7=len65535:close", FaultSpec("len65535", "close", frozenset({3, 7}))),
        ("garbage:100", FaultSpec("garbage", 100.0, None)),
        ("slow-rtsp", FaultSpec("slow-rtsp", 100.0, None)),
        ("sps-change@3+4.5", FaultSpec("sps-change", None, None, 3.0, 4.5)),
    ],
)
def test_parse_fault(text: str, spec: FaultSpec) -> None:
    assert parse_fault(text) == spec


@pytest.mark.parametrize(
    "text",
    [
        "",
        "meltdown",
        "cam0=loss",
        "loss:abc",
        "loss:150",
        "4-2=stall",
        "len65535:later",
        "stall@-1",
        "x=loss",
    ],
)
def test_bad_faults_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_fault(text)


def test_stall_lasts_its_argument_and_conditions_their_duration() -> None:
    assert parse_fault("stall:8@2").end() == 10.0
    assert parse_fault("loss@2+3").end() == 5.0 and parse_fault("loss").end() is None


def test_simulate_options_carry_the_faults() -> None:
    args = build_parser().parse_args(["--fault", "cam2=loss:5", "--fault", "reboot@3", "--fault-seed", "9"])
    options = options_from_args(args)
    assert (
        options.faults is not None and options.faults.rng.random() == __import__("random").Random(9).random()
    )
    assert options_from_args(build_parser().parse_args([])).faults is None
