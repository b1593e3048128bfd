"""The data plane: what every transport calls, with internal types only.

Example::

    plane = DataPlane(registry, metrics)
    response = plane.infer(InferenceRequest(model_name="breast", inputs=[Tensor(IMAGE, "UINT8", x)]))
"""

from __future__ import annotations

import concurrent.futures
import time

import histoedge
from histoedge.serving.errors import (CancelledError, DeadlineExceededError, ServerClosingError,
                            ServingError)
from histoedge.serving.metrics import ServerMetrics
from histoedge.serving.repository import ModelRegistry
from histoedge.serving.runtime import ModelVersion
from histoedge.serving.schema import InferenceRequest, InferenceResponse, ModelMetadata

SERVER_NAME = "histoedge"
EXTENSIONS = ("health", "model_repository_polling")


class DataPlane:
    """Inference, readiness and metadata on top of a :class:`ModelRegistry`."""

    def __init__(self, registry: ModelRegistry, metrics: ServerMetrics) -> None:
        self.registry = registry
        self.metrics = metrics

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.registry.all_ready()

    def model_ready(self, name: str, version: str = "") -> bool:
        return self.registry.ready(name, version)

    def server_metadata(self) -> dict:
        return {"name": SERVER_NAME, "version": histoedge.__version__, "extensions": list(EXTENSIONS)}

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        model = self.registry.get(name, version)
        versions = tuple(str(v) for v in self.registry.versions(model.name))
        return model.metadata(versions)

    def infer(self, request: InferenceRequest) -> InferenceResponse:
        """Run one request through its model's batcher; raise a ServingError on failure."""
        started = time.monotonic()
        model = self.registry.get(request.model_name, request.model_version)
        labels = {"model": model.name, "version": str(model.version)}
        try:
            batcher = model.batcher
            batcher.announce()  # the batcher may wait for this request while it decodes
            try:
                rows = model.prepare_inputs(request.inputs)
                names = model.check_outputs(request.outputs)
                model, future = self._submit(model, rows, request)
            finally:
                batcher.withdraw()
            labels = {"model": model.name, "version": str(model.version)}
            outputs = self._wait(future, request)
            response = InferenceResponse(
                model_name=model.name, model_version=str(model.version),
                outputs=model.make_outputs(outputs, names), id=request.id)
        except ServingError as error:
            self.metrics.requests.labels(outcome=error.outcome, **labels).inc()
            raise
        except Exception:
            self.metrics.requests.labels(outcome="internal", **labels).inc()
            raise
        self.metrics.requests.labels(outcome="ok", **labels).inc()
        self.metrics.request_seconds.labels(**labels).observe(time.monotonic() - started)
        return response

    def _submit(self, model: ModelVersion, rows, request: InferenceRequest):
        try:
            return model, model.batcher.submit(rows, request.deadline)
        except ServerClosingError:
            if request.model_version:
                raise
            # The version was retired between lookup and submit (a newer one replaced it).
            model = self.registry.get(request.model_name)
            return model, model.batcher.submit(rows, request.deadline)

    @staticmethod
    def _wait(future: concurrent.futures.Future, request: InferenceRequest):
        request.cancel.add_callback(future.cancel)
        timeout = None if request.deadline is None else max(0.0, request.deadline - time.monotonic())
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise DeadlineExceededError("deadline passed while the request waited for inference") from None
        except concurrent.futures.CancelledError:
            if request.deadline is not None and time.monotonic() >= request.deadline:
                raise DeadlineExceededError("deadline passed before the request was answered") from None
            raise CancelledError("the client cancelled the request") from None
