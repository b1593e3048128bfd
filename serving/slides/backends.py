"""Where slide tiles are classified: in process with onnxruntime, or on a server over gRPC.

All three backends take uint8 tiles [N, H, W, 3] already at the model's input size and
return futures of ``probabilities`` [N, C]; labels are decided here, the same way for
all of them (:meth:`ModelInfo.labels`), so ``--model`` and ``--server`` agree.

* :class:`LocalBackend` (``--model MODELS/NAME[/VERSION]``): the model package's
  checksum-verified ``model.onnx`` in an onnxruntime session, as the server loads it.
* :class:`StreamBackend` (``--server``): one ``ModelStreamInfer`` stream; requests
  and responses flow independently, matched by request id.
* :class:`UnaryBackend` (``--server --transport unary``): concurrent ``ModelInfer`` calls.

Example::

    backend = LocalBackend.open(Path("models/breast"), threads=2)
    probabilities = backend.submit(tiles).result()
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import itertools
import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoedge import HistoedgeError
from histoedge.export.stain import StainError, from_preprocessing
from histoedge.export.manifest import (IMAGE, MANIFEST_FILE, MODEL_FILE, PROBABILITIES, FieldOfView, Manifest,
                                       ManifestError, version_folders)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """What the slide client needs to know about the model that classifies its tiles."""

    name: str
    version: str
    sha256: str
    classes: tuple[str, ...]
    positive_class: int | None
    threshold: float | None
    input_size: tuple[int, int]  # (height, width)
    field_of_view: FieldOfView | None

    @property
    def positive_name(self) -> str:
        index = 1 if self.positive_class is None else self.positive_class
        return self.classes[min(index, len(self.classes) - 1)]

    def labels(self, probabilities: np.ndarray) -> list[str]:
        """Class names, by the server's rule: binary models threshold P(positive), others arg-max."""
        if len(self.classes) == 2 and self.positive_class is not None and self.threshold is not None:
            chosen = np.where(probabilities[:, self.positive_class] >= self.threshold,
                              self.positive_class, 1 - self.positive_class)
        else:
            chosen = np.argmax(probabilities, axis=1)
        return [self.classes[int(index)] for index in chosen]

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> "ModelInfo":
        return cls(name=manifest.name, version=str(manifest.version), sha256=manifest.sha256,
                   classes=tuple(manifest.classes), positive_class=manifest.positive_class,
                   threshold=manifest.threshold, input_size=manifest.image_size,
                   field_of_view=manifest.field_of_view)

    @classmethod
    def from_parameters(cls, name: str, version: str, parameters: dict) -> "ModelInfo":
        """From a server's ModelMetadata parameters (see ``serving.runtime.ModelVersion.metadata``)."""
        try:
            height, width = (int(v) for v in str(parameters["image_size"]).split("x"))
            fov = None
            if "microns_per_pixel" in parameters:
                fov_h, fov_w = (int(v) for v in str(parameters["training_image_size"]).split("x"))
                fov = FieldOfView(float(parameters["microns_per_pixel"]), (fov_h, fov_w))
            return cls(name=name, version=version, sha256=str(parameters.get("sha256", "")),
                       classes=tuple(str(parameters["classes"]).split(",")),
                       positive_class=None if "positive_class" not in parameters
                       else int(parameters["positive_class"]),
                       threshold=None if "threshold" not in parameters else float(parameters["threshold"]),
                       input_size=(height, width), field_of_view=fov)
        except (KeyError, ValueError, ManifestError) as error:
            raise HistoedgeError(f"the server's metadata for model {name} lacks what slides need: "
                                 f"{error}") from None


def resolve_version_dir(path: Path) -> Path:
    """``MODELS/NAME/VERSION`` as given, or the highest version under ``MODELS/NAME``."""
    path = Path(path)
    if (path / MANIFEST_FILE).is_file():
        return path
    versions = version_folders(path) if path.is_dir() else {}
    if not versions:
        raise HistoedgeError(f"--model {path}: neither a model version folder (with manifest.json) "
                             "nor a model folder with version sub-folders")
    return versions[max(versions)]


