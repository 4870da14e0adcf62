"""The site's Ed25519 signing key pair, and detached signatures over a manifest's exact bytes.

Files (PEM, what ``openssl pkey`` reads):

- private key: PKCS#8, unencrypted, mode 0600 (protect it like the site's seal: whoever holds
  it can sign a manifest in the site's name);
- public key: SubjectPublicKeyInfo; handed to OPJs separately from extractions.

A signature is the raw 64-byte Ed25519 signature (RFC 8032) of the bytes, as
``openssl pkeyutl -sign -rawin`` makes it and ``-verify -rawin -sigfile`` checks it.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from csud.errors import ConfigError, CsudError, EvidenceError

PRIVATE_KEY_NAME = "signing_key.pem"
PUBLIC_KEY_NAME = "public_key.pem"
SIGNATURE_BYTES = 64
PRIVATE_KEY_MODE = 0o600
PUBLIC_KEY_MODE = 0o644


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def fingerprint(key: Ed25519PublicKey) -> str:
    """``SHA256:<hex>`` of the raw 32-byte public key: short enough to read out over the phone."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "SHA256:" + hashlib.sha256(raw).hexdigest()


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` (never replacing a file), write, fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow it
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def generate_keypair(out_dir: Path) -> tuple[Path, Path, str]:
    """Write a new key pair into ``out_dir`` (created if missing); return both paths and the fingerprint.

    Refuses (``CsudError``) if either file exists: a site key is never silently replaced.
    """
    private_path, public_path = out_dir / PRIVATE_KEY_NAME, out_dir / PUBLIC_KEY_NAME
    for path in (private_path, public_path):
        if path.exists() or path.is_symlink():
            raise CsudError(f"{path} exists: refusing to overwrite a key (move it away first)")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_new(private_path, private, PRIVATE_KEY_MODE)
        try:
            _write_new(public_path, public_pem(key.public_key()), PUBLIC_KEY_MODE)
        except BaseException:
            private_path.unlink()
            raise
    except OSError as e:
        if e.errno == errno.EEXIST:
            raise CsudError(f"{e.filename} exists: refusing to overwrite a key") from None
        raise CsudError(f"keygen in {out_dir}: {e.strerror or e}") from None
    return private_path, public_path, fingerprint(key.public_key())


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The configured signing key; ``ConfigError`` (exit 2) if unreadable or not Ed25519."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"evidence.signing_key: cannot read {path}: {e.strerror or e}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise ConfigError(
            f"evidence.signing_key: {path} is not an unencrypted PEM private key ({e})"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"evidence.signing_key: {path} is not an Ed25519 key")
    return key


def load_public_key(data: bytes, source: str) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM; ``EvidenceError`` naming ``source`` otherwise."""
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise EvidenceError(f"{source} is not a PEM public key ({e})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise EvidenceError(f"{source} is not an Ed25519 public key")
    return key


def sign(key: Ed25519PrivateKey, data: bytes) -> bytes:
    return key.sign(data)


def signature_valid(key: Ed25519PublicKey, data: bytes, signature: bytes) -> bool:
    if len(signature) != SIGNATURE_BYTES:
        return False
    try:
        key.verify(signature, data)
    except InvalidSignature:
        return False
    return True
