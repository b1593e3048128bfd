"""Signed model packages: an Ed25519 signature over a version's manifest bytes.

What is signed: the exact bytes of ``MODELS/<name>/<version>/manifest.json``.
The manifest holds the SHA-256 of ``model.onnx`` and of the reference profile
(which the server checks when loading), the class names, the decision threshold
and the preprocessing, so one signature covers the model and everything that
decides its answers.  The
signature lives beside the manifest in ``manifest.sig`` (JSON: algorithm, key id,
base64 signature).  Key id: the first 16 hex digits of the SHA-256 of the raw
32-byte public key.

Keys are PEM files: ``NAME.key`` (PKCS#8 private key, mode 0600, keep it off the
edge box) and ``NAME.pub`` (SubjectPublicKeyInfo, copied to the server's
``--trusted-keys`` folder).

Example::

    generate_keypair(Path("keys"), "release")            # keys/release.key, keys/release.pub
    sign_version(Path("models/breast/3"), load_private_key(Path("keys/release.key")))
    verify_signature(Path("models/breast/3"), load_trusted_keys(Path("trusted")))
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from histoedge.export.errors import SignatureError
from histoedge.export.manifest import MANIFEST_FILE

SIGNATURE_FILE = "manifest.sig"
ALGORITHM = "ed25519"


def _crypto():
    """The cryptography primitives (imported when signing is used: an optional dependency)."""
    try:
        from cryptography.exceptions import InvalidSignature  # noqa: PLC0415
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: PLC0415
    except ImportError as error:  # pragma: no cover - the serve and export extras install it
        raise SignatureError("signed packages need the 'cryptography' package "
                             "(pip install 'histoedge[serve]')") from error
    return InvalidSignature, serialization, ed25519


def key_id(public_key) -> str:
    """First 16 hex digits of the SHA-256 of the raw public key."""
    _, serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(folder: Path, name: str) -> tuple[Path, Path]:
    """Write ``folder/name.key`` (private, mode 0600) and ``folder/name.pub``; never overwrite."""
    _, serialization, ed25519 = _crypto()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    private_path, public_path = folder / f"{name}.key", folder / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise SignatureError(f"{path} already exists; not overwritten")
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(public_pem)
    return private_path, public_path


def load_private_key(path: Path):
    """An Ed25519 private key from a PEM file (unencrypted PKCS#8, as ``keygen`` writes)."""
    _, serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise SignatureError(f"cannot read the private key {path}: {error}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SignatureError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path):
    _, serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as error:
        raise SignatureError(f"cannot read the public key {path}: {error}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise SignatureError(f"{path} is not an Ed25519 public key")
    return key


def load_trusted_keys(folder: Path) -> dict[str, object]:
    """Key id -> public key for every ``*.pub`` in ``folder``; at least one must be there."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SignatureError(f"trusted keys folder {folder} does not exist")
    keys = {}
    for path in sorted(folder.glob("*.pub")):
        key = load_public_key(path)
        keys[key_id(key)] = key
    if not keys:
        raise SignatureError(f"no public keys (*.pub) in {folder}")
    return keys


def signature_document(manifest_bytes: bytes, private_key) -> dict:
    return {"algorithm": ALGORITHM, "key_id": key_id(private_key.public_key()), "signed_file": MANIFEST_FILE,
            "signature": base64.b64encode(private_key.sign(manifest_bytes)).decode("ascii")}


def sign_version(version_dir: Path, private_key) -> Path:
    """Write ``manifest.sig`` for the manifest in ``version_dir`` (atomically); return its path."""
    version_dir = Path(version_dir)
    manifest_bytes = (version_dir / MANIFEST_FILE).read_bytes()
    document = json.dumps(signature_document(manifest_bytes, private_key), indent=2) + "\n"
    target = version_dir / SIGNATURE_FILE
    staging = version_dir / f".{SIGNATURE_FILE}.tmp-{os.getpid()}"
    with open(staging, "w", encoding="utf-8") as handle:
        handle.write(document)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, target)
    return target


@dataclass(frozen=True)
class VerifiedManifest:
    """The manifest bytes whose signature checked out, and the key that made it."""

    manifest_bytes: bytes
    key_id: str


def verify_signature(version_dir: Path, trusted_keys: dict[str, object]) -> VerifiedManifest:
    """Check ``manifest.sig`` against the manifest bytes; raise :class:`SignatureError` unless valid.

    Callers that then load the package must use the returned bytes (or compare
    what they load with them): the files may change after this check.
    """
    invalid_signature, _, _ = _crypto()
    version_dir = Path(version_dir)
    signature_path = version_dir / SIGNATURE_FILE
    if not signature_path.is_file():
        raise SignatureError(f"{version_dir} is not signed (no {SIGNATURE_FILE})")
    try:
        document = json.loads(signature_path.read_text(encoding="utf-8"))
        algorithm, wanted = document["algorithm"], document["key_id"]
        signature = base64.b64decode(document["signature"], validate=True)
        manifest_bytes = (version_dir / MANIFEST_FILE).read_bytes()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, binascii.Error) as error:
        raise SignatureError(f"{signature_path} is unreadable or malformed: {error!r}") from None
    if algorithm != ALGORITHM:
        raise SignatureError(f"{signature_path}: algorithm {algorithm!r} is not {ALGORITHM}")
    key = trusted_keys.get(wanted)
    if key is None:
        raise SignatureError(f"{version_dir} is signed by key {str(wanted)[:16]!r}, which is not trusted")
    try:
        key.verify(signature, manifest_bytes)
    except invalid_signature:
        raise SignatureError(f"{version_dir}: the signature does not match the manifest "
                             "(changed after signing?)") from None
    return VerifiedManifest(manifest_bytes, wanted)
