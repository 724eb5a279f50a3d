"""The Python package as a user installs it: the wheel in a fresh virtual environment beside
onnxruntime, with no environment variable pointing at ONNX Runtime or onnx-dlq's libraries
(scripts/test_wheel.sh). The command built by cargo is `ONNX_DLQ_CLI` when the caller sets it."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnx_dlq

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "models" / "digits-cnn.onnx"
SHARED = REPO.parent / "shared"
SQUEEZENET = SHARED / "models" / "squeezenet1.1.onnx"
# The fused form's kernel against the same codebook expanded into standard operators: both
# compute W̃ exactly, in a different order of float32 sums.
FUSED_VS_OPS_TOLERANCE = 1e-4
LOCATING_VARIABLES = ("ORT_DYLIB_PATH", "ONNX_DLQ_PYTHON", "ONNX_DLQ_ORT_LIBRARY")


def wheel_command():
    return str(Path(sys.executable).with_name("onnx-dlq"))


def cargo_command():
    return os.environ.get("ONNX_DLQ_CLI")


def skip_outside_ci(reason):
    """Skips with a SKIPPED line on a user's clone; fails in CI, where nothing may skip."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}, and CI=true: nothing may skip in CI")
    pytest.skip(f"SKIPPED: {reason}")


def shared_or_skip():
    if not SQUEEZENET.is_file():
        skip_outside_ci(f"{SQUEEZENET} is missing (the shared assets are not beside the repository)")


def test_no_variable_locates_onnx_runtime_or_the_library():
    for name in LOCATING_VARIABLES:
        assert name not in os.environ, f"{name} is set: the test would not show that the package finds what it needs"


@pytest.mark.parametrize("kind", ["path", "bytes", "proto"])
def test_convert_matches_the_command_byte_for_byte(tmp_path, kind):
    by_command = tmp_path / "command.onnx"
    subprocess.run(
        [wheel_command(), str(DIGITS), str(by_command), "--all", "--ratio", "4", "--seed", "3", "-q"],
        check=True,
    )
    given = {"path": str(DIGITS), "bytes": DIGITS.read_bytes(), "proto": onnx.load(str(DIGITS))}[kind]
    converted, report = onnx_dlq.convert(given, layers="all", ratio=4, seed=3, quiet=True)
    data = converted.SerializeToString() if kind == "proto" else converted
    assert isinstance(converted, onnx.ModelProto if kind == "proto" else bytes)
    assert data == by_command.read_bytes()
    assert report["file_bytes_after"] == len(data)
    assert report["layers"], report


def test_the_wheels_command_is_the_cargo_built_one(tmp_path):
    cli = cargo_command()
    if not cli:
        skip_outside_ci("ONNX_DLQ_CLI is not set (no cargo-built onnx-dlq to compare with)")
    outputs = []
    for name, command in (("wheel", wheel_command()), ("cargo", cli)):
        out = tmp_path / f"{name}.onnx"
        run = subprocess.run(
            [command, str(DIGITS), str(out), "--all", "--ratio", "4", "--json", "--no-latency"],
            check=True, capture_output=True, text=True,
        )
        layers = json.loads(run.stdout)["layers"]
        for layer in layers:
            layer.pop("seconds")  # how long clustering took
        outputs.append((out.read_bytes(), layers))
    assert outputs[0] == outputs[1]
    helps = [subprocess.run([c, "--help"], capture_output=True, text=True, check=True).stdout for c in (wheel_command(), cli)]
    assert helps[0] == helps[1]


def test_convert_file_writes_atomically_and_returns_the_report(tmp_path):
    target = tmp_path / "out.onnx"
    report = onnx_dlq.convert_file(DIGITS, target, layers="all", ratio=4, quiet=True)
    onnx.checker.check_model(str(target))
    assert report["file_bytes_after"] == target.stat().st_size


def test_fused_model_runs_in_onnx_runtime_through_get_library_path():
    library = onnx_dlq.get_library_path()
    assert os.path.isfile(library), library
    fused, _ = onnx_dlq.convert(DIGITS, layers="all", form="fused", ratio=4, seed=1, quiet=True)
    ops, _ = onnx_dlq.convert(DIGITS, layers="all", form="ops", ratio=4, seed=1, quiet=True)
    fused, ops = onnx.load_from_string(fused), onnx.load_from_string(ops)
    assert any(n.op_type == "DlqConv" for n in fused.graph.node)
    options = ort.SessionOptions()
    options.register_custom_ops_library(library)
    fused_session = ort.InferenceSession(fused.SerializeToString(), options)
    ops_session = ort.InferenceSession(ops.SerializeToString())
    shape = [d.dim_value or 1 for d in fused.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).random([3, *shape[1:]], dtype=np.float32)
    name = fused_session.get_inputs()[0].name
    got = fused_session.run(None, {name: x})[0]
    want = ops_session.run(None, {name: x})[0]
    assert np.max(np.abs(got - want)) <= FUSED_VS_OPS_TOLERANCE * max(1.0, np.max(np.abs(want)))


