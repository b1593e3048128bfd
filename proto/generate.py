"""Regenerate ``serving/_proto`` from ``proto/*.proto`` (a developer tool, not installed).

Needs ``grpcio-tools`` (the ``dev`` extra)::

    python proto/generate.py            # rewrite serving/_proto/
    python proto/generate.py --out DIR  # write elsewhere (the staleness test does)

Two edits follow ``protoc``:

* the messages go into a private descriptor pool instead of the process-wide
  default one, because Triton's client registers the same ``inference.*``
  names there and protobuf refuses a second definition in one pool (every
  file gets the same treatment);
* each ``*_pb2_grpc`` module imports its messages relative to the package,
  so the code works when installed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTO_DIR.parent
PROTO_FILES = ("inference.proto", "monitoring.proto")
OUT_DIR = REPO_ROOT / "serving" / "_proto"

_DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
_PRIVATE_POOL = (
    "# A private pool: other OIP clients (tritonclient) register the same names\n"
    "# in the default pool, and one pool cannot hold both.\n"
    "POOL = _descriptor_pool.DescriptorPool()\n"
    "DESCRIPTOR = POOL.AddSerializedFile(")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc into ``out_dir`` and apply the two edits; return the written files."""
    from grpc_tools import protoc  # only needed by developers

    out_dir.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).resolve().parent / "_proto"
    status = protoc.main([
        "grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{include}",
        f"--python_out={out_dir}", f"--grpc_python_out={out_dir}",
        *(str(PROTO_DIR / name) for name in PROTO_FILES)])
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status}")
    init = out_dir / "__init__.py"
    init.write_text('"""Code generated from proto/*.proto by `python proto/generate.py`."""\n')
    written = [init]
    for name in PROTO_FILES:
        stem = name.removesuffix(".proto")
        messages, services = out_dir / f"{stem}_pb2.py", out_dir / f"{stem}_pb2_grpc.py"
        _replace_once(messages, _DEFAULT_POOL, _PRIVATE_POOL)
        _replace_once(services, f"import {stem}_pb2 as {stem}__pb2", f"from . import {stem}_pb2 as {stem}__pb2")
        written += [messages, services]
    return written


def _replace_once(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    if text.count(old) != 1:
        raise RuntimeError(f"{path.name}: expected exactly one {old!r}; has protoc's output changed?")
    path.write_text(text.replace(old, new))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python proto/generate.py", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help=f"output folder (default {OUT_DIR})")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
