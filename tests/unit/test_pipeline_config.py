"""Pipeline files: validation with line numbers and did-you-mean, overrides, hashes."""

import textwrap
from pathlib import Path

import pytest

from edgexfer.errors import ConfigError
from edgexfer.pipeline import load_pipeline, stage_hash

GOOD = """\
name: tiny
data:
  colors: {path: DATA}
stages:
  finetune:
    data: colors
    backbone: cnn_tiny
    weights: none
    img_size: 16
  export:
    parent: finetune
    format: tflite
    quant: none
  check:
    artifacts: [export]
    data: colors
"""


def write(tmp_path, text, name="p.yaml"):
    (tmp_path / "DATA").mkdir(exist_ok=True)
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).replace("DATA", str(tmp_path / "DATA")))
    return path


def test_a_good_file_loads_in_order(tmp_path):
    pipeline = load_pipeline(write(tmp_path, GOOD))
    assert [s.name for s in pipeline.stages] == ["finetune", "export", "check"]
    assert pipeline.stage("export").refs == {"parent": "finetune"}
    assert pipeline.stage("check").refs["artifacts"] == ["export"]
    assert pipeline.run_dir.as_posix() == "runs/tiny"


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            GOOD.replace("    img_size: 16", "    img_sise: 16"),
            r"p.yaml:5: stage 'finetune'.*unknown option 'img_sise' — did you mean 'img_size'",
        ),
        (
            GOOD.replace("  export:\n", "  exprot:\n"),
            r"p.yaml:10: stage 'exprot': unknown stage type 'exprot' — did you mean 'export'",
        ),
        (
            GOOD.replace("parent: finetune", "parent: finetuen"),
            r"p.yaml:11: .*parent='finetuen' is not an earlier stage — did you mean 'finetune'",
        ),
        (
            GOOD.replace("quant: none", "quant: fp16").replace("format: tflite", "format: onnx"),
            r"fp16 is not available for onnx",
        ),
        (
            GOOD.replace("    data: colors\n    backbone", "    data: colours\n    backbone"),
            r"p.yaml:6: .*'colours' is neither a dataset .* did you mean 'colors'",
        ),
        (
            GOOD.replace("name: tiny", "name: tiny\nstagse: {}"),
            r"p.yaml:2: unknown key 'stagse' — did you mean 'stages'",
        ),
        (GOOD.replace("    img_size: 16", "    img_size: -3"), r"img_size=-3 is invalid"),
        ("name: x\nstages: [a, b]\n", r"'stages' must map stage names"),
        ("name: x\nstages:\n  finetune: {data: a\n", r"p.yaml:4: not valid YAML \(expected .,. or .}."),
    ],
)
def test_bad_files_get_one_line_errors_with_line_numbers(tmp_path, bad, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_pipeline(write(tmp_path, bad))
    assert "\n" not in str(info.value)


def test_a_stage_may_not_read_a_later_stage(tmp_path):
    text = GOOD.replace("  check:\n    artifacts: [export]", "  check:\n    artifacts: [export, later]")
    with pytest.raises(ConfigError, match="'later' is not an earlier stage"):
        load_pipeline(write(tmp_path, text))


def test_overrides_change_options_and_are_validated(tmp_path):
    path = write(tmp_path, GOOD)
    pipeline = load_pipeline(path, ["finetune.epochs=3", "stages.export.quant=fp16"])
    assert pipeline.stage("finetune").options["epochs"] == 3
    assert pipeline.stage("export").options["quant"] == "fp16"
    with pytest.raises(ConfigError, match="epochs=0 is invalid"):
        load_pipeline(path, ["finetune.epochs=0"])
    with pytest.raises(ConfigError, match="use KEY=VALUE"):
        load_pipeline(path, ["finetune.epochs"])
    with pytest.raises(ConfigError, match="no 'finetun' — did you mean 'finetune'"):
        load_pipeline(path, ["stages.finetun.epochs=3"])


def test_stage_hash_changes_with_options_and_upstream(tmp_path):
    path = write(tmp_path, GOOD)

    def hashes(overrides=()):
        pipeline = load_pipeline(path, list(overrides))
        result = {}
        for stage in pipeline.stages:
            result[stage.name] = stage_hash(pipeline, stage, result)
        return result

    base = hashes()
    assert hashes() == base
    changed = hashes(["export.quant=fp16"])
    assert changed["finetune"] == base["finetune"] and changed["export"] != base["export"]
    assert changed["check"] != base["check"]  # downstream of a changed stage
    upstream = hashes(["finetune.epochs=2"])
    assert all(upstream[name] != base[name] for name in base)


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "models").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_pipelines_validate(path):
    pipeline = load_pipeline(path)
    assert pipeline.stages, f"{path.name} has no stages"