def test_the_engine_finds_onnx_runtime_and_the_custom_ops_inside_python():
    fused, report = onnx_dlq.convert(DIGITS, layers="all", form="fused", ratio=4, engine="ort", quiet=True)
    assert report["latency"]["engine"].startswith("ONNX Runtime"), report["latency"]
    checked = onnx_dlq.verify(DIGITS, fused, engine="ort", quiet=True)
    assert isinstance(checked, dict) and checked


def test_inspect_and_diff_return_the_commands_json():
    inspected = onnx_dlq.inspect(DIGITS)
    command = subprocess.run([wheel_command(), "inspect", str(DIGITS), "--json"], capture_output=True, text=True, check=True)
    assert inspected == json.loads(command.stdout)
    converted, _ = onnx_dlq.convert(DIGITS, layers="all", ratio=4, quiet=True)
    differences = onnx_dlq.diff(DIGITS, converted)
    assert isinstance(differences, dict) and differences


def command_error(arguments):
    run = subprocess.run([wheel_command(), *arguments], capture_output=True, text=True)
    assert run.returncode != 0
    lines = [l for l in run.stderr.splitlines() if l.startswith("error: ")]
    return lines[0][len("error: "):]


def test_a_bad_model_raises_the_commands_message_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not an ONNX model")
    target = tmp_path / "out.onnx"
    expected = command_error([str(bad), str(target), "--all"])
    with pytest.raises(onnx_dlq.ConversionError) as raised:
        onnx_dlq.convert_file(bad, target, layers="all")
    assert str(raised.value) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


def test_a_bad_setting_raises_value_error_with_the_commands_message(tmp_path):
    target = tmp_path / "out.onnx"
    expected = command_error([str(DIGITS), str(target), "--all", "--ratio", "0.5"])
    with pytest.raises(ValueError) as raised:
        onnx_dlq.convert_file(DIGITS, target, layers="all", ratio=0.5)
    assert str(raised.value) == expected
    with pytest.raises(ValueError, match="--int8"):
        onnx_dlq.convert(DIGITS, int8=True, form="fused")
    with pytest.raises(ValueError, match="unexpected argument '--no-such-flag'"):
        onnx_dlq.convert(DIGITS, no_such_flag=1)
    with pytest.raises(TypeError):
        onnx_dlq.convert(3.5)
    assert not target.exists()


def test_long_work_releases_the_gil():
    shared_or_skip()
    ticks = []
    stop = threading.Event()

    def count():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.005)

    counter = threading.Thread(target=count)
    counter.start()
    started = time.perf_counter()
    onnx_dlq.convert(str(SQUEEZENET), layers="all", method="vq", ratio=2, quiet=True, no_latency=True)
    elapsed = time.perf_counter() - started
    stop.set()
    counter.join()
    during = [t for t in ticks if started <= t <= started + elapsed]
    # A thread that sleeps 5 ms between ticks ticks about elapsed/5 ms times when it can run.
    assert len(during) >= 0.5 * elapsed / 0.005, (len(during), elapsed)


def test_ctrl_c_stops_long_work(tmp_path):
    shared_or_skip()
    target = tmp_path / "out.onnx"
    timer = threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT))
    started = time.perf_counter()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        # Calibration on 100 images takes far longer than the second before Ctrl-C.
        onnx_dlq.convert_file(
            SQUEEZENET, target, layers="all", method="vq", ratio=2, quiet=True,
            calibrate=SHARED / "data" / "imagenet-sample",
            preprocess=SHARED / "models" / "squeezenet1.1.preprocess.json",
        )
    stopped = time.perf_counter() - started
    timer.cancel()
    assert stopped < 20, f"took {stopped:.1f} s to stop"
    assert not target.exists()
    # The next call runs normally.
    onnx_dlq.inspect(DIGITS)


def test_the_wheels_command_runs_the_readme_main_job():
    readme = (REPO / "README.md").read_text()
    main_job = re.search(r"^cargo run --release -- models/.*$", readme, re.MULTILINE)
    assert main_job, "the README's main-job command was not found"
    script = main_job.group(0).replace("cargo run --release --", shlex.quote(wheel_command()))
    run = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "wrote target/digits-dl.onnx" in run.stdout and "total:" in run.stdout, run.stdout


def test_the_readmes_python_quick_start_runs(tmp_path):
    shared_or_skip()
    readme = (REPO / "README.md").read_text()
    snippets = [b for b in re.findall(r"```python\n(.*?)```", readme, re.DOTALL) if "onnx_dlq" in b]
    assert snippets, "the README's Python quick start was not found"
    script = snippets[0].replace('"squeezenet1.1.onnx"', repr(str(SQUEEZENET)))
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "(1, 1000, 1, 1)" in run.stdout, run.stdout
