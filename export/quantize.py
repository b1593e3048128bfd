"""Reduced-precision variants of an exported ensemble graph: int8 (static) and fp16.

int8 uses onnxruntime static quantisation calibrated on training-split images. The
default :data:`INT8_DEFAULT` (QDQ, uint8 activations, int8 per-channel weights, MinMax)
is the fastest setting measured by ``bench/bench_quantization.py`` on the 4-member
seed-size ensemble at 224x224, 2 threads: 2.7x fp32 at batch 1 and 2.7x at batch 16,
where QOperator U8S8 gave 2.5x/2.2x, per-tensor QDQ U8S8 2.2x/2.4x, Percentile
calibration 2.3x/2.6x and the QDQ S8S8 default 1.6x/1.0x
(``bench/results/quantization.md``). The meta-learner nodes
(``ensemble/...``) and Softmax/Sigmoid stay in float: they cost nothing, and
probabilities then still sum to 1.

Example::

    settings = Int8Settings()
    int8_model = quantize_int8(fp32_model, calibration_images, settings)
    fp16_ensemble = build_ensemble_model([convert_fp16(m) for m in members], spec)
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from histoedge.export.graph import META_PREFIX
from histoedge.export.manifest import IMAGE
from histoedge.export.repository import ExportError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Int8Settings:
    """Options of ``onnxruntime.quantization.quantize_static``.

    Args:
        quant_format: ``"QDQ"`` or ``"QOperator"``.
        activation_type: ``"QUInt8"`` or ``"QInt8"``.
        weight_type: ``"QInt8"`` or ``"QUInt8"``.
        per_channel: per-output-channel weight scales.
        calibrate_method: ``"MinMax"``, ``"Entropy"`` or ``"Percentile"``.
        batch_size: calibration batch size.
        float_op_types: operator types left in float (besides Softmax/Sigmoid).
    """

    quant_format: str = "QDQ"
    activation_type: str = "QUInt8"
    weight_type: str = "QInt8"
    per_channel: bool = True
    calibrate_method: str = "MinMax"
    batch_size: int = 16
    float_op_types: tuple[str, ...] = ()

    def get_config(self) -> dict[str, Any]:
        config = asdict(self)
        config["float_op_types"] = list(self.float_op_types)
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Int8Settings":
        return cls(**{**config, "float_op_types": tuple(config.get("float_op_types", ()))})

    def label(self) -> str:
        short = {"QUInt8": "U8", "QInt8": "S8"}
        return (f"{self.quant_format} {short[self.activation_type]}{short[self.weight_type]}"
                f"{' per-channel' if self.per_channel else ''} {self.calibrate_method}"
                f"{' float ' + '+'.join(self.float_op_types) if self.float_op_types else ''}")


INT8_DEFAULT = Int8Settings()


class ImageCalibrationReader(CalibrationDataReader):
    """A ``CalibrationDataReader`` feeding uint8 image batches to the ``image`` input."""

    def __init__(self, images: np.ndarray, batch_size: int = 16):
        self._batches = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
        self._position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._position >= len(self._batches):
            return None
        batch = self._batches[self._position]
        self._position += 1
        return {IMAGE: np.ascontiguousarray(batch, dtype=np.uint8)}

    def rewind(self) -> None:
        self._position = 0


def quantize_int8(model, calibration_images: np.ndarray, settings: Int8Settings = INT8_DEFAULT):
    """Return a statically quantised copy of ``model`` (``onnx.ModelProto``)."""
    import onnx  # noqa: PLC0415
    from onnxruntime import quantization as q  # noqa: PLC0415
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415

    if len(calibration_images) == 0:
        raise ExportError("int8 quantisation needs calibration images; none could be read")
    batch = min(settings.batch_size, len(calibration_images))
    if settings.calibrate_method != "MinMax":
        # onnxruntime's histogram collectors need batches of one size: drop the remainder.
        calibration_images = calibration_images[:len(calibration_images) - len(calibration_images) % batch]
    reader = ImageCalibrationReader(calibration_images, batch)
    # Softmax/Sigmoid outputs stay float so probabilities still sum to 1 exactly.
    float_ops = {"Softmax", "Sigmoid", *settings.float_op_types}
    with tempfile.TemporaryDirectory(prefix="histoedge-quant-") as tmp:
        source, prepared, target = (Path(tmp) / f for f in ("fp32.onnx", "prep.onnx", "int8.onnx"))
        onnx.save_model(model, source)
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
        except Exception as error:  # symbolic shape inference fails on some graphs
            log.warning("quant_pre_process with symbolic shapes failed (%s); retrying without", error)
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        # Named on the prepared graph: its optimiser renames the nodes it fuses (the stacking
        # MatMul + Add become "ensemble/logits_raw/MatMulAddFusion"), so names taken from the
        # source graph let the meta-learner's Gemm and its weights be quantised.
        excluded = excluded_nodes(onnx.load_model(prepared), float_ops)
        q.quantize_static(
            str(prepared), str(target), reader,
            quant_format=getattr(q.QuantFormat, settings.quant_format),
            activation_type=getattr(q.QuantType, settings.activation_type),
            weight_type=getattr(q.QuantType, settings.weight_type),
            per_channel=settings.per_channel,
            calibrate_method=getattr(q.CalibrationMethod, settings.calibrate_method),
            nodes_to_exclude=excluded,
            extra_options={"ActivationSymmetric": settings.activation_type == "QInt8"})
        quantized = onnx.load_model(target)
    _copy_metadata(model, quantized)
    return quantized


def excluded_nodes(model, float_ops) -> list[str]:
    """Nodes kept in float: the meta-learner (``ensemble/...``) and the ``float_ops`` types."""
    return [n.name for n in model.graph.node if n.name.startswith(META_PREFIX) or n.op_type in float_ops]


def convert_fp16(member):
    """fp16 weights and activations for one converted member, fp32 input and output kept.

    Members are converted one by one before merging: the converter mistypes the
    ensemble graph's uint8 -> float Cast and the meta-learner's shape tensors.
    """
    from onnxconverter_common import float16  # noqa: PLC0415

    return float16.convert_float_to_float16(member, keep_io_types=True)


def _copy_metadata(source, target) -> None:
    del target.metadata_props[:]
    target.metadata_props.extend(source.metadata_props)

