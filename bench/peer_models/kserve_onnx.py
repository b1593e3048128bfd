"""A KServe ``Model`` wrapping onnxruntime, served by KServe's Python ModelServer (V2 REST and gRPC).

Run (inside the KServe virtual environment, with this folder on ``PYTHONPATH``)::

    python kserve_onnx.py --model_name breast --model_path model.onnx --grpc_port 8001 --http_port 8080 \
        [--enable_latency_logging false]
"""

from __future__ import annotations

import argparse

from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server
from kserve.utils.utils import generate_uuid

from onnx_session import open_session, run


class OnnxRuntimeModel(Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        self._session = open_session(self.path)
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        if len(payload.inputs) != 1:
            raise ValueError(f"expected one input, got {len(payload.inputs)}")
        outputs = []
        for name, value in run(self._session, payload.inputs[0].as_numpy()):
            output = InferOutput(name=name, shape=list(value.shape), datatype="FP32")
            output.set_data_from_numpy(value)          # raw_output_contents over gRPC
            outputs.append(output)
        return InferResponse(response_id=payload.id or generate_uuid(), model_name=self.name,
                             infer_outputs=outputs)


def main() -> None:
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model_path", required=True, help="the ONNX file")
    args, _ = parser.parse_known_args()
    ModelServer().start([OnnxRuntimeModel(args.model_name, args.model_path)])


if __name__ == "__main__":
    main()
