"""Every REST error has its HTTP status and a JSON body that says what was wrong; the server keeps serving."""

from __future__ import annotations

import concurrent.futures
from http.client import HTTPConnection
import json

import numpy as np
import pytest

from histoedge.serving.rest import HTTP_STATUS
from histoedge.serving.servicer import STATUS_CODES
from tests.serving.helpers import MODEL, SIZE, Gate, encode, free_port, http, multipart, sample_images, wait_until

IMAGE = sample_images(1)


def tensor(name="image", datatype="UINT8", shape=None, data=None, **extra) -> dict:
    item = {"name": name, "datatype": datatype, "shape": list(IMAGE.shape) if shape is None else shape,
            "data": IMAGE.reshape(-1).tolist() if data is None else data}
    item.update(extra)
    return item


def binary_body(header: dict, binary: bytes) -> tuple[bytes, dict]:
    text = json.dumps(header).encode()
    return text + binary, {"Inference-Header-Content-Length": str(len(text)),
                           "Content-Type": "application/octet-stream"}


def call(server, path: str, body: bytes | None = None, headers: dict | None = None, method: str | None = None):
    status, headers, data = http(f"http://127.0.0.1:{server.http_port}{path}",
                                 method or ("POST" if body is not None else "GET"), body, headers)
    return status, headers, json.loads(data)


def infer(server, payload, path: str = f"/v2/models/{MODEL}/infer"):
    body, headers = payload if isinstance(payload, tuple) else (json.dumps(payload).encode(), {})
    return call(server, path, body, headers)


def test_one_table_covers_the_errors_grpc_maps():
    assert set(HTTP_STATUS) == set(STATUS_CODES)


BAD_INFER = [
    (b"{not json", "not valid JSON"),
    ({"inputs": []}, "non-empty list"),
    ({"inputs": [tensor(name="pixels")]}, "unknown input 'pixels'"),
    ({"inputs": [tensor(datatype="FLOAT7")]}, "unknown datatype"),
    ({"inputs": [tensor(shape=[1, SIZE, SIZE, 4])]}, "needs"),
    ({"inputs": [tensor(data=["a"] * IMAGE.size)]}, "only UINT8 values"),
    ({"inputs": [tensor(data=[300] * IMAGE.size)]}, "out of range"),
    ({"inputs": [tensor(shape=[1, SIZE, SIZE * 3], data=[0] * IMAGE.size)]}, f"[N,{SIZE},{SIZE},3]"),
    ({"inputs": [tensor("image_bytes", "BYTES", [1], ["not an image"])]}, "unrecognised header"),
    ({"inputs": [tensor("image_bytes", "BYTES", [1], ["***"], parameters={"content_type": "base64"})]}, "base64"),
    ({"inputs": [tensor()], "outputs": [{"name": "nothing"}]}, "unknown output"),
    ({"inputs": [tensor()], "parameters": {"timeout": -5}}, "microseconds"),
    (b"[" * 100_000 + b"]" * 100_000, "too deeply"),
    (binary_body({"inputs": [tensor(parameters={"binary_data_size": 10})]}, b"x" * 10), "not both"),
    (binary_body({"inputs": [{"name": "image", "datatype": "UINT8", "shape": list(IMAGE.shape),
                              "parameters": {"binary_data_size": 10}}]}, b"x" * 10), "needs 768"),
    (binary_body({"inputs": [{"name": "image", "datatype": "UINT8", "shape": list(IMAGE.shape),
                              "parameters": {"binary_data_size": IMAGE.size}}]}, IMAGE.tobytes() + b"extra"),
     "no input claims"),
    ((b"{}", {"Inference-Header-Content-Length": "99"}), "Inference-Header-Content-Length is 99"),
]


@pytest.mark.parametrize("payload, words", BAD_INFER)
def test_bad_infer_requests_are_400(http_server, payload, words):
    if isinstance(payload, bytes):
        payload = (payload, {"Content-Type": "application/json"})
    status, _, body = infer(http_server, payload)
    assert status == 400, body
    assert words in body["error"] and body["outcome"] in ("invalid_input", "invalid_request")


@pytest.mark.parametrize("path, method, status, words", [
    ("/v2/models/absent/infer", "POST", 404, "unknown model 'absent'"),
    (f"/v2/models/{MODEL}/versions/9/infer", "POST", 404, "no version '9'"),
    ("/v2/models/absent", "GET", 404, "unknown model"),
    ("/v2/nothing/here", "GET", 404, "Not Found"),
    (f"/v2/models/{MODEL}/infer", "GET", 405, "Method Not Allowed"),
])
def test_unknown_models_routes_and_methods(http_server, path, method, status, words):
    body = json.dumps({"inputs": [tensor()]}).encode() if method == "POST" else None
    got, _, answer = call(http_server, path, body, method=method)
    assert got == status and words in answer["error"]


def test_classify_errors_name_the_file(http_server, caplog):
    path = f"/v2/models/{MODEL}/classify"
    status, _, body = call(http_server, path, *multipart({"good.png": encode(IMAGE[0]), "bad\n.png": b"junk"}))
    assert status == 400 and "file 'bad\\n.png': not a PNG" in body["error"]  # the name is escaped, too
    assert "bad" not in caplog.text and "image_bytes[1]" in caplog.text  # logs hold no client file names
    status, _, body = call(http_server, path, *multipart({}))
    assert status == 400 and "no image file" in body["error"]
    status, _, body = call(http_server, path, b"raw bytes", {"Content-Type": "image/png"})
    assert status == 415 and "multipart/form-data" in body["error"]
    status, _, body = call(http_server, path + "?timeout_ms=soon", *multipart({"a.png": encode(IMAGE[0])}))
    assert status == 400 and "timeout_ms" in body["error"]
    status, _, body = call(http_server, path, *multipart({"a.png": encode(IMAGE[0])}))
    assert status == 200 and body["results"][0]["file"] == "a.png"  # still serving


