"""No module under csud/ is over 600 lines (issue 10): a module that grows past it is split by
responsibility, as csud/store/index.py was (holds.py, retention_queries.py)."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "csud"
MAX_LINES = 600


def oversized(package: Path, limit: int) -> list[str]:
    """``path: N lines`` for each module under ``package`` longer than ``limit`` lines."""
    out = []
    for path in sorted(package.rglob("*.py")):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > limit:
            out.append(f"{path.relative_to(package.parent).as_posix()}: {lines} lines")
    return out


def test_no_module_is_over_600_lines() -> None:
    modules = list(PACKAGE.rglob("*.py"))
    assert len(modules) > 50  # the walk found the package
    offenders = oversized(PACKAGE, MAX_LINES)
    assert not offenders, f"modules over {MAX_LINES} lines: {', '.join(offenders)}"


def test_the_check_names_an_offender(tmp_path: Path) -> None:
    package = tmp_path / "csud"
    (package / "sub").mkdir(parents=True)
    (package / "sub" / "big.py").write_text("x = 1\n" * (MAX_LINES + 1), encoding="utf-8")
    (package / "small.py").write_text("x = 1\n" * MAX_LINES, encoding="utf-8")
    assert oversized(package, MAX_LINES) == [f"csud/sub/big.py: {MAX_LINES + 1} lines"]
