"""One loaded model version: checksum-verified onnxruntime session, batcher, pre/post-processing.

The version owns its request path: :meth:`ModelVersion.infer` validates a request's
inputs (decoding and resizing encoded images to this version's size), normalises their
stain when the manifest carries a reference (``export/stain.py``, the code training used),
queues the rows on its batcher, waits for the batch to run and builds the response.

Example::

    model = ModelVersion.load(Path("models/breast/3"), settings, metrics)
    response = model.infer(InferenceRequest("breast", inputs=[Tensor(IMAGE, "UINT8", images)]))
    model.close()
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort

from histoedge.export.manifest import (IMAGE, IMAGE_BYTES, LABEL, MODEL_FILE, PROBABILITIES, Manifest,
                                       ManifestError)
from histoedge.export.stain import StainError, StainReference, from_preprocessing
from histoedge.serving import images
from histoedge.serving.batcher import Batcher, Outputs
from histoedge.serving.errors import CancelledError, DeadlineExceededError, InvalidInputError, ModelLoadError
from histoedge.serving.metrics import ServerMetrics
from histoedge.serving.monitoring.monitor import Monitoring, refuse_monitoring_options
from histoedge.serving.monitoring.profile import ReferenceProfile, load_profile
from histoedge.serving.schema import InferenceRequest, InferenceResponse, ModelMetadata, Tensor, TensorMetadata
from histoedge.serving.settings import ServerSettings
from histoedge.serving.untrusted import client_text

log = logging.getLogger(__name__)

PROVIDER_PRIORITY = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
DEVICE_PROVIDERS = {
    "auto": PROVIDER_PRIORITY,
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": PROVIDER_PRIORITY,
}
RunHook = Callable[[Callable[[np.ndarray], Outputs]], Callable[[np.ndarray], Outputs]]


def select_providers(device: str) -> list[str]:
    """The execution providers for ``device`` that this onnxruntime build has, in priority order."""
    available = set(ort.get_available_providers())
    wanted = DEVICE_PROVIDERS[device]
    if device != "auto" and wanted[0] not in available:
        raise ModelLoadError(f"--device {device} needs {wanted[0]}, which this onnxruntime lacks "
                             f"(has {', '.join(sorted(available))}); install onnxruntime-gpu")
    return [name for name in wanted if name in available]


def create_session(model_bytes: bytes, settings: ServerSettings) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.threads
    options.inter_op_num_threads = 1
    # Spinning threads burn the edge box's CPU while the server idles.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, sess_options=options,
                                providers=select_providers(settings.device))


class ModelVersion:
    """A model version ready to serve.  Build with :meth:`load`."""

    def __init__(self, manifest: Manifest, path: Path, session: ort.InferenceSession,
                 settings: ServerSettings, metrics: ServerMetrics, run_hook: RunHook | None = None,
                 monitoring: Monitoring | None = None, profile: ReferenceProfile | None = None,
                 decode_budget: images.DecodeBudget | None = None) -> None:
        self.manifest = manifest
        self.monitoring = monitoring  # None: --no-monitoring
        self.profile = profile        # the package's reference profile, if it has one
        self.decode_budget = decode_budget
        self.path = path
        self.session = session
        self.settings = settings
        self.providers = tuple(session.get_providers())
        self.output_names = [o.name for o in session.get_outputs()]
        labels = {"model": manifest.name, "version": str(manifest.version)}
        try:
            self.stain: StainReference | None = from_preprocessing(manifest.preprocessing)
        except StainError as error:
            raise ModelLoadError(f"{path}: manifest has a bad stain reference: {error}") from error
        self._stain_fallbacks = lambda reason: metrics.stain_fallbacks.labels(**labels, reason=reason).inc()
        run = run_hook(self._run) if run_hook else self._run
        self.batcher = Batcher(
            run, settings.batch_limit, settings.max_queue_delay_ms / 1000.0, settings.max_queue_size,
            name=f"{manifest.name}/{manifest.version}",
            on_batch=lambda rows, waits, seconds: _observe_batch(metrics, labels, rows, waits, seconds),
            on_depth=metrics.queue_depth.labels(**labels).set, wait=settings.batch_wait,
            on_delivered=functools.partial(monitoring.observe_batch, self) if monitoring else None)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def image_size(self) -> tuple[int, int]:
        return self.manifest.image_size

    @classmethod
    def load(cls, path: Path, settings: ServerSettings, metrics: ServerMetrics,
             run_hook: RunHook | None = None, monitoring: Monitoring | None = None,
             decode_budget: images.DecodeBudget | None = None) -> "ModelVersion":
        """Verify, load and warm up ``path`` (``MODELS/<name>/<version>``); raise ModelLoadError."""
        try:
            manifest = Manifest.load(path)
            model_bytes = (path / MODEL_FILE).read_bytes()
            if hashlib.sha256(model_bytes).hexdigest() != manifest.sha256:
                raise ModelLoadError(f"{path / MODEL_FILE} does not match the SHA-256 in its manifest")
            if manifest.name != path.parent.name or str(manifest.version) != path.name:
                raise ModelLoadError(
                    f"manifest says {manifest.name}/{manifest.version} but the folder is "
                    f"{path.parent.name}/{path.name}")
            profile = load_profile(path, manifest.profile)
            session = create_session(model_bytes, settings)
        except (OSError, ManifestError, ValueError, KeyError) as error:
            raise ModelLoadError(str(error)) from error
        except ModelLoadError:
            raise
        except Exception as error:  # onnxruntime raises its own types for bad graphs
            raise ModelLoadError(f"onnxruntime cannot load {path / MODEL_FILE}: {error}") from error
        model = cls(manifest, path, session, settings, metrics, run_hook, monitoring, profile, decode_budget)
        model._check_graph()
        model._warm_up()
        model.batcher.start()
        return model

    def _check_graph(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        if IMAGE not in inputs or inputs[IMAGE].type != "tensor(uint8)":
            raise ModelLoadError(f"{self.path}: the graph needs a uint8 input named '{IMAGE}'")
        if PROBABILITIES not in self.output_names:
            raise ModelLoadError(f"{self.path}: the graph has no output '{PROBABILITIES}'")
        try:
            self.image_size
        except (KeyError, IndexError, ValueError) as error:
            raise ModelLoadError(f"{self.path}: manifest has no usable '{IMAGE}' input") from error

    def _warm_up(self) -> None:
        height, width = self.image_size
        started = time.monotonic()
        try:
            outputs = self._run(np.zeros((1, height, width, 3), dtype=np.uint8))
        except Exception as error:
            raise ModelLoadError(f"{self.path}: warm-up inference failed: {error}") from error
        classes = outputs[PROBABILITIES].shape[-1]
        if classes != len(self.manifest.classes):
            raise ModelLoadError(f"{self.path}: the graph gives {classes} classes, the manifest "
                                 f"names {len(self.manifest.classes)}")
        log.info("loaded model %s version %d (%s, %s) on %s; warm-up %.0f ms", self.name, self.version,
                 self.manifest.precision, "x".join(map(str, self.image_size)), ",".join(self.providers),
                 (time.monotonic() - started) * 1000)

    def _run(self, batch: np.ndarray) -> Outputs:
        return dict(zip(self.output_names, self.session.run(self.output_names, {IMAGE: batch})))

    def close(self) -> None:
        self.batcher.close()

    # --- request handling -------------------------------------------------------------

    def infer(self, request: InferenceRequest) -> InferenceResponse:
        """Answer one request with this version: validate, batch, run, build the outputs.

        Raises a :class:`~histoedge.serving.errors.ServingError`; ``ServerClosingError``
        means this version was retired before the request was queued, and the whole
        request may be sent to another version.
        """
        # Monitoring (quality, drift, abstention, feedback): see serving/monitoring/monitor.py; the
        # images of a request that asks for neither quality nor abstention are assessed after the
        # answer, a batch at a time (the note the batcher carries back to the monitoring hook).
        watch = self.monitoring.begin(request) if self.monitoring else refuse_monitoring_options(request)
        self.batcher.announce()  # the batcher may wait for this request while it decodes
        try:
            rows = self.normalise(self._prepare_inputs(request.inputs))
            requested = watch.outputs if watch else request.outputs
            names = [] if watch and watch.quality and not requested else self._check_outputs(requested)
            note = self.monitoring.note(watch, request.inputs) if watch else None
            future = self.batcher.submit(rows, request.deadline, note)
        finally:
            self.batcher.withdraw()
        if watch and not watch.deferred:
            watch.assess(self, rows, request.inputs)  # while the batch runs
        outputs = _wait(future, request)
        tensors = self._make_outputs(outputs, names)
        if watch:
            tensors = watch.finish(self, outputs, tensors)
        return InferenceResponse(model_name=self.name, model_version=str(self.version), outputs=tensors,
                                 id=watch.request_id if watch else request.id)

    def _prepare_inputs(self, inputs: list[Tensor]) -> np.ndarray:
        """Validate the request's inputs and return uint8 [N, H, W, 3]."""
        if len(inputs) != 1:
            raise InvalidInputError(
                f"expected exactly one input, '{IMAGE}' (UINT8 [N,{self._hw}]) or '{IMAGE_BYTES}' "
                f"(BYTES [N]), got {len(inputs)}: {[client_text(t.name) for t in inputs[:4]]}")
        tensor = inputs[0]
        if tensor.data.ndim and len(tensor.data) > self.settings.max_request_images:
            raise InvalidInputError(f"{len(tensor.data)} images in one request, more than the server's "
                                    f"limit of {self.settings.max_request_images} (--max-request-images)")
        if tensor.name == IMAGE:
            return self._check_pixels(tensor)
        if tensor.name == IMAGE_BYTES:
            if tensor.datatype != "BYTES":
                raise InvalidInputError(f"input '{IMAGE_BYTES}' must be BYTES, not {tensor.datatype}")
            if tensor.data.ndim not in (1, 2) or (tensor.data.ndim == 2 and tensor.shape[1] != 1):
                raise InvalidInputError(f"input '{IMAGE_BYTES}' must have shape [N], not {list(tensor.shape)}")
            if tensor.data.size == 0:
                raise InvalidInputError(f"input '{IMAGE_BYTES}' holds no images")
            return images.decode_images(tensor.data.reshape(-1), self.image_size,
                                        self.settings.max_image_pixels, self.decode_budget)
        raise InvalidInputError(
            f"unknown input '{client_text(tensor.name)}'; model '{self.name}' takes '{IMAGE}' or '{IMAGE_BYTES}'")

    def normalise(self, rows: np.ndarray) -> np.ndarray:
        """Stain-normalise uint8 [N, H, W, 3] rows as in training; tiles it cannot handle pass unchanged."""
        if self.stain is None:
            return rows
        out = np.empty_like(rows)
        for i, row in enumerate(rows):
            out[i], reason = self.stain.normalise(row)
            if reason is not None:
                self._stain_fallbacks(reason)
        return out

    @property
    def _hw(self) -> str:
        return "{},{},3".format(*self.image_size)

    def _check_pixels(self, tensor: Tensor) -> np.ndarray:
        if tensor.datatype != "UINT8":
            raise InvalidInputError(f"input '{IMAGE}' must be UINT8, not {tensor.datatype}")
        height, width = self.image_size
        shape = tensor.shape
        if len(shape) != 4 or shape[1:] != (height, width, 3) or shape[0] < 1:
            raise InvalidInputError(
                f"input '{IMAGE}' must have shape [N,{self._hw}] with N >= 1, not {list(shape)}")
        return tensor.data

    def output_metadata(self) -> list[TensorMetadata]:
        return list(self._output_metadata)

    @functools.cached_property
    def _output_metadata(self) -> tuple[TensorMetadata, ...]:
        # Built once: asking the session for its outputs on every request cost as much as
        # decoding the request's tensor (py-spy at 64 px, bench/results/server_profile_64*.md).
        specs = {spec.name: spec.shape for spec in self.manifest.outputs}
        result = []
        for output in self.session.get_outputs():
            graph_shape = tuple(d if isinstance(d, int) else -1 for d in output.shape)
            result.append(TensorMetadata(output.name, "FP32", tuple(specs.get(output.name, graph_shape))))
        return (*result, TensorMetadata(LABEL, "BYTES", (-1,)))

    @functools.cached_property
    def _output_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self._output_metadata)

    def _known_outputs(self) -> list[TensorMetadata]:
        """What metadata advertises: the outputs, plus ``quality`` when monitoring is on."""
        extra = [self.monitoring.output_metadata()] if self.monitoring else []
        return self.output_metadata() + extra

    def _check_outputs(self, requested: list[str]) -> list[str]:
        """The outputs to return, in order; raise InvalidInputError for unknown names."""
        known = list(self._output_names)
        unknown = [name for name in requested if name not in known]
        if unknown:
            raise InvalidInputError(f"unknown output(s) {[client_text(n) for n in unknown[:4]]}; model '{self.name}' has {known}")
        return list(requested) or known

    def _make_outputs(self, outputs: Outputs, names: list[str]) -> list[Tensor]:
        result = []
        for name in names:
            if name == LABEL:
                result.append(Tensor(LABEL, "BYTES", self.labels(outputs[PROBABILITIES])))
            else:
                result.append(Tensor(name, "FP32", np.asarray(outputs[name], dtype=np.float32)))
        return result

    def predicted_classes(self, probabilities: np.ndarray) -> np.ndarray:
        """Class indices: binary models threshold P(positive); others take the arg-max."""
        classes = self.manifest.classes
        positive, threshold = self.manifest.positive_class, self.manifest.threshold
        if len(classes) == 2 and positive is not None and threshold is not None:
            return np.where(probabilities[:, positive] >= threshold, positive, 1 - positive)
        return np.argmax(probabilities, axis=1)

    def labels(self, probabilities: np.ndarray) -> np.ndarray:
        """Class names of :meth:`predicted_classes`."""
        classes = self.manifest.classes
        chosen = self.predicted_classes(probabilities)
        labels = np.empty(len(chosen), dtype=object)
        labels[:] = [classes[int(index)].encode("utf-8") for index in chosen]
        return labels

    def metadata(self, versions: tuple[str, ...]) -> ModelMetadata:
        height, width = self.image_size
        manifest = self.manifest
        parameters = {
            "providers": ",".join(self.providers), "precision": manifest.precision,
            "classes": ",".join(manifest.classes), "members": ",".join(manifest.members),
            "image_size": f"{height}x{width}", "sha256": manifest.sha256,
            "max_batch_size": self.settings.batch_limit,
        }
        if manifest.threshold is not None:
            parameters["threshold"] = float(manifest.threshold)
        if manifest.positive_class is not None:
            parameters["positive_class"] = int(manifest.positive_class)
        if manifest.uncertainty_band is not None:
            parameters["uncertainty_band"] = ",".join(f"{v:.6g}" for v in manifest.uncertainty_band)
        parameters["reference_profile"] = self.profile is not None
        if manifest.field_of_view is not None:  # slide clients tile at the training field of view
            parameters["microns_per_pixel"] = float(manifest.field_of_view.microns_per_pixel)
            parameters["training_image_size"] = "{}x{}".format(*manifest.field_of_view.image_size)
        if self.stain is not None:
            parameters["stain_normalisation"] = self.stain.method
        return ModelMetadata(
            name=self.name, versions=versions, platform="onnxruntime_onnx",
            inputs=(TensorMetadata(IMAGE, "UINT8", (-1, height, width, 3)),
                    TensorMetadata(IMAGE_BYTES, "BYTES", (-1,))),
            outputs=tuple(self._known_outputs()), parameters=parameters)


def _wait(future: concurrent.futures.Future, request: InferenceRequest) -> Outputs:
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


def _observe_batch(metrics: ServerMetrics, labels: dict, rows: int, waits: list[float], seconds: float) -> None:
    metrics.batch_size.labels(**labels).observe(rows)
    metrics.inference_seconds.labels(**labels).observe(seconds)
    queue = metrics.queue_seconds.labels(**labels)
    for wait in waits:
        queue.observe(wait)
