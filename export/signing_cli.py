"""``histoedge export keygen`` and ``histoedge export sign`` (see :mod:`histoedge.export.signing`)."""

from __future__ import annotations

from pathlib import Path

from histoedge.export import signing


def cli_keygen(args) -> int:
    private_path, public_path = signing.generate_keypair(Path(args.out), args.name)
    key = signing.load_public_key(public_path)
    print(f"private key {private_path} (keep it secret, off the edge box)\n"
          f"public key  {public_path} (copy into the server's --trusted-keys folder), "
          f"key id {signing.key_id(key)}")
    return 0


def cli_sign(args) -> int:
    key = signing.load_private_key(Path(args.key))
    path = signing.sign_version(Path(args.path), key)
    print(f"signed {Path(args.path)} with key {signing.key_id(key.public_key())}: {path}")
    return 0
