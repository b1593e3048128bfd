"""The data plane: what every transport calls, with internal types only.

Example::

    plane = DataPlane(registry, metrics)
    response = plane.infer(InferenceRequest(model_name="breast", inputs=[Tensor(IMAGE, "UINT8", x)]))
"""

from __future__ import annotations

import time

import histoedge
from histoedge.serving.errors import ServerClosingError, ServingError
from histoedge.serving.metrics import ServerMetrics
from histoedge.serving.repository import ModelRegistry
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
        """Answer one request with the model version it names; raise a ServingError on failure."""
        started = time.monotonic()
        model = self.registry.get(request.model_name, request.model_version)
        labels = {"model": model.name, "version": str(model.version), "protocol": request.protocol}
        try:
            try:
                response = model.infer(request)
            except ServerClosingError:
                successor = None if request.model_version else self.registry.get(request.model_name)
                if successor is None or successor is model:
                    raise
                # The version was retired between lookup and queueing (a newer one replaced it):
                # the successor runs the whole request again, since its input size may differ.
                model = successor
                labels = {"model": model.name, "version": str(model.version), "protocol": request.protocol}
                response = model.infer(request)
        except ServingError as error:
            self.metrics.requests.labels(outcome=error.outcome, **labels).inc()
            raise
        except Exception:
            self.metrics.requests.labels(outcome="internal", **labels).inc()
            raise
        self.metrics.requests.labels(outcome="ok", **labels).inc()
        self.metrics.request_seconds.labels(**labels).observe(time.monotonic() - started)
        return response
