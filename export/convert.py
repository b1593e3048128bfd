"""Keras models to ONNX, one member at a time, with tf2onnx's ``from_function`` route.

``from_function`` on a ``tf.function`` with an explicit input signature works for
every Keras 3 model (``from_keras`` fails on Sequential models) and names the
graph's input and output. Every member of an ensemble is converted at the same
opset so the graphs can be merged.

Example::

    model = load_keras_model(Path("run/members/focal/model.keras"))
    onnx_model = convert_member(KerasMember(model), opset=17)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histoedge.export.manifest import PROBABILITIES
from histoedge.export.repository import ExportError

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
MEMBER_INPUT = "x"
MEMBER_OUTPUT = PROBABILITIES  # each member subgraph's output, before prefixing


def _tf():
    import tensorflow as tf  # noqa: PLC0415 - heavy, imported on use
    return tf


def load_keras_model(path: Path) -> Any:
    """Load a ``.keras``/``.h5`` file (Keras model) or a SavedModel directory (TF object)."""
    path = Path(path)
    if not path.exists():
        raise ExportError(f"{path} does not exist")
    if path.is_dir():
        if not (path / "saved_model.pb").exists():
            raise ExportError(f"{path} is a directory but not a SavedModel (no saved_model.pb)")
        loaded = _tf().saved_model.load(str(path))
        if "serving_default" not in loaded.signatures:
            raise ExportError(f"SavedModel {path} has no serving_default signature")
        return loaded
    if path.suffix not in (".keras", ".h5", ".hdf5"):
        raise ExportError(f"{path}: expected a .keras or .h5 file or a SavedModel directory")
    import keras  # noqa: PLC0415
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for unreadable files
        raise ExportError(f"cannot load Keras model {path}: {error}") from error


@dataclass
class KerasMember:
    """A callable model wrapped for conversion: raw 0..255 float pixels in, [N, C] probabilities out.

    Args:
        model: a Keras model, or a loaded SavedModel (``tf.saved_model.load``).
        input_scale: factor applied to the 0..255 pixels before the model
            (1 when the model rescales itself, 1/255 when it expects 0..1).
        sigmoid_to_two: the model has one sigmoid output p; emit [1-p, p].
    """

    model: Any
    input_scale: float = 1.0
    sigmoid_to_two: bool = False

    @property
    def is_saved_model(self) -> bool:
        return not hasattr(self.model, "layers")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(H, W, channels) read from the model."""
        if self.is_saved_model:
            (spec,) = self.model.signatures["serving_default"].structured_input_signature[1].values()
            shape = tuple(spec.shape)
        else:
            shape = tuple(self.model.inputs[0].shape)
        if len(shape) != 4 or any(d is None for d in shape[1:]):
            raise ExportError(f"model input shape {shape} is not [N, H, W, C] with fixed H, W, C")
        return int(shape[1]), int(shape[2]), int(shape[3])

    @property
    def output_width(self) -> int:
        if self.is_saved_model:
            outputs = self.model.signatures["serving_default"].structured_outputs
            if len(outputs) != 1:
                raise ExportError(f"SavedModel has {len(outputs)} outputs; expected one")
            return int(next(iter(outputs.values())).shape[-1])
        if len(self.model.outputs) != 1:
            raise ExportError(f"model has {len(self.model.outputs)} outputs; expected one")
        return int(self.model.outputs[0].shape[-1])

    def raw_call(self, x):
        if self.is_saved_model:
            outputs = self.model.signatures["serving_default"](x)
            return next(iter(outputs.values()))
        return self.model(x, training=False)

    def __call__(self, x):
        tf = _tf()
        if self.input_scale != 1.0:
            x = x * tf.constant(self.input_scale, tf.float32)
        p = tf.cast(self.raw_call(x), tf.float32)
        if self.sigmoid_to_two:
            p = tf.concat([1.0 - p, p], axis=-1)
        return p

    def predict(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Probabilities for uint8 or float images [N, H, W, 3] in 0..255."""
        chunks = [self(_tf().constant(images[i:i + batch_size], _tf().float32)).numpy()
                  for i in range(0, len(images), batch_size)]
        return np.concatenate(chunks, axis=0).astype(np.float64)


# A Normalization layer adapted on 0..1 images has channel means at most 1; one adapted
# on raw pixels has means of tens to hundreds of grey levels.
_RAW_PIXEL_MEAN = 1.5


def has_rescaling(model: Any) -> bool:
    """Whether the model scales raw 0..255 pixels itself: a Rescaling layer, or a
    Normalization layer whose means show it was adapted on raw pixels (SavedModel: a
    'rescaling' op name)."""
    if hasattr(model, "layers"):
        return any(_is_rescaling(layer) or _normalises_raw_pixels(layer)
                   for layer in _walk_layers(model))
    graph = model.signatures["serving_default"].graph.as_graph_def()
    return any("rescaling" in node.name.lower()
               for function in graph.library.function for node in function.node_def)


def _walk_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _walk_layers(layer)


def _is_rescaling(layer) -> bool:
    return type(layer).__name__ == "Rescaling"


def _normalises_raw_pixels(layer) -> bool:
    if type(layer).__name__ != "Normalization" or getattr(layer, "invert", False):
        return False
    mean = getattr(layer, "mean", None)
    return mean is not None and float(np.max(np.asarray(mean))) > _RAW_PIXEL_MEAN


def convert_member(member: KerasMember, opset: int = DEFAULT_OPSET):
    """Convert one member to an ``onnx.ModelProto`` with input ``x`` float32 [N,H,W,3]
    (pixels 0..255) and output ``probabilities`` float32 [N, C]."""
    tf = _tf()
    import tf2onnx  # noqa: PLC0415

    height, width, channels = member.input_shape
    if channels != 3:
        raise ExportError(f"model expects {channels} channels; only RGB (3) is supported")
    signature = [tf.TensorSpec([None, height, width, 3], tf.float32, name=MEMBER_INPUT)]

    @tf.function(input_signature=signature)
    def serve(x):
        return {MEMBER_OUTPUT: member(x)}

    try:
        # large_model stays False: tf2onnx 1.17's large-model path calls np.product.
        model_proto, _ = tf2onnx.convert.from_function(
            serve, input_signature=signature, opset=opset, large_model=False)
    except Exception as error:
        raise ExportError(f"tf2onnx could not convert the model: {error}") from error
    _inline_captured_constants(model_proto, _captured_constants(serve.get_concrete_function(*signature)))
    return model_proto


def _captured_constants(concrete) -> dict[str, np.ndarray]:
    """Values of the tensors a traced function captured, by their name inside the graph.

    Variables are captured as resource handles and frozen by tf2onnx; plain tensors
    (a Keras 3 Normalization layer's mean and variance) are not, and would otherwise
    become extra graph inputs that a client has to feed.
    """
    tf = _tf()
    return {internal.name: external.numpy()
            for external, internal in concrete.graph.captures
            if internal.dtype != tf.resource and hasattr(external, "numpy")}


def _inline_captured_constants(model_proto, constants: dict[str, np.ndarray]) -> None:
    """Turn graph inputs other than ``x`` into initializers holding the captured values."""
    from onnx import numpy_helper  # noqa: PLC0415

    graph = model_proto.graph
    for graph_input in [i for i in graph.input if i.name != MEMBER_INPUT]:
        if graph_input.name not in constants:
            raise ExportError(f"the converted model has an extra input {graph_input.name!r} that "
                              "is not a captured constant; export needs a model with one image input")
        graph.initializer.append(numpy_helper.from_array(constants[graph_input.name], graph_input.name))
        graph.input.remove(graph_input)
