"""Reading and extending an ONNX model's bytes without the `onnx` package (not a dependency).

A VITS model outputs only padded audio; a batch of sentences needs each item's length, which
the graph computes (`y_lengths`) but does not output. These helpers find that tensor in the
serialized graph and add it as one more output, in memory: the model file is never changed.
"""

from __future__ import annotations

from collections.abc import Iterator


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _fields(data: bytes) -> Iterator[tuple[int, bytes]]:
    """The length-delimited fields of one protobuf message (the only kind read here)."""
    at = 0
    while at < len(data):
        tag, at = _varint(data, at)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _, at = _varint(data, at)
            continue
        if wire in (1, 5):
            at += 8 if wire == 1 else 4
            continue
        if wire != 2:
            raise ValueError(f"unexpected protobuf wire type {wire}")
        size, at = _varint(data, at)
        yield number, data[at:at + size]
        at += size


def _nodes(model: bytes) -> list[tuple[str, list[str], list[str]]]:
    """(op_type, inputs, outputs) of every node of an ONNX model's main graph."""
    graph = next(value for number, value in _fields(model) if number == 7)  # ModelProto.graph
    nodes = []
    for number, node in _fields(graph):
        if number != 1:  # GraphProto.node
            continue
        parts: dict[int, list[str]] = {1: [], 2: [], 4: []}  # NodeProto input, output, op_type
        for field, value in _fields(node):
            if field in parts:
                parts[field].append(value.decode())
        nodes.append(("".join(parts[4]), parts[1], parts[2]))
    return nodes


def vits_lengths_output(model: bytes) -> str:
    """The tensor holding each item's audio length in latent frames (VITS's `y_lengths`:
    clamp_min(sum(ceil(durations)), 1) cast to int64), found as Ceil -> ReduceSum -> Clip ->
    Cast; "" when the graph has no such chain. The model outputs only padded audio, so a batch
    needs this to know where each item's audio ends."""
    nodes = _nodes(model)
    consumers: dict[str, list[tuple[str, list[str], list[str]]]] = {}
    for node in nodes:
        for name in node[1]:
            consumers.setdefault(name, []).append(node)
    for op, _, outputs in nodes:
        tensors = outputs if op == "Ceil" else []
        for step in ("ReduceSum", "Clip", "Cast"):
            tensors = [out for node in consumers.get(tensors[0], []) if node[0] == step
                       for out in node[2]] if tensors else []
        if tensors:
            return tensors[0]
    return ""


def with_output(model: bytes, tensor: str) -> bytes:
    """The model with `tensor` as one more graph output (int64). Protobuf merges a repeated
    message field, so appending `graph { output { name, type } }` adds it without rewriting
    the model (and without the onnx package)."""
    def field(number: int, payload: bytes) -> bytes:
        return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload

    int64 = bytes([0x08, 7])  # TensorProto.elem_type = INT64
    value_info = field(1, tensor.encode()) + field(2, field(1, int64))  # name, type.tensor_type
    return model + field(7, field(12, value_info))  # ModelProto.graph, GraphProto.output
