"""Long fuzz of a real ``histoedge serve`` process: malformed ModelInfer traffic, memory, correctness.

Runs the Hypothesis strategies of ``tests/serving/fuzzing.py`` (structured
messages and raw wire bytes) for ``--cases`` requests against a server process
on loopback, with a valid request every ``--valid-every`` cases whose answer
must equal onnxruntime's on the same model file.  Prints the status-code counts,
the INTERNAL/UNKNOWN count (must be 0), the valid matches, and the server's RSS
after warm-up and at the end.

    python -m bench.fuzz_server --cases 100000          # 10-20 minutes on 2 shared cores
    python -m bench.fuzz_server --cases 3000 --repo demo/models
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from bench.common import python_exe, rss_mb, serve
from histoedge.export.manifest import PROBABILITIES, Manifest
from histoedge.serving._proto import inference_pb2 as pb
from tests.serving.fuzzing import infer_requests, request_bytes, valid_request
from tests.serving.helpers import reference, sample_images
from tests.support.model_packages import write_model_version

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def first_version(repo: Path) -> Path:
    versions = sorted(p for p in repo.glob("*/*") if (p / "manifest.json").is_file() and p.name.isdigit())
    if not versions:
        raise SystemExit(f"no model version in {repo}")
    return max(versions, key=lambda p: (p.parent.name, int(p.name)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--repo", type=Path, help="model repository (default: a tiny generated model)")
    parser.add_argument("--valid-every", type=int, default=20)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    os.environ.setdefault("HISTOEDGE_CMD", str(Path(python_exe()).parent / "histoedge"))
    with tempfile.TemporaryDirectory() as scratch:
        repo = args.repo or Path(scratch)
        if args.repo is None:
            write_model_version(repo, "tiny", 1, size=16)
        version_dir = first_version(repo)
        manifest = Manifest.load(version_dir)
        size = manifest.image_size[0]
        with serve(repo, extra_args=["--grace-seconds", "2"], log_name="fuzz-server") as server:
            figures = fuzz(server, version_dir, manifest.name, size, args)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    ok = (figures["internal_or_unknown"] == 0 and figures["valid_mismatches"] == 0
          and figures["rss_growth_pct"] < 10)
    print("OK" if ok else "MISSED", "- zero INTERNAL/UNKNOWN, every valid answer equal, RSS growth < 10%")
    return 0 if ok else 1


def fuzz(server: dict, version_dir: Path, model: str, size: int, args) -> dict:
    channel = grpc.insecure_channel(server["address"], options=[("grpc.max_receive_message_length", 64 << 20)])
    infer = channel.unary_unary(MODEL_INFER)
    batches = [sample_images(n, seed=s, size=size) for s, n in ((1, 1), (2, 3), (3, 8))]
    wanted = [reference(version_dir, images)[PROBABILITIES] for images in batches]
    valid = [valid_request(images, model).SerializeToString() for images in batches]
    codes: collections.Counter = collections.Counter()
    state = {"cases": 0, "valid": 0, "mismatch": 0, "rss": [], "examples": []}
    pid = server["pid"]
    started = time.monotonic()

    def check_valid() -> None:
        index = state["valid"] % len(valid)
        response = pb.ModelInferResponse.FromString(infer(valid[index], timeout=60))
        names = [o.name for o in response.outputs]
        got = np.frombuffer(response.raw_output_contents[names.index(PROBABILITIES)], np.float32)
        state["valid"] += 1
        if not np.allclose(got.reshape(wanted[index].shape), wanted[index], rtol=1e-6, atol=1e-7):
            state["mismatch"] += 1

    @seed(args.seed)
    @settings(max_examples=args.cases, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(infer_requests(size, model).map(lambda r: r.SerializeToString()),
                     request_bytes(size, model)))
    def one(data: bytes) -> None:
        state["cases"] += 1
        if state["cases"] % args.valid_every == 0:
            check_valid()
        try:
            infer(data, timeout=60)
            codes["OK"] += 1
        except grpc.RpcError as error:
            codes[error.code().name] += 1
            if error.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN) and len(state["examples"]) < 5:
                state["examples"].append({"details": error.details(), "data": data[:300].hex()})
        if state["cases"] % 2000 == 0:
            state["rss"].append((state["cases"], round(rss_mb(pid), 1)))
            print(f"{state['cases']} cases, {time.monotonic() - started:.0f} s, RSS {state['rss'][-1][1]} MB, "
                  f"{dict(codes)}", file=sys.stderr, flush=True)

    rss_start = rss_mb(pid)
    one()
    check_valid()
    channel.close()
    samples = state["rss"] or [(state["cases"], rss_mb(pid))]
    warm = next((rss for cases, rss in samples if cases >= min(10_000, state["cases"] // 5)), samples[0][1])
    end = rss_mb(pid)
    return {
        "cases": state["cases"], "seconds": round(time.monotonic() - started, 1), "codes": dict(codes),
        "internal_or_unknown": codes["INTERNAL"] + codes["UNKNOWN"],
        "valid_checked": state["valid"], "valid_mismatches": state["mismatch"],
        "rss_mb_at_start": round(rss_start, 1), "rss_mb_after_warmup": warm, "rss_mb_at_end": round(end, 1),
        "rss_mb_max": max(r for _, r in samples), "rss_growth_pct": round(100 * (end - warm) / warm, 2),
        "rss_growth_from_start_pct": round(100 * (end - rss_start) / rss_start, 2),
        "malformed_answered_not_ok": state["cases"] - codes["OK"],
        "rss_samples": samples, "internal_examples": state["examples"],
    }


if __name__ == "__main__":
    sys.exit(main())
