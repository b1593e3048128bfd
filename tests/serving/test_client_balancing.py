"""Client load balancing over replicas: round robin, and retry on another replica on UNAVAILABLE."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import grpc
import pytest

from histoedge import HistoedgeError
from histoedge.export.manifest import IMAGE
from histoedge.serving.client import InferenceClient, channel_target, service_config
from histoedge.serving.schema import Tensor
from tests.serving.helpers import MODEL, SIZE, encode, free_port, sample_images, wait_until
from tests.support.model_packages import write_model_version

HISTOEDGE = str(Path(sys.executable).parent / "histoedge")
THREADS, STOP_AFTER, AFTER_EXIT = 4, 500, 300  # requests before the signal; requests after replica A is gone


def serve(repo: Path, port: int, log: Path) -> subprocess.Popen:
    return subprocess.Popen([HISTOEDGE, "serve", "--repo", str(repo), "--host", "127.0.0.1", "--port", str(port),
                             "--metrics-port", "0", "--http-port", "0", "--threads", "1", "--poll-seconds", "0",
                             "--grace-seconds", "5"],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def serving(address: str) -> bool:
    try:
        with InferenceClient(address, timeout=1) as client:
            return client.health() == "SERVING"
    except grpc.RpcError:
        return False


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_stopping_one_replica_loses_no_request(tmp_path, stop):
    """SIGTERM: the replica drains (health NOT_SERVING, then in-flight calls finish) and leaves the
    rotation.  SIGKILL: its in-flight calls fail with UNAVAILABLE and are retried on the other."""
    # The same weights on both replicas; the version number tells which one answered.
    repos = [tmp_path / "a", tmp_path / "b"]
    for version, repo in enumerate(repos, start=1):
        write_model_version(repo, MODEL, version, size=SIZE, seed=3)
    ports = [free_port(), free_port()]
    servers = [serve(repo, port, tmp_path / f"{repo.name}.log") for repo, port in zip(repos, ports)]
    addresses = [f"127.0.0.1:{port}" for port in ports]
    try:
        for address in addresses:
            wait_until(lambda: serving(address), timeout=60)
        answered: Counter = Counter()
        failures: list = []
        done = [0]
        lock = threading.Lock()
        stopped_at: list[int] = []
        images = sample_images(1, seed=5)

        with InferenceClient(addresses, timeout=10) as client:
            # Clients keep sending until told to stop, so however long replica A takes to drain,
            # requests are still coming when it leaves and after.
            running = threading.Event()
            running.set()

            def send() -> None:
                while running.is_set():
                    try:
                        _, version = client.infer([Tensor(IMAGE, "UINT8", images)], MODEL)
                        with lock:
                            answered[version] += 1
                    except grpc.RpcError as error:
                        with lock:
                            failures.append(f"{error.code().name}: {error.details()}")
                    with lock:
                        done[0] += 1

            threads = [threading.Thread(target=send) for _ in range(THREADS)]
            for thread in threads:
                thread.start()
            try:
                wait_until(lambda: done[0] >= STOP_AFTER, timeout=120, interval=0.001)
                servers[0].send_signal(stop)
                stopped_at.append(done[0])
                # drained and exited (or killed) while requests kept coming
                assert servers[0].wait(30) == (0 if stop == signal.SIGTERM else -signal.SIGKILL)
                with lock:
                    exited_at, answered_at_exit = done[0], Counter(answered)
                wait_until(lambda: done[0] >= exited_at + AFTER_EXIT, timeout=120, interval=0.001)
            finally:
                running.clear()
                for thread in threads:
                    thread.join(120)
        print(f"\nrequests answered per replica: {dict(answered)}; {stop.name} after {stopped_at[0]}, "
              f"replica A gone after {exited_at}, {done[0]} in all; failed: {len(failures)}")
        assert failures == []
        assert sum(answered.values()) == done[0]
        assert answered["1"] > 0 and answered["2"] > 0
        # replica A was gone before the run ended, and B took every request after it left
        assert answered["1"] == answered_at_exit["1"]
        assert answered["2"] - answered_at_exit["2"] >= AFTER_EXIT

        # `histoedge classify` with the stopped replica still listed: the live one answers.
        tile = tmp_path / "tile.png"
        tile.write_bytes(encode(sample_images(1, seed=9)[0]))
        result = subprocess.run([HISTOEDGE, "classify", "--server", addresses[0], "--server", addresses[1],
                                 "--model", MODEL, "--json", str(tile)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert '"label"' in result.stdout
    finally:
        for server in servers:
            if server.poll() is None:
                server.kill()
                server.wait()


def test_channel_targets():
    assert channel_target("127.0.0.1:8001") == ("127.0.0.1:8001", False)
    assert channel_target("dns:///histoedge.ns.svc:8001") == ("dns:///histoedge.ns.svc:8001", True)
    assert channel_target(["127.0.0.1:1", "127.0.0.2:2"]) == ("ipv4:127.0.0.1:1,127.0.0.2:2", True)
    assert channel_target("127.0.0.1:1, 127.0.0.1:2") == ("ipv4:127.0.0.1:1,127.0.0.1:2", True)
    assert channel_target(["[::1]:1", "[::1]:2"]) == ("ipv6:[::1]:1,[::1]:2", True)
    assert channel_target(["localhost:1", "127.0.0.1:2"])[0].startswith("ipv4:127.0.0.1:1,")
    for bad, match in ((["dns:///a:1", "b:2"], "stands alone"), (["127.0.0.1", "b:2"], "HOST:PORT"),
                       ([], "no server"), (["127.0.0.1:1", "[::1]:2"], "IPv4 or all IPv6")):
        with pytest.raises(HistoedgeError, match=match):
            channel_target(bad)
    balanced, single = service_config(True), service_config(False)
    assert balanced["loadBalancingConfig"] == [{"round_robin": {}}] and "healthCheckConfig" in balanced
    assert "loadBalancingConfig" not in single and "healthCheckConfig" not in single
    assert single["methodConfig"][0]["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
