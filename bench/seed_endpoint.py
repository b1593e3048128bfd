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

from histoedge.export.ensemble_spec import ENSEMBLE_FILE, EnsembleSpec
from histoedge.export.manifest import IMAGE, LABEL, PROBABILITIES


def build_ensemble(run: Path):
    """(Keras model image -> [N, M, C] member probabilities, the checked ensemble.json)."""
    import keras

    ensemble = EnsembleSpec.load(run / ENSEMBLE_FILE)
    members = []
    for name in ensemble.members:
        loaded = keras.models.load_model(run / "members" / name / "model.keras", compile=False)
        # every member is saved under the same model name; the ensemble needs distinct ones
        # (one output tensor, not a one-element list: stacking lists would add an axis)
        members.append(keras.Model(loaded.inputs, loaded.outputs[0], name=f"member_{name}"))
    size = ensemble.image_size
    image = keras.Input((size, size, 3), name=IMAGE)
    outputs = [member(image) for member in members]
    stacked = keras.layers.Lambda(lambda ps: keras.ops.stack(ps, axis=1))(outputs) if len(outputs) > 1 \
        else keras.layers.Reshape((1, -1))(outputs[0])
    return keras.Model(image, stacked), ensemble


def make_handler(model, ensemble: EnsembleSpec):
    import cv2

    size, classes = ensemble.image_size, ensemble.classes

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
            probabilities = ensemble.combine(members)[0]
            self._reply(200, {LABEL: classes[int(np.argmax(probabilities))],
                              PROBABILITIES: probabilities.tolist()})

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
    size = ensemble.image_size
    model.predict(np.zeros((1, size, size, 3), np.float32), verbose=0)   # build predict_function once
    server = ThreadingHTTPServer((args.host, args.port), make_handler(model, ensemble))
    print(f"seed-style endpoint on http://{args.host}:{args.port}/predict", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
