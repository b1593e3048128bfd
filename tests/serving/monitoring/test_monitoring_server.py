"""A server with a model exported from a synthetic run watches normal, stain-shifted and blurred traffic."""

from __future__ import annotations

import csv
import json
import shutil

import grpc
import numpy as np
import pytest

from histoedge.serving import codecs
from histoedge.serving._proto import inference_pb2 as pb
from histoedge.serving.client import InferenceClient
from histoedge.serving.schema import Tensor
from tests.serving.helpers import encode, sample_images, wait_until
from tests.serving.monitoring.images import blur, he_tiles, stain_shift
from tests.support.model_packages import write_model_version

SIZE, PHASE = 32, 48


def _train_member(images: np.ndarray, labels: np.ndarray):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(images, labels, epochs=4, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def exported_repo(tmp_path_factory):
    """Synthetic H&E tiles -> a one-member run (trained for a few seconds) -> histoedge export."""
    from histoedge.export.package import export_run

    root = tmp_path_factory.mktemp("synthetic_run")
    images, labels = he_tiles(200, SIZE, seed=0)
    rows = []
    for i, (image, label) in enumerate(zip(images, labels)):
        path = root / "tiles" / f"tile_{i:03d}.png"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(encode(image))
        split = "train" if i < 120 else "val" if i < 160 else "test"
        rows.append({"path": str(path), "label": ("benign", "malignant")[label], "patient": f"p{i % 20}",
                     "split": split})
    run = root / "run"
    (run / "members" / "cnn").mkdir(parents=True)
    _train_member(images[:120], labels[:120]).save(run / "members" / "cnn" / "model.keras")
    with open(run / "splits.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (run / "ensemble.json").write_text(json.dumps({
        "method": "single", "members": ["cnn"], "classes": ["benign", "malignant"], "image_size": SIZE,
        "positive_class": 1, "threshold": 0.5}))
    repo = root / "models"
    export_run(run, repo, "breast")
    return repo


def _metric(server, name, **labels):
    return server.metrics.registry.get_sample_value(name, {"model": "breast", "version": "1", **labels}) or 0.0


def _send(client, images, **options):
    outputs = {}
    for start in range(0, len(images), 8):
        chunk = images[start:start + 8]
        data = np.empty(len(chunk), dtype=object)
        data[:] = [encode(image) for image in chunk]
        answer, _ = client.infer([Tensor("image_bytes", "BYTES", data)], "breast", **options)
        for key, value in answer.items():
            outputs.setdefault(key, []).extend(value)
    return outputs


