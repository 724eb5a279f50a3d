"""onnx-dlq: make convolutional networks smaller and faster by clustering their weights.

ONNX in, ONNX out. Every function runs the same code as the ``onnx-dlq`` command: a keyword
argument is the command's flag of the same name (``target_compression=8`` is
``--target-compression 8``; ``True`` sets a switch; a list repeats the flag), and the returned
report is the command's ``--json`` output as a dict. ``docs/CLI.md`` lists every flag.

>>> import onnx_dlq, onnxruntime as ort
>>> model, report = onnx_dlq.convert("squeezenet1.1.onnx", layers=["fire8/expand3x3"], form="fused")
>>> so = ort.SessionOptions()
>>> so.register_custom_ops_library(onnx_dlq.get_library_path())
>>> session = ort.InferenceSession(model, so)

Settings that cannot work raise ``ValueError``; a model that cannot be converted raises
:class:`ConversionError`. Both carry the command line's message. Long work releases the GIL and
stops on Ctrl-C (``KeyboardInterrupt``), leaving no file written. Progress bars are drawn on
stderr when it is a terminal; ``quiet=True`` hides them, ``verbose=1`` says more.
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from . import _onnx_dlq
from ._onnx_dlq import ConversionError

__version__: str = _onnx_dlq.__version__
__all__ = [
    "ConversionError",
    "convert",
    "convert_file",
    "diff",
    "get_library_path",
    "inspect",
    "verify",
]

PathLike = Union[str, "os.PathLike[str]"]
# A path, the serialized bytes, or an onnx.ModelProto.
ModelLike = Any
Report = Dict[str, Any]

_PROGRAM = "onnx-dlq"


def get_library_path() -> str:
    """The ONNX Runtime custom-op library that runs the fused form's ``DlqConv`` nodes.

    Pass it to ``onnxruntime.SessionOptions.register_custom_ops_library``. It is this package's
    extension module, which carries ONNX Runtime's entry point besides Python's.
    """
    return os.path.abspath(_onnx_dlq.__file__)


def convert(
    model: ModelLike,
    *,
    layers: Union[None, str, Sequence[str]] = None,
    method: Optional[str] = None,
    ratio: Optional[float] = None,
    form: Optional[str] = None,
    target_speedup: Optional[float] = None,
    target_compression: Optional[float] = None,
    calibrate: Optional[PathLike] = None,
    preprocess: Optional[PathLike] = None,
    seed: Optional[int] = None,
    **options: Any,
) -> Tuple[ModelLike, Report]:
    """Converts ``model`` and returns ``(converted, report)``.

    ``model`` is a path, the model's bytes or an ``onnx.ModelProto``. The converted model comes
    back as an ``onnx.ModelProto`` for a ModelProto, and as its bytes otherwise (what
    ``onnxruntime.InferenceSession`` takes; ``onnx.load_from_string`` reads them). ``layers`` names the layers to convert (Conv and fully connected, by node, output or
    weight name); ``None`` or ``"all"`` converts every layer the method applies to. A keyword left at ``None`` takes the
    command's default (``method="dl"``, ``ratio=2``, ``form="ops"``, ``seed=0``, ...); any
    other flag of ``onnx-dlq convert`` is accepted by its name (``int8=True``,
    ``input_shape="data:1,3,224,224"``, ``finetune=...``). The report is ``--json``'s.
    """
    flags = _convert_flags(locals(), options)
    with tempfile.TemporaryDirectory(prefix="onnx-dlq-") as tmp:
        source = _model_path(model, tmp)
        target = os.path.join(tmp, "converted.onnx")
        report = _run_json(["convert", source, target, *flags])
        return _model_like(model, target, tmp), report


def convert_file(
    source: PathLike,
    target: PathLike,
    *,
    layers: Union[None, str, Sequence[str]] = None,
    **options: Any,
) -> Report:
    """Converts the model file ``source`` into ``target`` (written whole or not at all) and
    returns the report. Keywords as for :func:`convert`."""
    flags = _convert_flags({"layers": layers}, options)
    return _run_json(["convert", os.fspath(source), os.fspath(target), *flags])


def inspect(model: ModelLike, **options: Any) -> Report:
    """The model's convolutions: geometry, cost, share of the total and convertibility."""
    with tempfile.TemporaryDirectory(prefix="onnx-dlq-") as tmp:
        return _run_json(["inspect", _model_path(model, tmp), *_flags(options)])