CROSS_DOMAIN = """\
name: cross
data:
  source: {path: DATA}
  target: {path: DATA2}
stages:
  finetune:
    data: source
    backbone: cnn_tiny
    weights: none
  adapt:
    parent: finetune
    source: source
    target: target
  distill:
    teacher: adapt
    data: source
    unlabelled: target
    student: cnn_tiny
  source_only:
    type: evaluate
    parent: finetune
    domains: [source, target]
  student:
    type: evaluate
    parent: distill
    domains: [target, source]
  export:
    parent: distill
    format: tflite
    quant: int8
  check:
    artifacts: [export]
    data: source
  check_target:
    type: check
    artifacts: [export]
    data: target
"""


def test_prune_and_quantize_take_the_target_as_unlabelled_images(tmp_path):
    """Their ``unlabelled`` names a dataset whose images (not labels) they read: the student's
    scores on the target stay on all of it."""
    (tmp_path / "DATA2").mkdir()
    text = CROSS_DOMAIN.replace("DATA2", str(tmp_path / "DATA2")).replace(
        "  source_only:",
        "  prune:\n    parent: distill\n    data: source\n    sparsity: 0.5\n    unlabelled: target\n"
        "  quantize:\n    parent: prune\n    data: source\n    unlabelled: target\n  source_only:",
    )
    pipeline = load_pipeline(write(tmp_path, text))
    for name in ("prune", "quantize"):
        assert pipeline.stage(name).refs["unlabelled"] == {"data": "target"}
    assert pipeline.stage("student").options["split"] == {"source": "test", "target": "all"}
    with pytest.raises(ConfigError, match="PTQ trains nothing"):
        load_pipeline(
            write(
                tmp_path,
                text.replace(
                    "    unlabelled: target\n  source_only:", "    unlabelled: target\n    mode: ptq\n  source_only:"
                ),
            )
        )


def test_distill_may_learn_from_unlabelled_images_alone(tmp_path):
    """Source-free: a distill stage with ``unlabelled`` and no ``data``; with neither, or with an
    option that needs labels, the pipeline is refused before anything runs."""
    (tmp_path / "DATA2").mkdir()
    text = CROSS_DOMAIN.replace("DATA2", str(tmp_path / "DATA2"))
    label_free = text.replace("    teacher: adapt\n    data: source\n", "    teacher: adapt\n")
    pipeline = load_pipeline(write(tmp_path, label_free))
    assert "data" not in pipeline.stage("distill").refs
    assert pipeline.stage("distill").refs["unlabelled"] == {"data": "target"}
    with pytest.raises(ConfigError, match="distill needs labelled images"):
        load_pipeline(
            write(
                tmp_path, label_free.replace("    unlabelled: target\n    student: cnn_tiny", "    student: cnn_tiny")
            )
        )
    with pytest.raises(ConfigError, match="baseline: in a pipeline"):
        load_pipeline(
            write(tmp_path, label_free.replace("    student: cnn_tiny", "    student: cnn_tiny\n    baseline: true", 1))
        )


