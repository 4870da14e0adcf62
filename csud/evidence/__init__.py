"""Judicial extraction: clips by stream copy, their manifest, its signature, and verification.

- :mod:`csud.evidence.manifest`: the manifest's schema, its exact bytes, and reading it back.
- :mod:`csud.evidence.signing`: the site's Ed25519 key pair and detached signatures.
- :mod:`csud.evidence.extract`: ``csud extract`` (re-hash sources, stream copy, publish atomically).
- :mod:`csud.evidence.verify`: ``csud verify`` of an extraction folder (needs nothing but its
  files) and of the archive (stored segments against the index).

docs/evidence.md is the reference for what an OPJ receives and how to check it.
"""
