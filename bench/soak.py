"""Soak and fault run of a real ``histoedge serve`` process, printing figures.

Soak (``--seconds``): ``--clients`` threads send valid requests (raw UINT8 batches
and PNG bytes) and compare every answer with onnxruntime on the version that
answered, while a fault thread hot-swaps versions (a new version appears, the
oldest is deleted), drops in broken versions of many kinds, and a canceller
sends calls with 1 ms deadlines and calls it cancels at once.  The server's RSS,
threads and open descriptors are sampled every second.

SIGTERM (``--sigterm-repeats``): a fresh server under continuous load gets
SIGTERM; every call sent until it exits must be answered OK or UNAVAILABLE
(never CANCELLED), and it must exit 0.

    python -m bench.soak --seconds 600 --sigterm-repeats 20        # by hand
    python -m bench.soak --seconds 12 --clients 4 --sigterm-repeats 2   # the CI budget (tests/serving/test_soak.py)
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort

from histoedge.export.manifest import IMAGE, IMAGE_BYTES, PROBABILITIES
from histoedge.serving._proto import inference_pb2 as pb
from histoedge.serving._proto import inference_pb2_grpc as pb_grpc
from histoedge.serving.codecs import encode_bytes
from tests.serving.fuzzing import valid_request
from tests.serving.helpers import decode_like_server, encode, free_port, sample_images
from tests.support.model_packages import tiny_model_bytes, write_model_version

MODEL, SIZE = "soak", 16
BROKEN_KINDS = ("bad-checksum", "garbage-model", "no-manifest", "bad-json", "wrong-classes", "name-mismatch",
                "empty-folder", "non-ascii-folder", "zero-folder", "truncated-model", "no-model")


def histoedge_command() -> list[str]:
    # faulthandler: a server that hangs on SIGTERM gets SIGABRT and prints every thread's stack.
    return [sys.executable, "-X", "faulthandler", str(Path(sys.executable).parent / "histoedge")]


class ServerProcess:
    """``histoedge serve`` on loopback, with /proc sampling."""

    def __init__(self, repo: Path, log_path: Path, *extra: str) -> None:
        self.port = free_port()
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(
            histoedge_command() + ["serve", "--repo", str(repo), "--host", "127.0.0.1", "--port", str(self.port),
                                   "--metrics-port", "0", "--http-port", "0", "--threads", "1",
                                   "--poll-seconds", "0.5", *extra],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.address = f"127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited {self.process.returncode}")
                with contextlib.suppress(grpc.RpcError):
                    if stub.ServerReady(pb.ServerReadyRequest(), timeout=1).ready:
                        return
                time.sleep(0.1)
        raise RuntimeError("server not ready")

    def sample(self) -> dict:
        pid = self.process.pid
        status = Path(f"/proc/{pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        return {"rss_mb": int(fields["VmRSS"].split()[0]) / 1024, "threads": int(fields["Threads"]),
                "fds": len(os.listdir(f"/proc/{pid}/fd"))}

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
            self.process.wait(30)
            raise RuntimeError(f"server did not exit within 60 s of SIGTERM; its log:\n"
                               f"{Path(self.log.name).read_text()[-6000:]}") from None
        finally:
            self.log.close()


class References:
    """onnxruntime answers for every version this run has written."""

    def __init__(self) -> None:
        self.sessions: dict[str, ort.InferenceSession] = {}
        self.lock = threading.Lock()

    def add(self, version: int, model_bytes: bytes) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        with self.lock:
            self.sessions[str(version)] = ort.InferenceSession(model_bytes, options,
                                                               providers=["CPUExecutionProvider"])

    def probabilities(self, version: str, images: np.ndarray) -> np.ndarray:
        with self.lock:
            session = self.sessions[version]
        return session.run([PROBABILITIES], {IMAGE: images})[0]


def write_version(repo: Path, version: int, references: References) -> None:
    data = tiny_model_bytes(SIZE, 2, 2, seed=version)
    references.add(version, data)
    write_model_version(repo, MODEL, version, size=SIZE, model_bytes=data)


def write_broken(repo: Path, version: int, kind: str) -> Path:
    """A version folder broken in one of BROKEN_KINDS (written in place, as a careless copy would be)."""
    folder = repo / MODEL / {"non-ascii-folder": "²", "zero-folder": "0"}.get(kind, str(version))
    if kind in ("empty-folder", "non-ascii-folder", "zero-folder"):
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    staging = Path(tempfile.mkdtemp())
    path = write_model_version(staging, MODEL, version, size=SIZE, seed=version)
    if kind == "bad-checksum":
        (path / "model.onnx").write_bytes(tiny_model_bytes(SIZE, 2, 2, seed=version + 1000))
    elif kind == "garbage-model":
        (path / "model.onnx").write_bytes(os.urandom(2048))
    elif kind == "truncated-model":
        data = (path / "model.onnx").read_bytes()
        (path / "model.onnx").write_bytes(data[: len(data) // 2])
    elif kind == "no-model":
        (path / "model.onnx").unlink()
    elif kind == "no-manifest":
        (path / "manifest.json").unlink()
    elif kind == "bad-json":
        (path / "manifest.json").write_text("{ not json")
    elif kind == "wrong-classes":
        text = (path / "manifest.json").read_text().replace('"malignant"', '"malignant",\n    "other"', 1)
        (path / "manifest.json").write_text(text)
    elif kind == "name-mismatch":
        text = (path / "manifest.json").read_text().replace(f'"name": "{MODEL}"', '"name": "elsewhere"')
        (path / "manifest.json").write_text(text)
    shutil.move(str(path), str(folder))
    shutil.rmtree(staging, ignore_errors=True)
    return folder


def load_client(address: str, references: References, stop: threading.Event, tally: collections.Counter,
                errors: list, seed: int) -> None:
    rng = random.Random(seed)
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while not stop.is_set():
            images = sample_images(rng.randint(1, 4), seed=rng.randrange(10_000), size=SIZE)
            if rng.random() < 0.3:
                request = pb.ModelInferRequest(model_name=MODEL)
                request.inputs.add(name=IMAGE_BYTES, datatype="BYTES", shape=[len(images)])
                request.raw_input_contents.append(encode_bytes([encode(image) for image in images]))
                images = np.stack([decode_like_server(encode(image), SIZE) for image in images])
            else:
                request = valid_request(images, MODEL)
            try:
                response = stub.ModelInfer(request, timeout=60)
            except grpc.RpcError as error:
                tally[f"error {error.code().name}"] += 1
                errors.append(error.details()[:200])
                continue
            names = [output.name for output in response.outputs]
            got = np.frombuffer(response.raw_output_contents[names.index(PROBABILITIES)], np.float32)
            want = references.probabilities(response.model_version, images)
            if np.allclose(got.reshape(want.shape), want, rtol=1e-6, atol=1e-7):
                tally["ok"] += 1
            else:
                tally["wrong answer"] += 1


def canceller(address: str, stop: threading.Event, tally: collections.Counter) -> None:
    data = valid_request(sample_images(2, size=SIZE), MODEL).SerializeToString()
    expected = {grpc.StatusCode.OK, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED}
    with grpc.insecure_channel(address) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        for index in itertools.count():
            if stop.is_set():
                return
            future = infer.future(data, timeout=0.001 if index % 2 else 30)
            if index % 2 == 0:
                time.sleep(random.random() * 0.002)
                future.cancel()
            try:
                future.result()
                code = grpc.StatusCode.OK
            except grpc.FutureCancelledError:
                code = grpc.StatusCode.CANCELLED
            except grpc.RpcError as error:
                code = error.code()
            tally["cancel " + code.name if code in expected else "cancel unexpected " + code.name] += 1


def soak(seconds: float, clients: int, workdir: Path) -> dict:
    repo = workdir / "soak-models"
    references = References()
    write_version(repo, 1, references)
    server = ServerProcess(repo, workdir / "soak-server.log", "--grace-seconds", "5")
    tally: collections.Counter = collections.Counter()
    errors: list[str] = []
    samples: list[tuple[float, dict]] = []
    faults: collections.Counter = collections.Counter()
    stop = threading.Event()
    try:
        server.wait_ready()
        started = time.monotonic()
        threads = [threading.Thread(target=load_client, args=(server.address, references, stop, tally, errors, i))
                   for i in range(clients)]
        threads.append(threading.Thread(target=canceller, args=(server.address, stop, tally)))
        for thread in threads:
            thread.start()
        version, broken_number, kinds = 1, 1000, itertools.cycle(BROKEN_KINDS)
        broken: list[Path] = []
        next_fault = started + 2
        while time.monotonic() - started < seconds:
            time.sleep(1)
            samples.append((round(time.monotonic() - started, 1), server.sample()))
            if time.monotonic() < next_fault:
                continue
            next_fault = time.monotonic() + max(2.0, seconds / 30)
            version += 1
            write_version(repo, version, references)          # hot swap: a new version arrives ...
            faults["versions added"] += 1
            if version > 3:
                shutil.rmtree(repo / MODEL / str(version - 2))  # ... and an old one is deleted
                faults["versions deleted"] += 1
            kind = next(kinds)
            broken_number += 1
            broken.append(write_broken(repo, broken_number, kind))
            faults[f"broken: {kind}"] += 1
            if len(broken) > 3:
                shutil.rmtree(broken.pop(0), ignore_errors=True)
        stop.set()
        for thread in threads:
            thread.join(60)
    finally:
        stop.set()
        exit_code = server.stop()
    minute = next((s for t, s in samples if t >= min(60.0, seconds / 3)), samples[0][1])
    end = samples[-1][1]
    wrong = tally["wrong answer"] + sum(v for k, v in tally.items() if k.startswith(("error", "cancel unexpected")))
    return {"seconds": seconds, "clients": clients, "requests_ok": tally["ok"], "errors": wrong,
            "tally": dict(tally), "faults": dict(faults), "error_examples": errors[:5],
            "rss_mb_first": round(samples[0][1]["rss_mb"], 1),
            "rss_mb_after_first_minute": round(minute["rss_mb"], 1), "rss_mb_end": round(end["rss_mb"], 1),
            "rss_growth_after_first_minute_pct": round(100 * (end["rss_mb"] - minute["rss_mb"]) / minute["rss_mb"], 2),
            "threads_min_max": [min(s["threads"] for _, s in samples), max(s["threads"] for _, s in samples)],
            "fds_min_max": [min(s["fds"] for _, s in samples), max(s["fds"] for _, s in samples)],
            "fds_after_first_minute_end": [minute["fds"], end["fds"]], "exit_code": exit_code}


def sigterm_once(repo: Path, clients: int, workdir: Path, index: int) -> dict:
    server = ServerProcess(repo, workdir / f"sigterm-{index}.log", "--grace-seconds", "10")
    server.wait_ready()
    data = valid_request(sample_images(1, size=SIZE), MODEL).SerializeToString()
    codes: collections.Counter = collections.Counter()
    lock = threading.Lock()
    signalled = threading.Event()

    def client() -> None:
        with grpc.insecure_channel(server.address) as channel:
            infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            while server.process.poll() is None:
                before = signalled.is_set()
                try:
                    infer(data, timeout=30)
                    code = "OK"
                except grpc.RpcError as error:
                    code = error.code().name
                with lock:
                    codes[f"{code} ({'after' if before else 'around/before'} SIGTERM)"] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    server.process.send_signal(signal.SIGTERM)
    signalled.set()
    exit_code = server.stop()
    for thread in threads:
        thread.join(60)
    return {"codes": dict(codes), "exit_code": exit_code}


def sigterm(repeats: int, clients: int, workdir: Path) -> dict:
    repo = workdir / "sigterm-models"
    write_version(repo, 1, References())
    runs = [sigterm_once(repo, clients, workdir, index) for index in range(repeats)]
    total: collections.Counter = collections.Counter()
    for run in runs:
        total.update(run["codes"])
    cancelled = sum(v for k, v in total.items() if k.startswith("CANCELLED"))
    others = {k: v for k, v in total.items() if not k.startswith(("OK", "UNAVAILABLE"))}
    return {"repeats": repeats, "clients": clients, "codes": dict(total), "cancelled": cancelled,
            "other_codes": others, "exit_codes": [run["exit_code"] for run in runs]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--sigterm-repeats", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        figures = {"soak": soak(args.seconds, args.clients, workdir)} if args.seconds > 0 else {}
        if args.sigterm_repeats:
            figures["sigterm"] = sigterm(args.sigterm_repeats, args.clients, workdir)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return figures


if __name__ == "__main__":
    result = main()
    soak_ok = "soak" not in result or (result["soak"]["errors"] == 0
                                       and result["soak"]["rss_growth_after_first_minute_pct"] < 10)
    sigterm_ok = "sigterm" not in result or (result["sigterm"]["cancelled"] == 0
                                             and set(result["sigterm"]["exit_codes"]) == {0})
    print("OK" if soak_ok and sigterm_ok else "MISSED",
          "- soak: zero errors, RSS growth < 10% after the first minute; SIGTERM: zero CANCELLED, exit 0")
    sys.exit(0 if soak_ok and sigterm_ok else 1)
