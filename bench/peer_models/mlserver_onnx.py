"""An onnxruntime runtime for Seldon MLServer (which ships none): one session, one intra-op thread.

Adaptive batching is MLServer's own: with ``max_batch_size``/``max_batch_time`` in
``model-settings.json`` MLServer concatenates queued requests along the first axis before
:meth:`OnnxRuntimeModel.predict` and splits the outputs afterwards.

``model-settings.json``::

    {"name": "breast", "implementation": "mlserver_onnx.OnnxRuntimeModel",
     "parameters": {"uri": "/path/to/model.onnx"}, "max_batch_size": 16, "max_batch_time": 0.002}
"""

from __future__ import annotations

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri

from onnx_session import open_session, run


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        self._session = open_session(await get_model_uri(self._settings))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if len(payload.inputs) != 1:
            raise ValueError(f"expected one input, got {len(payload.inputs)}")
        batch = NumpyCodec.decode_input(payload.inputs[0])
        outputs = [NumpyCodec.encode_output(name, value) for name, value in run(self._session, batch)]
        return InferenceResponse(model_name=self.name, model_version=self.version, outputs=outputs)
