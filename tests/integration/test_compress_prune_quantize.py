"""Pruning, QAT / pruning-preserving QAT and PTQ on a tiny teacher, measured as TFLite."""

import numpy as np
import pytest
from typer.testing import CliRunner

from edgexfer.artifact import Artifact, Manifest, writing_artifact
from edgexfer.compress import api as capi
from edgexfer.errors import ConfigError
from edgexfer.keras_io import load_keras_model
from kit import call_cli, shared_teacher, the_error

pytestmark = pytest.mark.integration

PRUNE = dict(epochs=4, batch_size=8, learning_rate=1e-3, seed=1)
QAT = dict(mode="qat", epochs=1, batch_size=8, learning_rate=1e-4, calibration_images=20, seed=1)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return shared_teacher(tmp_path_factory)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("compress")


@pytest.fixture(scope="module")
def pruned(teacher, runs):
    artifact, data = teacher
    return capi.prune(artifact.path, data, runs / "pruned", sparsity=0.5, **PRUNE)


@pytest.fixture(scope="module")
def qat(teacher, runs):
    artifact, data = teacher
    return capi.quantize(artifact.path, data, runs / "qat", **QAT)


def test_prune_reaches_the_sparsity_and_shrinks_the_gzip_size(pruned, teacher):
    m = pruned.metrics
    assert m["pruned_layers_sparsity"] >= 0.45
    assert set(m["layers"]) == {"stage0_conv", "stage1_conv", "stage2_conv", "stage3_conv", "head_dense"}
    assert all(entry["sparsity"] >= 0.45 for entry in m["layers"].values())
    assert m["gzip_bytes_after"] < m["gzip_bytes_before"] and m["gzip_ratio"] > 1.2
    assert m["tflite_fp32"]["gzip_bytes_after"] < m["tflite_fp32"]["gzip_bytes_before"]
    assert m["accuracy_after"] >= 0.8 and m["accuracy_before"] >= 0.8
    assert m["params_nonzero_after"] < m["params_nonzero_before"]
    assert {d["class"] for d in m["dense_layers"]} == {"BatchNormalization"}
    assert pruned.manifest.extra["pruning"]["sparsity"] == m["pruned_layers_sparsity"]
    # the stripped model has no pruning wrappers and the input artifact is untouched
    model = load_keras_model(pruned.model_path)
    assert not any("prune_low_magnitude" in layer.name for layer in model.layers)
    assert (model.get_layer("stage2_conv").kernel.numpy() == 0).mean() >= 0.45
    original = load_keras_model(teacher[0].model_path)
    assert (original.get_layer("stage2_conv").kernel.numpy() == 0).mean() == 0.0


def test_prune_and_quantize_metrics_carry_the_macs_of_their_model(teacher, pruned, qat):
    from edgexfer.compress.results import BeforeAfter, PruneResult, QuantizeResult
    from edgexfer.evaluate.macs import keras_macs

    teacher_macs = keras_macs(load_keras_model(teacher[0].model_path))
    assert teacher_macs > 10_000
    # counted on the model each artifact holds (QAT wrappers looked through): pruning and QAT keep the graph
    for artifact in (pruned, qat):
        assert artifact.metrics["macs"] == keras_macs(load_keras_model(artifact.model_path)) == teacher_macs
    assert pruned.metrics["macs_before"] == teacher_macs
    assert PruneResult.of(pruned).macs == BeforeAfter(teacher_macs, teacher_macs)
    assert QuantizeResult.of(qat).macs == teacher_macs


def test_two_four_structured_pruning(teacher, runs):
    artifact, data = teacher
    result = capi.prune(
        artifact.path, data, runs / "two_four", structure="2:4", measure_tflite=False, **{**PRUNE, "epochs": 2}
    )
    m = result.metrics
    assert m["structure"] == "2:4" and m["target_sparsity"] == 0.5
    assert m["layers"] and all(entry["pattern_2_4"] for entry in m["layers"].values())
    assert m["pattern_2_4_layers"] == len(m["layers"])
    reasons = {d["layer"]: d["reason"] for d in m["dense_layers"]}
    assert "divisible by 4 (it has 3)" in reasons["stage0_conv"]


