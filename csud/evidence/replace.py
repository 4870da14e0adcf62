"""``extract --force`` over an existing requisition folder: what is destroyed, hashed first.

A folder already delivered to an OPJ may be evidence: :func:`move_aside` moves it next to its
place (same filesystem), :func:`describe_replaced` hashes every file in it and reads what its
manifest said, and the extractor journals that (``extraction_replaced``) before the new folder
takes its place; on failure the old folder is put back (docs/evidence.md).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from csud.evidence import manifest as mf
from csud.store.durable import sha256_file

MAX_REPLACED_FILES = 1000  # files listed (with their hashes) in an extraction_replaced entry


def move_aside(final: Path) -> Path | None:
    """With ``--force``: move an existing ``final`` into a hidden ``.old`` folder beside it, so
    that what is destroyed can be hashed exactly as it was, and put back on failure."""
    if not (final.exists() or final.is_symlink()):
        return None
    holder = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
    os.rename(final, holder / final.name)
    return holder / final.name


def describe_replaced(old: Path) -> dict[str, Any]:
    """What an ``extract --force`` destroys: every file of the old folder with its size and
    SHA-256 (the old manifest's hash among them), and what its manifest said it was."""
    files: list[dict[str, Any]] = []
    paths = [old] if not old.is_dir() or old.is_symlink() else sorted(p for p in old.rglob("*"))
    total = 0
    for path in paths:
        if path.is_symlink() or not path.is_file():
            continue
        total += 1
        if len(files) < MAX_REPLACED_FILES:
            name = path.relative_to(old).as_posix() if path != old else path.name
            try:
                size, digest = sha256_file(path)
            except OSError as e:
                files.append({"name": name, "error": str(e.strerror or e)})
                continue
            files.append({"name": name, "bytes": size, "sha256": digest})
    out: dict[str, Any] = {"files": files, "file_count": total}
    try:
        summary = mf.read_manifest((old / mf.MANIFEST_NAME).read_bytes())
    except (OSError, ValueError) as e:
        out["manifest"] = f"unreadable or absent ({e.__class__.__name__})"
    else:
        out["manifest"] = {
            "requisition": summary.requisition,
            "officer": summary.officer,
            "created_at": summary.created_at,
            "operator": summary.operator,
            "clips": [{"file": f.name, "camera": f.camera, "sha256": f.sha256} for f in summary.files],
        }
    out["signed"] = (old / mf.SIGNATURE_NAME).is_file()
    return out