def test_drift_quality_and_abstention_on_shifted_and_blurred_traffic(exported_repo, start_server):
    version = exported_repo / "breast" / "1"
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["profile"]["file"] == "profile.json" and (version / "profile.json").is_file()
    low, high = manifest["uncertainty_band"]
    assert 0 <= low < 0.5 < high <= 1  # centred on the threshold
    server = start_server(exported_repo, drift_window_images=PHASE)
    features = ("od_hematoxylin", "od_eosin", "stain_distance", "focus")
    validation_like = he_tiles(PHASE, SIZE, seed=7)[0]
    psi, failures = {}, {}
    with InferenceClient(f"127.0.0.1:{server.port}") as client:
        for phase, images, options in (
                ("normal", validation_like, {}),
                ("shifted", stain_shift(validation_like), {}),
                ("blurred", blur(validation_like), {"abstain": True, "outputs": ("label", "probabilities", "quality")})):
            outputs = _send(client, images, **options)
            psi[phase] = {f: _metric(server, "histoedge_drift_psi", feature=f, window="count") for f in features}
            failures[phase] = {r: _metric(server, "histoedge_quality_failures_total", reason=r)
                               for r in ("out_of_focus", "stain", "background")}
    print("PSI per phase:", {k: {f: round(v, 2) for f, v in d.items()} for k, d in psi.items()})
    print("quality failures (cumulative):", failures)
    assert _metric(server, "histoedge_window_images", window="count") == PHASE
    assert _metric(server, "histoedge_quality_images_total") == 3 * PHASE
    # normal traffic: no drift, (almost) no quality failures
    assert max(psi["normal"].values()) < 0.5
    assert sum(failures["normal"].values()) <= 2
    # a strong stain shift: stain features drift, the stain check fires
    assert max(psi["shifted"]["od_eosin"], psi["shifted"]["stain_distance"]) > 1.0
    assert failures["shifted"]["stain"] - failures["normal"]["stain"] >= PHASE // 4
    # blurred: focus drifts, every image is out of focus, and with abstain all are indeterminate
    assert psi["blurred"]["focus"] > 2.0 and psi["normal"]["focus"] < 0.5
    assert failures["blurred"]["out_of_focus"] - failures["shifted"]["out_of_focus"] == PHASE
    assert set(outputs["label"]) == {b"indeterminate"}
    assert all(abs(sum(row) - 1) < 1e-4 for row in outputs["probabilities"])  # probabilities still returned
    quality = [json.loads(item) for item in outputs["quality"]]
    assert all("out_of_focus" in q["failed"] and q["abstained"] == "quality" for q in quality)
    checks = json.loads((version / "profile.json").read_text())["checks"]
    focus_limit = next(c["min"] for c in checks if c["reason"] == "out_of_focus")
    assert all(q["features"]["focus"] < focus_limit for q in quality)
    assert _metric(server, "histoedge_abstentions_total", reason="quality") == PHASE


def test_abstain_from_the_server_default_and_the_uncertainty_band(tmp_path, start_server):
    images = sample_images(64, seed=3)
    write_model_version(tmp_path, "tiny", 1, profile_images=images, uncertainty_band=(0.0, 1.0))
    server = start_server(tmp_path, abstain=True)
    with InferenceClient(f"127.0.0.1:{server.port}") as client:
        outputs, _ = client.infer([Tensor("image", "UINT8", images[:4])], "tiny")
        assert set(outputs["label"]) == {b"indeterminate"} and "quality" not in outputs
        outputs, _ = client.infer([Tensor("image", "UINT8", images[:4])], "tiny", abstain=False,
                                  outputs=("label", "quality"))
        assert b"indeterminate" not in set(outputs["label"])
        assert [json.loads(q)["abstained"] for q in outputs["quality"]] == [None] * 4
        metadata = client.model_metadata("tiny")
        assert "quality" in [o.name for o in metadata.outputs]
        assert metadata.parameters["uncertainty_band"].string_param == "0,1"
        request_id = client.last_id
        assert len(request_id) == 32  # made up by the server for a request without one
    assert server.metrics.registry.get_sample_value(
        "histoedge_abstentions_total", {"model": "tiny", "version": "1", "reason": "uncertain"}) == 4
    assert server.metrics.registry.get_sample_value(
        "histoedge_low_confidence_rate", {"model": "tiny", "version": "1", "window": "time"}) == 1.0


def test_bad_requests_and_monitoring_off(tmp_path, start_server):
    write_model_version(tmp_path, "tiny", 1)
    server = start_server(tmp_path)
    off = start_server(tmp_path, no_monitoring=True)
    images = sample_images(2)
    with InferenceClient(f"127.0.0.1:{server.port}") as client:
        message = pb.ModelInferRequest(model_name="tiny")
        tensor, raw = codecs.encode_input(Tensor("image", "UINT8", images))
        message.inputs.append(tensor)
        message.raw_input_contents.append(raw)
        message.parameters["abstain"].string_param = "maybe"
        with pytest.raises(grpc.RpcError) as error:
            client.stub.ModelInfer(message, timeout=10)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "abstain" in error.value.details()
        # no profile: features are still reported, no check fails
        outputs, _ = client.infer([Tensor("image", "UINT8", images)], "tiny", outputs=("quality",))
        assert list(outputs) == ["quality"] and json.loads(outputs["quality"][0])["failed"] == []
    with InferenceClient(f"127.0.0.1:{off.port}") as client:
        with pytest.raises(grpc.RpcError) as error:
            client.infer([Tensor("image", "UINT8", images)], "tiny", abstain=True)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert client.infer([Tensor("image", "UINT8", images)], "tiny")[0]["label"].shape == (2,)
    assert off.metrics.registry.get_sample_value(
        "histoedge_quality_images_total", {"model": "tiny", "version": "1"}) is None


