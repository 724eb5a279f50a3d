"""The ``onnx-dlq`` command, as the Python package installs it: the same program as the
executable built with cargo (``docs/CLI.md``), run inside this interpreter."""

import signal
import sys

from . import _main_argv


def main() -> None:
    # Ctrl-C ends the command at once, as it ends the executable.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(_main_argv(sys.argv[1:]))


if __name__ == "__main__":
    main()
