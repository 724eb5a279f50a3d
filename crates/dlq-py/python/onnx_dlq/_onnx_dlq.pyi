"""Type hints of the extension module (see onnx_dlq/__init__.py for the public API)."""

from typing import List, Optional

__version__: str

class ConversionError(RuntimeError):
    """onnx-dlq could not do what was asked of a model (its message is the command line's
    ``error:`` line)."""

def main(argv: List[str]) -> int:
    """Runs the command line ``argv`` (program name first) as the executable does; its exit code."""

def run(argv: List[str]) -> str:
    """Runs the command ``argv`` (program name first); what it writes to stdout."""

def set_runtime(onnxruntime_package: Optional[str], custom_ops_library: str) -> bool:
    """Where this Python's onnxruntime package and the custom-op library are."""
