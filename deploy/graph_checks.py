"""What an ONNX graph from elsewhere must be before ONNX Runtime opens it: self-contained and bounded.

- **Self-contained**: no tensor anywhere in the model (initializers, sparse initializers, the
  values of ``Constant`` nodes, the bodies of functions and of control-flow subgraphs) may keep its
  data in an external file: external data names a path, and ONNX Runtime would read whatever file
  that is.
- **Bounded**: a graph a few hundred bytes long can build tensors of any size (``ConstantOfShape``
  of a shape it computes), and ONNX Runtime folds such constants when it opens the graph. So the
  size of every tensor the graph computes is worked out beforehand (ONNX Runtime's symbolic shape
  inference, which knows its own operators such as the int8 export's ``MatMulNBits``, on a copy
  without the weights' bytes), and the graph is refused when a size is not known, depends on more
  than two of the inputs' free sizes (the batch, the candidates) grow it, or when the elements of
  all of them with those free sizes at 1 exceed ``LIMITS["graph_elements"]``. Control flow (``If``,
  ``Loop``, ``Scan``) is refused: cadence's exports unroll their loops.

Each check raises ``error`` (the caller's :class:`~cadence.errors.CadenceError` type) naming the file.
"""
from __future__ import annotations

import ast
import logging
import math
from collections.abc import Iterator
from pathlib import Path

import onnx

from cadence.untrusted import LIMITS

KEPT_BYTES = 4096           # initializers up to this size keep their values for the inference (shapes)
MAX_FREE_DIMS = 2           # one computed tensor may grow as the product of two free input sizes (batch x candidates)


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.HasField("g"):
            yield attr.g
        yield from attr.graphs


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices
            for sparse in attr.sparse_tensors:
                yield sparse.values
                yield sparse.indices
        for sub in _subgraphs(node):
            yield from _tensors(sub)


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    yield from _tensors(model.graph)
    for function in model.functions:
        yield from _tensors(onnx.GraphProto(node=function.node))


def check_self_contained(model: onnx.ModelProto, path: Path, error: type[Exception]) -> None:
    if any(t.data_location == onnx.TensorProto.EXTERNAL or t.external_data for t in _all_tensors(model)):
        raise error(f"{path}: the graph keeps tensors in external files; an export's graphs must hold their own")
    if model.graph.sparse_initializer:      # ONNX Runtime expands them whole on opening (exports never write one)
        raise error(f"{path}: the graph holds sparse initializers (a few bytes can claim gigabytes once expanded)")


def _without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose large initializers are inputs of their sizes instead: their values
    are not needed to size anything (shapes are small constants, which are kept)."""
    graph = onnx.GraphProto(name=model.graph.name, node=model.graph.node, input=model.graph.input)
    graph.output.extend(onnx.ValueInfoProto(name=o.name) for o in model.graph.output)   # sizes from inference only
    inputs = {i.name for i in model.graph.input}
    for tensor in model.graph.initializer:
        if tensor.ByteSize() <= KEPT_BYTES:
            graph.initializer.add().CopyFrom(tensor)
        elif tensor.name not in inputs:
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    graph.sparse_initializer.extend(model.graph.sparse_initializer)
    return onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import, functions=model.functions,
                           graph=graph)


def _infer(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """The model with every value's inferred type, or None when some size stays unknown."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    inference = SymbolicShapeInference(int_max=2 ** 62, auto_merge=True, guess_output_rank=False, verbose=0)
    inference._preprocess(model)        # infer_shapes() would save an incomplete model into the working folder
    complete = False
    while inference.run_:
        complete = inference._infer_impl()
    inference._update_output_from_vi()
    return inference.out_mp_ if complete else None


GROWN = 16      # the free sizes at which a tensor's growth is compared with its size at 1


def _size(dim: int | str, free: set[str], at: int) -> int:
    """A dimension's size with every free input size at ``at``: an int, or a symbolic expression
    ("2*batch") that the inference wrote, read by walking its syntax tree (never evaluated as code):
    integers, the inputs' free sizes, + - * // / and floor / ceiling / Max / Min. ValueError otherwise."""
    if isinstance(dim, int):
        return dim
    if len(dim) > 200:
        raise ValueError(dim)
    try:
        tree = ast.parse(dim, mode="eval").body
    except (SyntaxError, RecursionError, MemoryError):
        raise ValueError(dim) from None

    def value(node) -> float:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.Name) and node.id in free:
            return at
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.left), value(node.right))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS
                and node.args and not node.keywords):
            return _FUNCTIONS[node.func.id](*(value(a) for a in node.args))
        raise ValueError(dim)
    try:
        size = value(tree)
    except (ZeroDivisionError, OverflowError, TypeError, RecursionError):
        raise ValueError(dim) from None
    if not 0 <= size < 2 ** 62:
        raise ValueError(dim)
    return int(size)