class LocalBackend:
    """A model package run in this process with onnxruntime.

    Args:
        version_dir: ``MODELS/NAME/VERSION``.
        threads: onnxruntime intra-op threads.
        workers: batches run at the same time (1 suits a CPU: onnxruntime uses ``threads``).
    """

    transport = "local"

    def __init__(self, version_dir: Path, threads: int, workers: int = 1, device: str = "auto") -> None:
        from histoedge.serving.runtime import create_session
        from histoedge.serving.settings import ServerSettings

        try:
            manifest = Manifest.load(version_dir)
            model_bytes = (version_dir / MODEL_FILE).read_bytes()
        except (OSError, ManifestError) as error:
            raise HistoedgeError(f"--model {version_dir}: {error}") from None
        if hashlib.sha256(model_bytes).hexdigest() != manifest.sha256:
            raise HistoedgeError(f"{version_dir / MODEL_FILE} does not match the SHA-256 in its manifest")
        self.info = ModelInfo.from_manifest(manifest)
        try:  # the stain normalisation the server would apply, so both paths see the same pixels
            self.stain = from_preprocessing(manifest.preprocessing)
        except StainError as error:
            raise HistoedgeError(f"--model {version_dir}: {error}") from None
        self.session = create_session(model_bytes, ServerSettings(threads=threads, device=device))
        self._pool = concurrent.futures.ThreadPoolExecutor(max(1, workers), thread_name_prefix="slide-infer")

    @classmethod
    def open(cls, path: Path, threads: int, workers: int = 1, device: str = "auto") -> "LocalBackend":
        return cls(resolve_version_dir(path), threads, workers, device)

    def run(self, images: np.ndarray) -> np.ndarray:
        if self.stain is not None:
            images = self.stain.normalise_batch(images)[0]
        return self.session.run([PROBABILITIES], {IMAGE: images})[0]

    def submit(self, images: np.ndarray) -> concurrent.futures.Future:
        return self._pool.submit(self.run, images)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _request(images: np.ndarray, info: ModelInfo, request_id: str = ""):
    from histoedge.serving import codecs
    from histoedge.serving._proto import inference_pb2 as pb
    from histoedge.serving.schema import Tensor

    request = pb.ModelInferRequest(model_name=info.name, model_version=info.version, id=request_id)
    message, raw = codecs.encode_input(Tensor(IMAGE, "UINT8", np.ascontiguousarray(images)))
    request.inputs.append(message)
    request.raw_input_contents.append(raw)
    request.outputs.add(name=PROBABILITIES)
    return request


def _probabilities(response) -> np.ndarray:
    from histoedge.serving import codecs

    for message, raw in zip(response.outputs, response.raw_output_contents):
        if message.name == PROBABILITIES:
            return codecs.decode_output(message, raw).data
    raise HistoedgeError(f"the server's answer has no '{PROBABILITIES}' output")


def remote_model_info(client, model: str) -> ModelInfo:
    """The model's facts from the server, pinned to the version it serves now."""
    metadata = client.model_metadata(model, "")
    parameters = {key: getattr(value, value.WhichOneof("parameter_choice"))
                  for key, value in metadata.parameters.items()}
    version = str(max(int(v) for v in metadata.versions)) if metadata.versions else ""
    return ModelInfo.from_parameters(metadata.name, version, parameters)


class UnaryBackend:
    """Concurrent ``ModelInfer`` calls on one channel."""

    transport = "grpc-unary"

    def __init__(self, client, info: ModelInfo) -> None:
        self.client, self.info = client, info

    def submit(self, images: np.ndarray) -> concurrent.futures.Future:
        result: concurrent.futures.Future = concurrent.futures.Future()
        call = self.client.stub.ModelInfer.future(_request(images, self.info), timeout=self.client.timeout)

        def done(call_future) -> None:
            try:
                result.set_result(_probabilities(call_future.result()))
            except Exception as error:  # noqa: BLE001 - handed to whoever waits
                result.set_exception(_rpc_error(error, self.client.server))
        call.add_done_callback(done)
        return result

    def close(self) -> None:
        pass


class StreamBackend:
    """One ``ModelStreamInfer`` stream: requests go out as they come, answers are matched by id."""

    transport = "grpc-stream"

    def __init__(self, client, info: ModelInfo) -> None:
        self.client, self.info = client, info
        self._outgoing: queue.Queue = queue.Queue()
        self._pending: dict[str, concurrent.futures.Future] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._failure: Exception | None = None
        self._call = client.stub.ModelStreamInfer(iter(self._outgoing.get, None))
        self._receiver = threading.Thread(target=self._receive, name="slide-stream", daemon=True)
        self._receiver.start()

    def submit(self, images: np.ndarray) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        request_id = str(next(self._ids))
        with self._lock:
            if self._failure is not None:
                future.set_exception(self._failure)
                return future
            self._pending[request_id] = future
        self._outgoing.put(_request(images, self.info, request_id))
        return future

    def _receive(self) -> None:
        try:
            for response in self._call:
                with self._lock:
                    future = self._pending.pop(response.infer_response.id, None)
                if future is None:
                    continue
                if response.error_message:
                    future.set_exception(HistoedgeError(f"{self.client.server}: {response.error_message}"))
                else:
                    try:
                        future.set_result(_probabilities(response.infer_response))
                    except HistoedgeError as error:
                        future.set_exception(error)
            failure: Exception = HistoedgeError(f"{self.client.server}: the stream ended early")
        except Exception as error:  # noqa: BLE001 - every waiting tile batch must hear of it
            failure = _rpc_error(error, self.client.server)
        with self._lock:
            self._failure = failure
            pending, self._pending = self._pending, {}
        for future in pending.values():
            future.set_exception(failure)

    def close(self) -> None:
        self._outgoing.put(None)
        self._receiver.join(timeout=self.client.timeout)
        if self._receiver.is_alive():
            self._call.cancel()


def _rpc_error(error: Exception, server: str) -> Exception:
    import grpc

    if isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        return HistoedgeError(f"{server}: {error.code().name}: {error.details()}")
    return error


__all__ = ["ModelInfo", "LocalBackend", "UnaryBackend", "StreamBackend", "remote_model_info",
           "resolve_version_dir"]