def diff(a: ModelLike, b: ModelLike, **options: Any) -> Report:
    """Compares two models: nodes per operator, initializer bytes, multiplications per layer,
    and which layers are int8."""
    with tempfile.TemporaryDirectory(prefix="onnx-dlq-") as tmp:
        first = _model_path(a, os.path.join(tmp, "a"))
        second = _model_path(b, os.path.join(tmp, "b"))
        return _run_json(["diff", first, second, *_flags(options)])


def verify(
    original: ModelLike,
    converted: ModelLike,
    *,
    data: Optional[PathLike] = None,
    preprocess: Optional[PathLike] = None,
    engine: Optional[str] = "ort",
    **options: Any,
) -> Report:
    """Runs both models (ONNX Runtime by default, or ``engine="tract"``): top-1 on ``data``
    (a folder of labelled images, with ``preprocess``'s spec) or agreement on random inputs,
    cost and latency."""
    flags = _flags({"data": data, "preprocess": preprocess, "engine": engine, **options})
    with tempfile.TemporaryDirectory(prefix="onnx-dlq-") as tmp:
        first = _model_path(original, os.path.join(tmp, "a"))
        second = _model_path(converted, os.path.join(tmp, "b"))
        return _run_json(["verify", first, second, *flags])


def _convert_flags(named: Dict[str, Any], options: Dict[str, Any]) -> List[str]:
    named = {k: v for k, v in named.items() if k not in ("model", "options")}
    layers = named.pop("layers", None)
    flags = _flags({**named, **options})
    if layers is None or (isinstance(layers, str) and layers == "all"):
        return ["--all", *flags]
    if isinstance(layers, str):
        layers = [layers]
    return [*(f"--layers={name}" for name in layers), *flags]


def _flags(options: Dict[str, Any]) -> List[str]:
    """Keyword arguments as the command's flags, in the order given."""
    flags: List[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            flags.append(flag)
        elif isinstance(value, (list, tuple)):
            flags.extend(f"{flag}={_text(v)}" for v in value)
        else:
            flags.append(f"{flag}={_text(value)}")
    return flags


def _text(value: Any) -> str:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def _run_json(arguments: List[str]) -> Report:
    _find_runtime()
    out = _onnx_dlq.run([_PROGRAM, *arguments, "--json"])
    return json.loads(out)


def _model_path(model: ModelLike, folder: str) -> str:
    """A path to ``model``: its own for a path, else a file written into ``folder``."""
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "model.onnx")
    if isinstance(model, (bytes, bytearray, memoryview)):
        data = bytes(model)
    elif hasattr(model, "SerializeToString"):
        data = model.SerializeToString()
    else:
        raise TypeError(
            f"a model is a path, bytes or an onnx.ModelProto, not {type(model).__name__}"
        )
    with open(path, "wb") as f:
        f.write(data)
    return path


def _model_like(model: ModelLike, path: str, folder: str) -> ModelLike:
    """The converted file at ``path``: an ``onnx.ModelProto`` for a ModelProto, else bytes."""
    if hasattr(model, "SerializeToString"):
        import onnx  # the caller has it: it passed a ModelProto

        return onnx.load(path)
    beside = set(os.listdir(folder)) - {"model.onnx", os.path.basename(path)}
    if beside:
        raise ConversionError(
            "the converted model keeps its weights in external data files, which bytes "
            "cannot carry: use convert_file(), or pass an onnx.ModelProto"
        )
    with open(path, "rb") as f:
        return f.read()


_RUNTIME_SET = False


def _find_runtime() -> None:
    """Tells the engine where this Python's onnxruntime and the custom-op library are."""
    global _RUNTIME_SET
    if _RUNTIME_SET:
        return
    spec = importlib.util.find_spec("onnxruntime")
    package = None
    if spec is not None and spec.submodule_search_locations:
        package = list(spec.submodule_search_locations)[0]
    _onnx_dlq.set_runtime(package, get_library_path())
    _RUNTIME_SET = True


def _main_argv(argv: Sequence[str]) -> int:
    _find_runtime()
    return _onnx_dlq.main([_PROGRAM, *argv])