_OPERATORS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
              ast.FloorDiv: lambda a, b: a // b, ast.Div: lambda a, b: a / b}
_FUNCTIONS = {"floor": math.floor, "ceiling": math.ceil, "Max": max, "Min": min}


MAX_SHAPE_TERMS = 256      # terms of a size the graph computes from its inputs' sizes (exports: 1)
_SUMS = frozenset({"Add", "Sub", "Max", "Min", "Sum", "Mean", "Mod"})
_PRODUCTS = frozenset({"Mul", "Div", "Pow"})


def shape_terms(model: onnx.ModelProto) -> int:
    """The most terms an expression of the graph's sizes can have once multiplied out: ``Shape``
    gives one, sums add their inputs' terms, products multiply them, other ops pass them on.
    Symbolic shape inference multiplies them out: ``s = s * s + s`` seven times over took it
    minutes (a graph of 1.4 kB)."""
    constants = {t.name for t in model.graph.initializer}
    terms: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Constant":
            constants.update(node.output)
            continue
        inputs = [name for name in node.input if name and name not in constants]
        if node.op_type in ("Shape", "Size"):
            count = 1
        elif inputs and all(name in terms for name in inputs):
            counts = [terms[name] for name in inputs]
            count = sum(counts) if node.op_type in _SUMS else math.prod(counts) if node.op_type in _PRODUCTS \
                else max(counts)
        else:
            continue
        for name in node.output:
            terms[name] = min(count, MAX_SHAPE_TERMS + 1)
    return max(terms.values(), default=0)


def check_bounded(model: onnx.ModelProto, path: Path, error: type[Exception]) -> None:
    """Refuses a graph whose computed tensors are not known to fit (see the module's docstring)."""
    for node in model.graph.node:
        if any(True for _ in _subgraphs(node)):
            raise error(f"{path}: node {node.name or node.op_type!r} ({node.op_type}) holds a subgraph; an export's "
                        "graphs have no control flow")
    if shape_terms(model) > MAX_SHAPE_TERMS:
        raise error(f"{path}: the graph computes sizes of more than {MAX_SHAPE_TERMS} terms from its inputs' sizes "
                    "(working them out would take the shape inference without bound)")
    free = {d.dim_param for v in model.graph.input for d in v.type.tensor_type.shape.dim if d.HasField("dim_param")}
    logging.getLogger("onnxruntime.tools.symbolic_shape_infer").setLevel(logging.CRITICAL)
    try:
        inferred = _infer(_without_weights(model))
    except Exception as exc:        # the inference's own errors on a graph it cannot follow, whatever their type
        raise error(f"{path}: the sizes of the graph's tensors cannot be worked out "
                    f"({' '.join(str(exc).split())[:200] or type(exc).__name__})") from None
    if inferred is None:
        raise error(f"{path}: the sizes of some of the graph's tensors cannot be worked out before running it")
    types = {v.name: v.type for v in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)}
    total = 0
    for node in inferred.graph.node:
        for name in filter(None, node.output):
            kind = types.get(name)
            if kind is None or not kind.HasField("tensor_type") or not kind.tensor_type.HasField("shape"):
                raise error(f"{path}: the size of {name!r} ({node.op_type}) cannot be worked out before running it")
            dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in kind.tensor_type.shape.dim]
            try:
                one, grown = (math.prod(_size(d, free, at) for d in dims) for at in (1, GROWN))
            except ValueError:
                one = grown = None
            if one is None or grown > GROWN ** MAX_FREE_DIMS * max(one, 1):
                raise error(f"{path}: the size of {name!r} ({node.op_type}) is {dims}, not fixed by the graph's inputs "
                            f"(or growing faster than the product of {MAX_FREE_DIMS} of their free sizes)")
            total += one
    if total > LIMITS["graph_elements"]:
        raise error(f"{path}: the graph computes {total:,} tensor elements per batch row, more than the "
                    f"{LIMITS['graph_elements']:,} an export's graph may")
