"""The seed project's way of serving, rebuilt for comparison: Keras behind a minimal HTTP route.

The seed ran a Flask ``/predict`` route that decoded the uploaded image, resized it to
224x224 and called ``model.predict`` once per request.  Flask is not a dependency here,
so this uses the standard library's threaded HTTP server (Flask's development server is
threaded too); the per-request work is the same: decode PNG, resize, one
``model.predict`` on the whole ensemble (one Keras model whose outputs are the members'
probabilities), then the stacking meta-model in NumPy.

Run::

    python -m bench.seed_endpoint --run RUN --port 8080 --threads 1
    curl --data-binary @tile.png http://127.0.0.1:8080/predict
"""

from __future__ import annotations

import argparse
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Sequence

import numpy as np


def build_ensemble(run: Path):
    """(Keras model image -> [N, M, C] member probabilities, ensemble.json dict)."""
    import keras

    ensemble = json.loads((run / "ensemble.json").read_text())
    members = []
    for name in ensemble["members"]:
        loaded = keras.models.load_model(run / "members" / name / "model.keras", compile=False)
        # every member is saved under the same model name; the ensemble needs distinct ones
        members.append(keras.Model(loaded.inputs, loaded.outputs, name=f"member_{name}"))
    size = int(ensemble["image_size"])
    image = keras.Input((size, size, 3), name="image")
    outputs = [member(image) for member in members]
    stacked = keras.layers.Lambda(lambda ps: keras.ops.stack(ps, axis=1))(outputs) if len(outputs) > 1 \
        else keras.layers.Reshape((1, -1))(outputs[0])
    return keras.Model(image, stacked), ensemble


def combine(member_probabilities: np.ndarray, ensemble: dict) -> np.ndarray:
    """The meta-model of ensemble.json applied to [N, M, C] member probabilities."""
    n = member_probabilities.shape[0]
    if ensemble["method"] == "stacking":
        features = member_probabilities.reshape(n, -1)
        coef = np.asarray(ensemble["stacking"]["coef"], dtype=np.float64)
        intercept = np.asarray(ensemble["stacking"]["intercept"], dtype=np.float64)
        if coef.shape[0] == 1:
            positive = 1.0 / (1.0 + np.exp(-(features @ coef[0] + intercept[0])))
            return np.stack([1.0 - positive, positive], axis=1)
        logits = features @ coef.T + intercept
        logits -= logits.max(axis=1, keepdims=True)
        return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    if ensemble["method"] == "soft_vote":
        weights = np.asarray(ensemble["soft_vote"]["weights"])
        return np.tensordot(weights, member_probabilities, axes=([0], [1]))
    return member_probabilities[:, 0]


def make_handler(model, ensemble: dict):
    import cv2

    size = int(ensemble["image_size"])
    classes = ensemble["classes"]

    class PredictHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"       # keep-alive, like any real client would use

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
            pass

        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            self._reply(200 if self.path == "/health" else 404, {"ok": self.path == "/health"})

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path != "/predict":
                self._reply(404, {"error": "not found"})
                return
            image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
            if image is None:
                self._reply(400, {"error": "not an image"})
                return
            image = cv2.resize(image[:, :, ::-1], (size, size), interpolation=cv2.INTER_AREA)
            members = model.predict(image[None].astype(np.float32), verbose=0)
            probabilities = combine(members, ensemble)[0]
            self._reply(200, {"label": classes[int(np.argmax(probabilities))],
                              "probabilities": probabilities.tolist()})

    return PredictHandler


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run directory with members/ and ensemble.json")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1, help="TensorFlow intra- and inter-op threads")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    model, ensemble = build_ensemble(Path(args.run))
    size = int(ensemble["image_size"])
    model.predict(np.zeros((1, size, size, 3), np.float32), verbose=0)   # build predict_function once
    server = ThreadingHTTPServer((args.host, args.port), make_handler(model, ensemble))
    print(f"seed-style endpoint on http://{args.host}:{args.port}/predict", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