def test_prune_lists_layers_tfmot_cannot_prune():
    from edgexfer.compress.prune import plan_pruning
    from edgexfer.tf_env import import_tf

    _, keras = import_tf()
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.PReLU(shared_axes=[1, 2], name="prelu")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    plan = plan_pruning(keras.Model(inputs, keras.layers.Dense(2, name="dense")(x)))
    assert plan.pruned == ["conv", "dense"]
    assert plan.dense == [
        {"layer": "prelu", "class": "PReLU", "params": 4, "reason": "tfmot cannot prune PReLU layers"},
        {
            "layer": "bn",
            "class": "BatchNormalization",
            "params": 16,
            "reason": "tfmot's prune registry lists no prunable weights for BatchNormalization",
        },
    ]


def test_qat_converts_to_a_fully_int8_tflite(qat, teacher, tmp_path):
    from edgexfer.export import export_artifact
    from edgexfer.runtime import load_model

    m = qat.metrics
    q = qat.manifest.quantization
    assert q["mode"] == "qat" and q["type"] == "int8" and q["whole_model"] is True and q["float_layers"] == []
    # int8 inside; uint8 in and out, the I/O type export writes by default (what MediaPipe Tasks accepts)
    assert m["tflite_qat_int8"]["fp32_tensor_count"] == 0 and m["tflite_qat_int8"]["input_dtype"] == "uint8"
    for key in ("float_accuracy", "qat_keras_accuracy", "qat_int8_tflite_accuracy", "ptq_int8_tflite_accuracy"):
        assert 0.0 <= m[key] <= 1.0
    assert m["qat_int8_tflite_accuracy"] >= 0.8
    calibration = np.load(qat.path / q["calibration_file"])
    assert calibration.shape == (20, 16, 16, 3) and calibration.dtype == np.uint8
    # the exporter recognises the QAT artifact and uses the stored calibration images
    exported = export_artifact(qat.path, tmp_path / "int8", "tflite", "int8", calibration_images=calibration)
    assert exported.metrics["fp32_tensor_count"] == 0
    assert exported.manifest.quantization["from_qat"] is True
    model = load_model(exported.path)
    probs = model.predict_proba(calibration[:4])
    assert probs.shape == (4, 3)


def test_pruning_preserving_qat_keeps_the_sparsity_in_the_converted_model(pruned, teacher, runs):
    _, data = teacher
    result = capi.quantize(pruned.path, data, runs / "pqat", compare_ptq=False, **QAT)
    check = result.metrics["sparsity_check"]
    assert result.manifest.quantization["mode"] == "pqat" and result.metrics["pqat"] is True
    assert check["kept"] is True and check["tflite_sparsity"] >= 0.45
    assert set(check["layers"]) == set(pruned.metrics["layers"])
    assert all(entry["tflite"] >= 0.45 for entry in check["layers"].values())
    assert result.metrics["tflite_qat_int8"]["fp32_tensor_count"] == 0


@pytest.mark.parametrize("kind", ["int8", "fp16", "dynamic"])
def test_ptq_records_its_settings_and_measures_the_converted_model(kind, teacher, runs):
    artifact, data = teacher
    result = capi.quantize(artifact.path, data, runs / f"ptq_{kind}", mode="ptq", type=kind, calibration_images=12)
    q = result.manifest.quantization
    m = result.metrics
    assert q["mode"] == "ptq" and q["type"] == kind
    assert m[f"ptq_{kind}_tflite_accuracy"] >= 0.8 and m["accuracy_after"] == m[f"ptq_{kind}_tflite_accuracy"]
    assert (result.path / "model.h5").read_bytes() == artifact.model_path.read_bytes()
    if kind == "int8":
        assert q["calibration_images"] == 12 and np.load(result.path / "calibration.npy").shape[0] == 12
        assert m["tflite_ptq_int8"]["fp32_tensor_count"] == 0
    else:
        assert q["calibration_images"] == 0 and not (result.path / "calibration.npy").exists()


