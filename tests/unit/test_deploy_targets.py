"""Deployment targets without TensorFlow: --device bookkeeping and refusals, the runtime-only
install's messages and check, shipped recipes, the deploy bundle's example, the arena estimate.

Models here are hand-built ONNX graphs (onnx.helper), so nothing trains and nothing imports
TensorFlow; the real conversions are in tests/integration/test_tflite_micro.py and the
installs in tests/integration/test_wheel.py.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgexfer.artifact import Manifest, Preprocessing, writing_artifact
from edgexfer.errors import ConfigError
from edgexfer.runtime import providers as prov
from kit import call_cli, the_error

LABELS = ["cat", "dog", "émeu"]  # a non-ASCII name on purpose
PRE = Preprocessing(input_size=4, mean=(100.0, 110.0, 120.0), std=(50.0, 60.0, 70.0))


def onnx_export(out: Path, seed: int = 0) -> Path:
    """An export artifact holding a tiny float classifier: flatten → dense → softmax."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgexfer.runtime.metadata import EmbeddedInfo, embed_onnx_metadata

    rng = np.random.default_rng(seed)
    weights = numpy_helper.from_array(rng.normal(0, 0.5, (48, 3)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.normal(0, 0.1, (3,)).astype(np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["mm"]),
            helper.make_node("Add", ["mm", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4, 4, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3])],
        initializer=[weights, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    embed_onnx_metadata(model, EmbeddedInfo(LABELS, PRE, {"format": "onnx", "quant": "none"}))
    with writing_artifact(out) as writer:
        onnx.save(model, str(writer.file("model.onnx")))
        return writer.commit(
            Manifest(
                stage="export",
                label_names=LABELS,
                preprocessing=PRE,
                backbone="handmade",
                weights="none",
                config={"format": "onnx", "quant": "none"},
                model_file="model.onnx",
            )
        )


def image_folder(root: Path, per_class: int = 4) -> Path:
    rng = np.random.default_rng(1)
    for name in LABELS:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


# ------------------------------------------------------------------------- --device


@pytest.mark.parametrize(
    "device, available, expected",
    [
        ("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]),
        ("cuda", ["CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]),
        ("auto", ["CPUExecutionProvider"], ["CPUExecutionProvider"]),
        ("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]),
    ],
)
def test_requested_providers(device, available, expected):
    assert prov.requested_providers(device, available) == expected


def test_an_unknown_device_names_the_allowed_ones():
    with pytest.raises(ConfigError, match="--device 'gpu' is not a device; allowed: cpu, cuda, auto"):
        prov.check_device("gpu")


def test_placement_is_read_from_the_session_providers(monkeypatch):
    assert prov.placement_of(["CUDAExecutionProvider", "CPUExecutionProvider"], "cuda") == prov.Placement(
        "CUDAExecutionProvider", "cuda:0"
    )
    assert prov.placement_of(["CUDAExecutionProvider", "CPUExecutionProvider"], "auto", device_id=1).device == "cuda:1"
    assert prov.placement_of(["CPUExecutionProvider"], "auto") == prov.CPU_ORT
    assert prov.placement_of(["CUDAExecutionProvider", "CPUExecutionProvider"], "cpu") == prov.CPU_ORT
    # cuda asked, CPU in use: an error that says why, never a CPU placement
    monkeypatch.setattr(prov, "cuda_unavailable_reason", lambda: "no NVIDIA driver: libcuda.so.1 cannot be loaded")
    with pytest.raises(ConfigError, match="runs m.onnx on the CPU, not CUDA: no NVIDIA driver"):
        prov.placement_of(["CPUExecutionProvider"], "cuda", where="m.onnx")


@pytest.mark.parametrize(
    "available, driver, expected",
    [
        (["CPUExecutionProvider"], None, r"onnxruntime 1\.0 is a CPU-only build .*edgexfer\[gpu\]"),
        (["CUDAExecutionProvider", "CPUExecutionProvider"], ("no-driver", 0), "no NVIDIA driver"),
        (["CUDAExecutionProvider", "CPUExecutionProvider"], ("init-failed", 0), "cuInit failed"),
        (["CUDAExecutionProvider", "CPUExecutionProvider"], ("ok", 0), "reports no CUDA device"),
        (["CUDAExecutionProvider", "CPUExecutionProvider"], ("ok", 2), "sees 2 device.*did not start.*cuDNN"),
    ],
)
def test_why_cuda_is_not_in_use(available, driver, expected):
    import re

    assert re.search(expected, prov.cuda_unavailable_reason(available, driver, "1.0"))


def test_the_driver_probe_answers_on_this_machine():
    state, count = prov.cuda_driver_state()
    assert state in ("ok", "no-driver", "init-failed") and count >= 0


def test_cuda_on_the_cpu_build_fails_before_loading(tmp_path, monkeypatch):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    artifact = onnx_export(tmp_path / "onnx")
    with pytest.raises(ConfigError, match=r"CPU-only build.*pip install \"edgexfer\[gpu\]\""):
        prov.load_on_device(artifact.path, "cuda")
    with pytest.raises(ConfigError, match="LiteRT runs on the CPU"):
        prov.preflight("cuda", [".tflite"], "m.tflite")
    model, placement = prov.load_on_device(artifact.path, "auto")
    assert placement == prov.CPU_ORT and model.providers == ["CPUExecutionProvider"]


def test_cuda_claimed_but_not_started_is_an_error_not_a_cpu_number(tmp_path, monkeypatch):
    """onnxruntime that lists CUDA but falls back to the CPU (what a broken GPU install does):
    the session's real providers are checked after it is built."""
    artifact = onnx_export(tmp_path / "onnx")
    monkeypatch.setattr(prov, "ort_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(prov, "cuda_unavailable_reason", lambda: "the provider did not start")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnxruntime warns that CUDA is not there, and goes on with the CPU
        with pytest.raises(ConfigError, match="on the CPU, not CUDA: the provider did not start"):
            prov.load_on_device(artifact.path, "cuda")


def test_benchmark_rows_name_provider_and_device(tmp_path):
    from edgexfer.evaluate.benchmark import benchmark_models
    from edgexfer.evaluate.check_tables import render_benchmark_markdown
    from edgexfer.evaluate.formatting import macs as fmt_macs
    from edgexfer.evaluate.latency import LatencySettings

    artifact = onnx_export(tmp_path / "onnx")
    result = benchmark_models(
        [artifact.path], out=tmp_path / "b", device="cpu", latency=LatencySettings(warmup=0, runs=3, batch_size=2)
    )
    assert result["device"] == "cpu" and len(result["rows"]) == 2
    for row in result["rows"]:
        assert (row["provider"], row["device"], row["runtime"]) == ("CPUExecutionProvider", "cpu", "onnxruntime-cpu")
    markdown = render_benchmark_markdown(result)
    assert "onnxruntime-cpu (CPUExecutionProvider) | cpu |" in markdown
    # the size-and-latency table shows the MACs counted on the file, on every row
    assert "| images/s | size | MACs |" in markdown
    counted = fmt_macs(result["sizes"][0]["macs"])
    size_and_latency = [line for line in markdown.splitlines() if "| onnx/" in line]
    assert result["sizes"][0]["macs"] > 0 and len(size_and_latency) == len(result["rows"])
    assert all(line.endswith(f" | {counted} |") for line in size_and_latency), size_and_latency


def test_auto_with_a_cuda_provider_that_does_not_start_keeps_only_cpu_rows(tmp_path, monkeypatch):
    from edgexfer.evaluate import latency as lat
    from edgexfer.evaluate.benchmark import benchmark_models

    artifact = onnx_export(tmp_path / "onnx")
    monkeypatch.setattr(lat, "ort_providers", lambda: ["CPUExecutionProvider", "CUDAExecutionProvider"])
    monkeypatch.setattr(prov, "ort_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(prov, "cuda_unavailable_reason", lambda: "test")
    logged = []
    result = benchmark_models(
        [artifact.path], out=tmp_path / "b", device="auto", log=logged.append, latency=_small_latency()
    )
    assert {row["device"] for row in result["rows"]} == {"cpu"}
    assert any("CUDA skipped" in line for line in logged)


def _small_latency():
    from edgexfer.evaluate.latency import LatencySettings

    return LatencySettings(warmup=0, runs=3, batch_size=1)


def test_cli_device_cuda_is_one_line_and_exit_2(capsys, tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    artifact = onnx_export(tmp_path / "onnx")
    data = image_folder(tmp_path / "data")
    for args in (
        ("benchmark", artifact.path, "--device", "cuda"),
        ("check", artifact.path, "--data", data, "--device", "cuda", "--no-latency"),
    ):
        result = call_cli(capsys, *args)
        assert result.code == 2
        assert "CPU-only build" in the_error(result.err)
    result = call_cli(capsys, "benchmark", artifact.path, "--device", "tpu")
    assert result.code == 2 and "allowed: cpu, cuda, auto" in the_error(result.err)


# ------------------------------------------------------------- runtime-only install


def test_check_without_tensorflow_compares_the_exported_files(tmp_path, monkeypatch):
    from edgexfer.evaluate import check as check_module

    monkeypatch.setattr(check_module, "_tensorflow_installed", lambda: False)
    first, second = onnx_export(tmp_path / "a", seed=0), onnx_export(tmp_path / "b", seed=7)
    data = image_folder(tmp_path / "data")
    result = check_module.check_artifacts(
        [first.path, second.path], data, out=tmp_path / "c", device="cpu", measure_latency=False, min_agreement=0.0
    )
    assert result["reference"]["kind"] == "export" and "TensorFlow is not installed" in result["reference"]["why"]
    ref, other = result["candidates"]
    assert ref["reference"] and ref["parity"]["agreement"] == 1.0 and ref["parent"] is None
    assert other["parity"]["max_abs_diff"] > 0  # other weights: compared with the first file, not with itself
    assert result["parents"] == [] and result["passed"]
    assert ref["placement"] == {"provider": "CPUExecutionProvider", "device": "cpu"}
    markdown = (tmp_path / "c" / "check.md").read_text()
    assert "no Keras parent" in markdown and "Keras parent not loaded" in markdown
    # a gate on one file alone would compare it with itself: refused
    with pytest.raises(ConfigError, match=r"needs TensorFlow: pip install \"edgexfer\[train\]\""):
        check_module.check_artifacts([first.path], data, out=tmp_path / "d", min_agreement=0.9, measure_latency=False)


def test_training_command_without_the_train_extra_is_one_line(capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else real(name, *a))
    for args in (
        ("finetune", "data", "--out", "x"),
        ("distill", "a", "b", "--student", "cnn_tiny"),
        ("data", "prepare", "uci-digits", "x"),
    ):
        result = call_cli(capsys, *args)
        assert result.code == 2
        assert 'pip install "edgexfer[train]"' in the_error(result.err)
    result = call_cli(capsys, "run", "--list")  # the runtime-only commands still work
    assert result.code == 0 and "digits" in result.out


def test_import_tf_names_the_extra(monkeypatch):
    from edgexfer import tf_env as _env

    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import tensorflow -> ModuleNotFoundError
    with pytest.raises(ConfigError, match=r"needs tensorflow.*pip install \"edgexfer\[train\]\""):
        _env.import_tf()
    assert _env.missing_train_extra(ModuleNotFoundError("x", name="yaml")) is None


# ---------------------------------------------------------------------------- recipes


def test_shipped_recipes_resolve_from_anywhere(tmp_path, monkeypatch):
    from edgexfer import demo
    from edgexfer.recipes_index import list_recipes, resolve_pipeline

    monkeypatch.chdir(tmp_path)
    recipes = list_recipes()
    assert {"digits", "digits-fewshot", "fashion-mnist", "template"} <= set(recipes)
    assert resolve_pipeline("digits") == recipes["digits"] == demo.RECIPE
    assert resolve_pipeline("digits.yaml") == recipes["digits"]
    own = tmp_path / "digits"  # a file of the user's wins over the shipped name
    own.write_text("name: mine\n")
    assert resolve_pipeline("digits").resolve() == own
    with pytest.raises(
        ConfigError,
        match=r"'digit' is neither .* \(did you mean 'digits'\?\); shipped recipes: "
        r"digits, digits-fewshot, digits-source-free, fashion-mnist, template",
    ):
        resolve_pipeline("digit")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_pipeline("some/dir/x.yaml")


def test_run_list_and_unknown_recipe(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    listing = call_cli(capsys, "run", "--list")
    assert listing.code == 0 and all(
        name in listing.out for name in ("digits", "digits-fewshot", "fashion-mnist", "template")
    )
    unknown = call_cli(capsys, "run", "no-such-recipe")
    assert (
        unknown.code == 2
        and "shipped recipes: digits, digits-fewshot, digits-source-free, fashion-mnist, template"
        in the_error(unknown.err)
    )


# ------------------------------------------------------------------------- bundle


def test_bundle_example_predicts_what_edgexfer_predicts(tmp_path):
    from edgexfer.export.bundle import write_bundle
    from edgexfer.runtime.predict import predict_paths

    artifact = onnx_export(tmp_path / "onnx")
    data = image_folder(tmp_path / "data", per_class=2)
    bundle = write_bundle(artifact.path, tmp_path / "bundle")
    assert sorted(p.name for p in bundle.iterdir()) == [
        "README.md",
        "labels.txt",
        "model.onnx",
        "predict.py",
        "preprocessing.json",
    ]
    readme = (bundle / "README.md").read_text()
    assert "mean = [100.0, 110.0, 120.0]" in readme and "std = [50.0, 60.0, 70.0]" in readme
    assert "Resize to 4×4 pixels" in readme and "pip install numpy pillow onnxruntime" in readme
    assert (bundle / "labels.txt").read_text().splitlines() == LABELS
    images = sorted(data.rglob("*.png"))
    done = subprocess.run(
        [sys.executable, str(bundle / "predict.py"), *map(str, images)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    expected = predict_paths(artifact.path, images, top_k=3)["predictions"]
    lines = done.stdout.splitlines()
    assert len(lines) == len(images)
    for line, want in zip(lines, expected):
        path, *pairs = line.split(" ")
        got = [(pair.rsplit("=", 1)[0], float(pair.rsplit("=", 1)[1])) for pair in pairs]
        assert [label for label, _ in got] == [row["label"] for row in want["top_k"]]
        assert np.allclose([p for _, p in got], [row["score"] for row in want["top_k"]], atol=1e-4)
    with pytest.raises(ConfigError, match="already exists and is not empty"):
        write_bundle(artifact.path, bundle)


# ----------------------------------------------------------------- arena estimate


def test_arena_estimate_follows_liveness():
    from edgexfer.export.tflite_micro import TFLiteGraph, _Operator, _Tensor, estimate_arena

    t = lambda i, shape, const=False: _Tensor(i, f"t{i}", "INT8", shape, const)  # noqa: E731
    # input(1000 B) -> op0 -> a(2000 B) -> op1 -> b(500 B) -> op2 (+ a, a skip connection) -> out(100 B)
    tensors = (t(0, (1, 1000)), t(1, (1, 2000)), t(2, (1, 500)), t(3, (1, 100)), t(4, (1, 4096), True))
    ops = (
        _Operator(0, "CONV_2D", (0, 4), (1,)),
        _Operator(1, "CONV_2D", (1, 4), (2,)),
        _Operator(2, "ADD", (2, 1), (3,)),
    )
    estimate = estimate_arena(TFLiteGraph(tensors, ops, (0,), (3,), 1))
    # step 1 holds a (2000 → 2000) and b (500 → 512); step 0 input + a = 1008 + 2000; step 2: a + b + out
    assert estimate["activation_peak_bytes"] == 1008 + 2000
    assert estimate["activation_tensors"] == 4  # the constant weights are not in the arena
    assert estimate["arena_bytes"] >= estimate["activation_peak_bytes"] + estimate["bookkeeping_bytes"]
    assert estimate["arena_bytes"] % 1024 == 0