def test_tampered_profile_is_refused_and_series_vanish_on_unload(tmp_path, start_server):
    images = sample_images(32, seed=1)
    write_model_version(tmp_path, "tiny", 1, profile_images=images)
    bad = write_model_version(tmp_path, "tiny", 2, profile_images=images)
    profile = bad / "profile.json"
    profile.write_text(profile.read_text().replace('"schema": 1', '"schema": 1 '))
    server = start_server(tmp_path)
    assert server.models.versions("tiny") == (1,)  # version 2 fails its checksum, 1 keeps serving
    with InferenceClient(f"127.0.0.1:{server.port}") as client:
        client.infer([Tensor("image", "UINT8", images[:3])], "tiny")
    labels = {"model": "tiny", "version": "1"}
    assert server.metrics.registry.get_sample_value("histoedge_quality_images_total", labels) == 3
    write_model_version(tmp_path, "tiny", 3, profile_images=images)
    shutil.rmtree(tmp_path / "tiny" / "1")
    shutil.rmtree(bad)
    server.models.refresh()
    wait_until(lambda: server.models.versions("tiny") == (3,))
    assert server.metrics.registry.get_sample_value("histoedge_quality_images_total", labels) is None


def test_checked_and_deferred_requests_merged_in_one_batch_are_each_counted_once(exported_repo, start_server):
    """Requests asking for ``quality`` are assessed in their thread, the others after the answer."""
    import concurrent.futures
    import time

    runs = []

    def slow_first_run(run):
        def wrapped(batch):
            runs.append(len(batch))
            if len(runs) == 1:
                time.sleep(0.3)  # the other requests queue up and run as one batch after this
            return run(batch)
        return wrapped

    server = start_server(exported_repo, run_hook=slow_first_run, max_queue_delay_ms=100)
    tiles = he_tiles(20, SIZE, seed=3)[0]
    wide = np.concatenate([tiles[0]] * 3, axis=1)  # width / height 3: fails the size_ratio check
    requests = [[encode(image) for image in tiles[i * 4:(i + 1) * 4]] for i in range(5)]
    requests[1][0] = requests[2][0] = encode(wide)  # one checked request, one deferred

    def send(index):
        data = np.empty(4, dtype=object)
        data[:] = requests[index]
        outputs = ("label", "quality") if index % 2 else ()
        with InferenceClient(f"127.0.0.1:{server.port}") as client:
            return client.infer([Tensor("image_bytes", "BYTES", data)], "breast", outputs=outputs)[0]

    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        first = pool.submit(send, 0)
        wait_until(lambda: runs)
        rest = [pool.submit(send, index) for index in range(1, 5)]
        answers = [first.result(), *(future.result() for future in rest)]
    assert max(runs) >= 8, runs  # checked and deferred requests shared a batch
    assert all("quality" in answers[i] for i in (1, 3)) and "quality" not in answers[2]
    assert _metric(server, "histoedge_quality_images_total") == 20
    assert _metric(server, "histoedge_window_images", window="count") == 20
    assert _metric(server, "histoedge_quality_failures_total", reason="size_ratio") == 2
    assert "size_ratio" in json.loads(answers[1]["quality"][0])["failed"]
    assert _metric(server, "histoedge_quality_skipped_images_total") == 0