def _keras_artifact(path, model, labels=("blue", "green", "red"), size=16, backbone="custom"):
    from edgexfer.backbones.registry import get_backbone
    from edgexfer.keras_io import MODEL_FILE, save_keras_model

    preprocessing = get_backbone(backbone).preprocessing(size) if backbone != "custom" else None
    from edgexfer.artifact import Preprocessing

    with writing_artifact(path) as writer:
        save_keras_model(model, writer.file(MODEL_FILE))
        return writer.commit(
            Manifest(
                stage="finetune",
                label_names=list(labels),
                preprocessing=preprocessing or Preprocessing(input_size=size),
                backbone=backbone,
                weights="none",
                model_file=MODEL_FILE,
            )
        )


def test_check_lists_what_stays_float_in_mobilenet_v3(tmp_path):
    from edgexfer.backbones.registry import create_backbone
    from edgexfer.cli import app
    from edgexfer.keras_io import build_classifier, build_head_layers

    model = build_classifier(create_backbone("mobilenet_v3_small", 32, "none"), build_head_layers(3, 0.2))
    artifact = _keras_artifact(tmp_path / "v3", model, size=32, backbone="mobilenet_v3_small")
    report = capi.quantize_check(artifact.path)
    assert report["whole_model"] is False and report["pqat"] is False
    classes = {entry["class"] for entry in report["float_layers"]}
    assert {"TFOpLambda", "Multiply"} <= classes
    assert report["quantizable"] > 20 and report["counts"]["int8"] > 20
    assert "error" not in report
    result = CliRunner().invoke(app, ["quantize", "--check", str(artifact.path)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "stay float under QAT" in result.output and "TFOpLambda" in result.output


def test_check_of_a_student_name_converts_it_to_int8_and_counts_float_tensors(capsys):
    from edgexfer.backbones.registry import create_backbone
    from edgexfer.evaluate.macs import keras_macs

    result = call_cli(capsys, "quantize", "cnn_tiny", "--check", "--img-size", "16")
    assert result.code == 0, result.err
    assert "int8 TFLite: 0 float tensors" in result.out and "converted from the QAT model" in result.out
    assert "the whole model is quantized" in result.out and "int8" in result.out
    # the MACs printed are the student's (backbone + a 10-class head on its pooled features)
    backbone = create_backbone("cnn_tiny", 16, weights="none")
    macs = keras_macs(backbone) + backbone.output_shape[-1] * 10
    assert f"{macs / 1e3:.3g} k MACs per image" in " ".join(result.out.split())


def test_check_of_an_unknown_student_is_one_line(capsys, tmp_path):
    result = call_cli(capsys, "quantize", "lite0_b9", "--check")
    assert result.code == 2
    line = the_error(result.err)
    assert "unknown backbone 'lite0_b9'" in line and "lite0_b2, lite0_b3, lite0_b4, lite0_b5" in line
    assert "no folder 'lite0_b9' exists" in line
    result = call_cli(capsys, "quantize", "cnn_tiny", "--check", "--width", "0.3")
    assert result.code == 2 and "--width 0.3 is not available for cnn_tiny; allowed: 0.5, 1.0, 2.0" in the_error(
        result.err
    )
    result = call_cli(capsys, "quantize", tmp_path, "--check", "--img-size", "32")  # a folder: an artifact
    assert result.code == 2 and "--img-size and --width are for a student name" in the_error(result.err)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["cnn_tiny", "cnn_small", "cnn_small2", "cnn_medium", "lite0_b2", "lite0_b3", "lite0_b4", "lite0_b5"]
)
def test_every_registered_student_converts_to_int8_with_no_float_tensor(name):
    report = capi.quantize_check(name, img_size=32)
    assert report["whole_model"] and "error" not in report, report.get("error")
    assert report["int8_tflite"]["error"] is None
    assert report["int8_tflite"]["fp32_tensor_count"] == 0, report["int8_tflite"]["fp32_tensors"]


def test_qat_on_a_model_with_no_quantizable_layer_is_an_error(teacher, tmp_path):
    from edgexfer.tf_env import import_tf

    _, keras = import_tf()
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    x = keras.layers.LayerNormalization(name="norm")(x)
    artifact = _keras_artifact(tmp_path / "none", keras.Model(inputs, keras.layers.Activation("softmax")(x)))
    report = capi.quantize_check(artifact.path)
    assert report["quantizable"] == 0 and "QAT needs at least one layer" in report["error"]
    with pytest.raises(ConfigError, match="QAT needs at least one layer.*LayerNormalization.*--mode ptq"):
        capi.quantize(artifact.path, teacher[1], tmp_path / "out", **QAT)
    assert not (tmp_path / "out").exists()


def test_quantizing_a_qat_model_again_is_refused(qat, teacher, tmp_path):
    with pytest.raises(ConfigError, match="already quantization-aware"):
        capi.quantize(qat.path, teacher[1], tmp_path / "again", **QAT)
    with pytest.raises(ConfigError, match="quantization-aware"):
        capi.prune(qat.path, teacher[1], tmp_path / "pruned", sparsity=0.5)


def test_cli_prune_and_quantize_render_tables(pruned, teacher, tmp_path):
    from edgexfer.cli import app

    _, data = teacher
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["quantize", str(pruned.path), str(data), "--out", str(tmp_path / "ptq"), "--mode", "ptq", "--type", "dynamic"],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "fp32 tensors" in result.output and "PTQ dynamic" in result.output.split("quantize (ptq dynamic)")[1]
    assert "MACs per image" in result.output
    assert Artifact(tmp_path / "ptq").metrics["macs"] == pruned.metrics["macs"]
    result = runner.invoke(
        app,
        [
            "prune",
            str(pruned.path),
            str(data),
            "--out",
            str(tmp_path / "pr"),
            "--sparsity",
            "0.6",
            "--schedule",
            "constant",
            "--epochs",
            "1",
            "--no-measure-tflite",
        ],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "sparsity reached per pruned layer" in result.output and "stay dense" in result.output
    assert "MACs per image (zeros count)" in result.output and f"{pruned.metrics['macs']:,}" in result.output
    assert Artifact(tmp_path / "pr").metrics["pruned_layers_sparsity"] >= 0.55


def test_range_calibration_covers_activations_beyond_tfmot_s_initial_six():
    """tfmot starts activation ranges at ±6 (EMA 0.999); calibration sets them from data."""
    from edgexfer.compress.qat import build_qat_model, calibrate_ranges, range_variables
    from edgexfer.tf_env import import_tf

    _, keras = import_tf()
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(
        3, activation="softmax", kernel_initializer=keras.initializers.Constant(10.0), name="head_dense"
    )(inputs)
    model = keras.Model(inputs, outputs)
    qat, _ = build_qat_model(model)
    x = np.random.default_rng(0).uniform(0, 1, (40, 4)).astype("float32")
    before = {v.name: float(np.max(v.numpy())) for v in range_variables(qat) if v.name.endswith("max:0")}
    assert calibrate_ranges(qat, x, batch_size=16) == len(range_variables(qat))
    after = {v.name: float(np.max(v.numpy())) for v in range_variables(qat) if v.name.endswith("max:0")}
    pre_activation = next(name for name in after if "pre_activation_max" in name)
    assert before[pre_activation] == pytest.approx(6.0)
    logits_max = float((x @ np.full((4, 3), 10.0)).max())
    assert 0.8 * logits_max <= after[pre_activation] <= logits_max + 1e-4
    np.testing.assert_allclose(qat.get_layer("quant_head_dense").layer.kernel.numpy(), 10.0)


def test_all_zero_output_channels_keep_a_weight_range_so_int8_matches_keras(teacher):
    """A pruned-away channel must not get a [0, 0] weight range (its folded bias would be lost)."""
    from ai_edge_litert.interpreter import Interpreter

    from edgexfer.compress.qat import build_qat_model, calibrate_ranges, fix_degenerate_weight_ranges
    from edgexfer.export._tflite import tflite_bytes
    from edgexfer.runtime.images import load_images, normalize

    artifact, data = teacher
    model = load_keras_model(artifact.model_path)
    kernel = model.get_layer("stage3_conv").kernel
    values = kernel.numpy()
    values[..., :5] = 0.0  # five output channels pruned away entirely
    kernel.assign(values)
    qat, _ = build_qat_model(model)
    pre = artifact.manifest.preprocessing
    x = normalize(load_images(sorted(data.rglob("*.png"))[::6], pre), pre)
    calibrate_ranges(qat, x)
    qat(x[:8], training=True)  # a training step records the weight ranges, [0, 0] for the dead channels
    ranges = {v.name: v.numpy() for v in qat.weights if "stage3_conv" in v.name and "kernel_m" in v.name}
    assert any((np.abs(value) < 1e-8).sum() >= 5 for value in ranges.values())
    assert fix_degenerate_weight_ranges(qat) == 5
    keras_pred = qat.predict(x, verbose=0).argmax(1)
    interpreter = Interpreter(model_content=tflite_bytes(qat, "int8", x))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero = inp["quantization"]
    preds = []
    for row in np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8):
        interpreter.set_tensor(inp["index"], row[None])
        interpreter.invoke()
        preds.append(interpreter.get_tensor(out["index"])[0].argmax())
    assert (np.array(preds) == keras_pred).mean() >= 0.9


def test_prune_and_qat_train_on_unlabelled_images_under_the_input_model_s_predictions(teacher, tmp_path):
    """The unlabelled images join the training data with the input model's predicted classes as
    labels (never their folders'); both stages record how many and how they were labelled."""
    from edgexfer.compress import measure, stage_io
    from edgexfer.compress.config import PruneConfig
    from kit import make_color_folder

    artifact, data = teacher
    target = make_color_folder(tmp_path / "target", per_class=8, size=20, seed=5, shift=(40, -30, 20), labelled=False)
    config = PruneConfig.build(sparsity=0.5, unlabelled=str(target), max_unlabelled_images=15, seed=2)
    model = load_keras_model(artifact.model_path)
    samples, info = stage_io.labelled_by_model(artifact, model, config, log=lambda *_: None)
    assert len(samples) == info["images"] == 15 and sum(info["predicted_per_class"].values()) == 15
    images, _ = stage_io.load_uint8(samples, artifact.manifest.preprocessing)
    predicted = measure.keras_probs(model, images, artifact.manifest.preprocessing).argmax(1)
    assert [s.label for s in samples] == predicted.tolist()

    fast = dict(PRUNE, epochs=1)
    plain = capi.prune(artifact.path, data, tmp_path / "plain", sparsity=0.5, measure_tflite=False, **fast)
    pruned = capi.prune(
        artifact.path, data, tmp_path / "p", sparsity=0.5, measure_tflite=False, unlabelled=str(target), **fast
    )
    assert pruned.metrics["unlabelled"]["images"] == 24
    assert pruned.metrics["splits"]["train"] == plain.metrics["splits"]["train"] + 24
    qat = capi.quantize(pruned.path, data, tmp_path / "q", unlabelled=str(target), **{**QAT, "compare_ptq": False})
    assert qat.metrics["unlabelled"]["images"] == 24
    assert qat.manifest.config["unlabelled"] == str(target)
