"""Live-viewing operators: named accounts in the index, password hashes only (CSI R252-12).

An operator may watch the cameras of the communes listed on their account, and only those whose
commune has ``service = "live"`` (the config decides that; this module only stores accounts).
Passwords are hashed with scrypt (memory-hard, in the standard library): N=2^15, r=8, p=1, 32
bytes, a random 16-byte salt, stored as ``scrypt$N$r$p$salt_hex$hash_hex``. ``generation`` grows
with every password change and on disable, so that sessions opened before are no longer valid.

The table is created by :func:`migrate_operators`, one of :data:`csud.store.schema.MIGRATIONS`.
Every change is journaled in the same transaction (``operator_added``,
``operator_password_changed``, ``operator_disabled``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from csud.errors import UsageError
from csud.store.journal import OPERATOR_ADDED, OPERATOR_DISABLED, OPERATOR_PASSWORD_CHANGED, Journal

if TYPE_CHECKING:
    from csud.store.index import Index

SCRYPT_N = 1 << 15
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_MAXMEM = 64 * 1024 * 1024
HASH_BYTES = 32
SALT_BYTES = 16
MIN_PASSWORD_LENGTH = 12
_ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


@dataclass(frozen=True, slots=True)
class Operator:
    id: str
    name: str
    communes: tuple[str, ...]
    password_hash: str
    generation: int
    disabled_ns: int | None
    created_ns: int

    @property
    def enabled(self) -> bool:
        return self.disabled_ns is None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "communes": list(self.communes),
            "enabled": self.enabled,
            "created_ns": self.created_ns,
            "disabled_ns": self.disabled_ns,
        }


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
        maxmem=SCRYPT_MAXMEM, dklen=HASH_BYTES,
    )  # fmt: skip
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    """Constant-time comparison; False for any malformed stored hash."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode("utf-8"), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
            maxmem=SCRYPT_MAXMEM, dklen=len(digest) // 2,
        )  # fmt: skip
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), digest)


def validate_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UsageError(f"password too short: at least {MIN_PASSWORD_LENGTH} characters")
    return password


def validate_id(operator_id: str) -> str:
    if not _ID_RE.fullmatch(operator_id):
        raise UsageError(f"operator id {operator_id!r}: lower-case letters, digits, '.', '_', '-' (1-64)")
    return operator_id


_COLUMNS = "id, name, communes, password_hash, generation, disabled_ns, created_ns"


def _row(row: tuple[Any, ...]) -> Operator:
    return Operator(row[0], row[1], tuple(c for c in row[2].split(",") if c), row[3], row[4], row[5], row[6])


class Operators:
    """Operator accounts on an open :class:`~csud.store.index.Index` (its lock, its connection)."""

    def __init__(self, index: Index) -> None:
        self._index = index

    def _locked(self) -> Any:
        return self._index._lock  # the index serialises every use of its connection

    def get(self, operator_id: str) -> Operator | None:
        with self._locked():
            row = self._index._conn.execute(
                f"SELECT {_COLUMNS} FROM operators WHERE id = ?", (operator_id,)
            ).fetchone()
        return _row(row) if row else None

    def all(self) -> list[Operator]:
        with self._locked():
            rows = self._index._conn.execute(f"SELECT {_COLUMNS} FROM operators ORDER BY id").fetchall()
        return [_row(r) for r in rows]

    def add(
        self, operator_id: str, name: str, communes: list[str], password_hash: str, *, now_ns: int, actor: str
    ) -> Operator:
        validate_id(operator_id)
        with self._locked(), self._index._transaction() as conn:
            if conn.execute("SELECT 1 FROM operators WHERE id = ?", (operator_id,)).fetchone():
                raise UsageError(f"operator {operator_id!r} already exists")
            conn.execute(
                f"INSERT INTO operators ({_COLUMNS}, updated_ns) VALUES (?, ?, ?, ?, 1, NULL, ?, ?)",
                (operator_id, name, ",".join(communes), password_hash, now_ns, now_ns),
            )
            Journal(conn).append(
                OPERATOR_ADDED, now_ns=now_ns, actor=actor,
                details={"operator": operator_id, "name": name, "communes": communes},
            )  # fmt: skip
        added = self.get(operator_id)
        assert added is not None
        return added

    def set_password(self, operator_id: str, password_hash: str, *, now_ns: int, actor: str) -> None:
        self._change(
            operator_id, "password_hash = ?", [password_hash], OPERATOR_PASSWORD_CHANGED, now_ns, actor
        )

    def disable(self, operator_id: str, *, now_ns: int, actor: str) -> None:
        self._change(operator_id, "disabled_ns = ?", [now_ns], OPERATOR_DISABLED, now_ns, actor)

    def _change(
        self, operator_id: str, assignment: str, values: list[object], kind: str, now_ns: int, actor: str
    ) -> None:
        with self._locked(), self._index._transaction() as conn:
            cur = conn.execute(
                f"UPDATE operators SET {assignment}, generation = generation + 1, updated_ns = ?"
                " WHERE id = ?",
                [*values, now_ns, operator_id],
            )
            if cur.rowcount == 0:
                raise UsageError(f"no operator {operator_id!r}")
            Journal(conn).append(kind, now_ns=now_ns, actor=actor, details={"operator": operator_id})