def test_evaluate_stages_score_trained_on_domains_on_their_held_out_test_split(tmp_path):
    (tmp_path / "DATA2").mkdir()
    pipeline = load_pipeline(write(tmp_path, CROSS_DOMAIN.replace("DATA2", str(tmp_path / "DATA2"))))
    # The source's labels trained every model; the target's never did (adapt and distill read its images only).
    for name in ("source_only", "student"):
        options = pipeline.stage(name).options
        assert options["split"] == {"source": "test", "target": "all"}
        assert options["trained_domains"] == ["source"] and options["measure_latency"] is True
    # A check on the source scores its held-out test split too; on the target, all of it.
    assert pipeline.stage("check").options["split"] == "test"
    assert "split" not in pipeline.stage("check_target").options
    chosen = load_pipeline(
        write(tmp_path, CROSS_DOMAIN.replace("DATA2", str(tmp_path / "DATA2"))),
        overrides=["student.split={target: test}"],
    )
    assert chosen.stage("student").options["split"] == {"target": "test", "source": "test"}


@pytest.mark.parametrize(
    "split, message",
    [
        ("testing", r"stage 'student': split 'testing' for domain 'target' is not one of all, train, val, test"),
        (
            "{sorce: test}",
            r"stage 'student': split names domain 'sorce', which is not evaluated; domains: target, source",
        ),
    ],
)
def test_a_bad_evaluate_split_is_one_line_naming_the_choices(tmp_path, split, message):
    (tmp_path / "DATA2").mkdir()
    with pytest.raises(ConfigError, match=message) as info:
        load_pipeline(
            write(tmp_path, CROSS_DOMAIN.replace("DATA2", str(tmp_path / "DATA2"))),
            overrides=[f"student.split={split}"],
        )
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "old, new, message",
    [
        (
            "    quant: none",
            "    quantt: none",
            r"p.yaml:10: stage 'export': ExportConfig: unknown option 'quantt' — did you mean 'quant'",
        ),
        (
            "    data: colors\n",
            "    data: colors\n    min_agreemnt: 0.9\n",
            r"CheckConfig: unknown option 'min_agreemnt' — did you mean 'min_agreement'",
        ),
        ("    artifacts: [export]", "    artifact: [export]", r"check needs 'artifacts'"),
        ("    quant: none", "    quant: none\n    calibration_dat: colors", r"did you mean 'calibration_data'"),
        ("    quant: none", "    quant: none\n    calibration_images: 3", r"--calibration-images 3 is too few"),
        ("    data: colors\n", "    data: colors\n    min_agreement: 1.5\n", r"--min-agreement 1.5 is outside 0..1"),
        ("    data: colors\n", "    data: colors\n    split: tset\n", r"--split 'tset' is not a split"),
    ],
)
def test_export_and_check_keys_are_their_config_models_fields(tmp_path, old, new, message):
    text = (
        GOOD.replace(old, new, 1) if old != "    data: colors\n" else GOOD[::-1].replace(old[::-1], new[::-1], 1)[::-1]
    )
    with pytest.raises(ConfigError, match=message) as info:
        load_pipeline(write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_every_config_field_is_a_yaml_key(tmp_path):
    """A stage's YAML keys are its config model's fields: no hand-kept list to extend."""
    from edgexfer.evaluate.config import CheckConfig
    from edgexfer.export.config import ExportConfig

    text = GOOD.replace(
        "    quant: none", "    quant: none\n    opset: 13\n    io_type: float32\n    calibration_data: colors"
    )
    text += "    max_images: 8\n    batch_size: 4\n    measure_latency: false\n"
    pipeline = load_pipeline(write(tmp_path, text))
    assert pipeline.stage("export").options == {"format": "tflite", "quant": "none", "opset": 13, "io_type": "float32"}
    assert pipeline.stage("export").refs["calibration_data"] == {"data": "colors"}
    assert set(pipeline.stage("check").options) >= {"max_images", "batch_size", "measure_latency"}
    assert pipeline.stage("export").type.config_model() is ExportConfig
    assert pipeline.stage("check").type.config_model() is CheckConfig


def test_export_stage_defaults_come_from_export_itself(tmp_path):
    """tflite-micro is int8 whatever the file says: a pipeline need not repeat `quant: int8`."""
    text = GOOD.replace("    format: tflite\n    quant: none\n", "    format: tflite-micro\n")
    assert load_pipeline(write(tmp_path, text)).stage("export").options == {"format": "tflite-micro"}
    with pytest.raises(ConfigError, match=r"ExportConfig: format is required \(--format\)"):
        load_pipeline(write(tmp_path, GOOD.replace("    format: tflite\n", "")))
