"""One ONNX graph for a whole ensemble: uint8 image in, member and ensemble probabilities out.

Layout of the graph::

    image UINT8 [N,H,W,3] -> Cast FLOAT -> member_0 ... member_M-1   (prefixed subgraphs)
        -> Unsqueeze + Concat -> member_probabilities FP32 [N,M,C]
        -> meta-learner (stacking / soft vote / single) -> probabilities FP32 [N,C]

The meta-learner nodes are named ``ensemble/...`` so quantisation can leave them in float.
They compute what :meth:`EnsembleSpec.combine` (the ``ensemble.json`` contract in
:mod:`histoedge.export.ensemble_spec`) computes in numpy, the reference for parity checks.

Example::

    spec = EnsembleSpec.load(Path("run/ensemble.json"))
    graph = build_ensemble_model([onnx_a, onnx_b], spec, metadata={"name": "breast"})
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from histoedge.export.convert import MEMBER_INPUT, MEMBER_OUTPUT
from histoedge.export.ensemble_spec import EnsembleSpec
from histoedge.export.manifest import IMAGE, MEMBER_PROBABILITIES, PROBABILITIES
from histoedge.export.repository import ExportError

__all__ = ["EnsembleSpec", "META_PREFIX", "build_ensemble_model", "set_metadata"]

META_PREFIX = "ensemble/"


def _meta_nodes(spec: EnsembleSpec, first_member_output: str) -> tuple[list, list]:
    """Nodes and initializers mapping ``member_probabilities`` to ``probabilities``."""
    from onnx import helper, numpy_helper  # noqa: PLC0415

    def const(name, value, dtype=np.float32):
        return numpy_helper.from_array(np.asarray(value, dtype=dtype), META_PREFIX + name)

    def node(op, inputs, output, **attrs):
        return helper.make_node(op, inputs, [output], name=META_PREFIX + output.replace(META_PREFIX, ""),
                                **attrs)

    p = META_PREFIX
    if spec.method == "single":
        return [node("Identity", [first_member_output], PROBABILITIES)], []
    if spec.method == "soft_vote":
        weights = np.asarray(spec.vote_weights()).reshape(1, -1, 1)
        return ([node("Mul", [MEMBER_PROBABILITIES, p + "weights"], p + "weighted"),
                 node("ReduceSum", [p + "weighted", p + "axis1"], PROBABILITIES, keepdims=0)],
                [const("weights", weights), const("axis1", [1], np.int64)])
    coef, intercept = np.asarray(spec.stacking_coef()), np.asarray(spec.stacking_intercept())
    m_c = spec.n_members * spec.n_classes
    nodes = [node("Reshape", [MEMBER_PROBABILITIES, p + "features_shape"], p + "features"),
             node("MatMul", [p + "features", p + "coef"], p + "logits_raw"),
             node("Add", [p + "logits_raw", p + "intercept"], p + "logits")]
    inits = [const("features_shape", [-1, m_c], np.int64), const("coef", coef.T),
             const("intercept", intercept)]
    if spec.n_classes == 2:
        nodes += [node("Sigmoid", [p + "logits"], p + "positive"),
                  node("Sub", [p + "one", p + "positive"], p + "negative"),
                  node("Concat", [p + "negative", p + "positive"], PROBABILITIES, axis=1)]
        inits.append(const("one", 1.0))
    else:
        nodes.append(node("Softmax", [p + "logits"], PROBABILITIES, axis=1))
    return nodes, inits


def build_ensemble_model(members: list, spec: EnsembleSpec, metadata: dict[str, str] | None = None):
    """Merge converted members (``x`` -> ``probabilities``) into one ensemble ``onnx.ModelProto``."""
    import onnx  # noqa: PLC0415
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    if len(members) != spec.n_members:
        raise ExportError(f"{len(members)} converted members but ensemble.json lists {spec.n_members}")
    opsets = {(o.domain or "", o.version) for mp in members for o in mp.opset_import}
    default_opsets = {v for d, v in opsets if d == ""}
    if len(default_opsets) != 1:
        raise ExportError(f"members were converted at different opsets: {sorted(default_opsets)}")
    size = spec.image_size
    nodes = [helper.make_node("Cast", [IMAGE], [META_PREFIX + "image_float"],
                              name=META_PREFIX + "cast", to=TensorProto.FLOAT)]
    initializers, value_info, member_outputs = [], [], []
    for index, member in enumerate(members):
        prefix = f"m{index}_{_safe(spec.members[index])}/"
        prefixed = onnx.compose.add_prefix(member, prefix)
        graph = prefixed.graph
        nodes.append(helper.make_node("Identity", [META_PREFIX + "image_float"], [prefix + MEMBER_INPUT],
                                      name=META_PREFIX + f"feed_{index}"))
        nodes.extend(graph.node)
        initializers.extend(graph.initializer)
        value_info.extend(graph.value_info)
        unsqueezed = f"{META_PREFIX}member_{index}"
        nodes.append(helper.make_node("Unsqueeze", [prefix + MEMBER_OUTPUT, META_PREFIX + "axis1"],
                                      [unsqueezed], name=unsqueezed))
        member_outputs.append(unsqueezed)
    initializers.append(numpy_helper.from_array(np.array([1], np.int64), META_PREFIX + "axis1"))
    nodes.append(helper.make_node("Concat", member_outputs, [MEMBER_PROBABILITIES],
                                  name=META_PREFIX + "stack", axis=1))
    meta_nodes, meta_inits = _meta_nodes(spec, f"m0_{_safe(spec.members[0])}/{MEMBER_OUTPUT}")
    nodes.extend(meta_nodes)
    initializers.extend(i for i in meta_inits if i.name != META_PREFIX + "axis1")
    c, m = spec.n_classes, spec.n_members
    graph = helper.make_graph(
        nodes, "histoedge_ensemble",
        [helper.make_tensor_value_info(IMAGE, TensorProto.UINT8, ["N", size, size, 3])],
        [helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["N", c]),
         helper.make_tensor_value_info(MEMBER_PROBABILITIES, TensorProto.FLOAT, ["N", m, c])],
        initializer=initializers, value_info=value_info)
    model = helper.make_model(
        graph, producer_name="histoedge",
        opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets)])
    model.ir_version = max(mp.ir_version for mp in members)
    set_metadata(model, metadata or {})
    onnx.checker.check_model(model)
    return model


def set_metadata(model, metadata: dict[str, Any]) -> None:
    """Replace the model's metadata_props with ``metadata`` (values JSON-encoded unless str)."""
    del model.metadata_props[:]
    for key, value in sorted(metadata.items()):
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in name)