def test_request_size_limit_is_413(repo, start_server):
    server = start_server(repo, http_port=free_port(), max_message_mb=1)
    big = json.dumps({"inputs": [tensor(data=[0] * 600_000)]}).encode()
    assert len(big) > 1024 * 1024
    # A keep-alive connection: the server answers at once and drops the rest of the body.
    connection = HTTPConnection("127.0.0.1", server.http_port, timeout=20)
    connection.request("POST", f"/v2/models/{MODEL}/infer", body=big, headers={"Content-Type": "application/json"})
    response = connection.getresponse()  # refused from its Content-Length
    assert response.status == 413 and "--max-message-mb" in json.loads(response.read())["error"]
    connection.request("POST", f"/v2/models/{MODEL}/classify", body=iter([big[:600_000], big[600_000:]]),
                       headers={"Content-Type": "multipart/form-data; boundary=x"}, encode_chunked=True)
    response = connection.getresponse()  # no Content-Length: counted while it streams in
    assert response.status == 413 and "over the limit" in json.loads(response.read())["error"]
    connection.close()
    assert call(server, "/v2/health/ready")[0] == 200


def test_queue_full_is_429_then_recovers(repo, start_server):
    gate = Gate(hold=True)
    server = start_server(repo, run_hook=gate, http_port=free_port(), max_queue_size=1, max_queue_delay_ms=0)
    batcher = server.models.get(MODEL).batcher
    payload = {"inputs": [tensor()]}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(infer, server, payload)
        wait_until(gate.running.is_set)
        queued = pool.submit(infer, server, payload)
        wait_until(lambda: batcher.pending() == 1)
        status, headers, body = infer(server, payload)
        assert status == 429 and headers["Retry-After"] == "1"
        assert body["outcome"] == "queue_full" and "--max-queue-size" in body["error"]
        gate.release()
        assert first.result()[0] == queued.result()[0] == 200
    assert server.metrics.registry.get_sample_value("histoedge_requests_total", {
        "model": MODEL, "version": "1", "outcome": "queue_full", "protocol": "rest"}) == 1


def test_deadline_is_504_and_never_runs(repo, start_server):
    gate = Gate(hold=True)
    server = start_server(repo, run_hook=gate, http_port=free_port(), max_queue_delay_ms=0)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(infer, server, {"inputs": [tensor()]})
        wait_until(gate.running.is_set)
        status, _, body = infer(server, {"inputs": [tensor()], "parameters": {"timeout": 200_000}})
        assert status == 504 and body["outcome"] == "deadline_exceeded" and "deadline" in body["error"]
        status, _, body = call(server, f"/v2/models/{MODEL}/classify?timeout_ms=200",
                               *multipart({"a.png": encode(IMAGE[0])}))
        assert status == 504
        gate.release()
        assert first.result()[0] == 200
    assert gate.batch_sizes == [1]


def test_model_without_a_loadable_version_is_503(tmp_path, start_server):
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "manifest.json").write_text("{")
    server = start_server(tmp_path, http_port=free_port())
    status, headers, body = infer(server, {"inputs": [tensor()]}, "/v2/models/broken/infer")
    assert status == 503 and body["outcome"] == "not_ready" and headers["Retry-After"] == "5"
    assert call(server, "/v2/health/ready")[0] == 400 and call(server, "/v2/models/broken/ready")[0] == 400
    assert call(server, "/v2/health/live")[0] == 200


def test_unexpected_failure_is_500_and_the_server_keeps_serving(repo, start_server):
    failing = {"on": True}

    def hook(run):
        def maybe_fail(batch):
            if failing["on"]:
                raise RuntimeError("the accelerator fell off")
            return run(batch)
        return maybe_fail

    server = start_server(repo, run_hook=hook, http_port=free_port())
    status, _, body = infer(server, {"inputs": [tensor()]})
    assert status == 500 and body["outcome"] == "internal" and "the accelerator fell off" in body["error"]
    failing["on"] = False
    status, _, body = infer(server, {"inputs": [tensor()]})
    assert status == 200 and np.array(body["outputs"][0]["data"]).size > 0


def test_client_that_goes_away_leaves_the_queue(repo, start_server):
    gate = Gate(hold=True)
    server = start_server(repo, run_hook=gate, http_port=free_port(), max_queue_delay_ms=0)
    batcher = server.models.get(MODEL).batcher
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(infer, server, {"inputs": [tensor()]})
        wait_until(gate.running.is_set)
        connection = HTTPConnection("127.0.0.1", server.http_port, timeout=20)
        connection.request("POST", f"/v2/models/{MODEL}/infer", body=json.dumps({"inputs": [tensor()]}).encode())
        wait_until(lambda: batcher.pending() == 1)
        connection.close()  # the client gives up while its request waits
        wait_until(lambda: batcher.pending() == 0)
        gate.release()
        assert first.result()[0] == 200
    wait_until(lambda: server.metrics.registry.get_sample_value("histoedge_requests_total", {
        "model": MODEL, "version": "1", "outcome": "cancelled", "protocol": "rest"}) == 1)
    assert gate.batch_sizes == [1]  # the abandoned request never ran
