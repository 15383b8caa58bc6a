"""A tiny cross-domain run end to end: every accuracy on held-out images, the Keras model and its
int8 file on the same ones, MACs counted alike on Keras and TFLite, and the report checked in a
real browser (headless Chromium, where installed)."""

import json
import shutil

import pytest

from edgexfer.errors import ConfigError
from edgexfer.pipeline import run_pipeline
from kit import make_color_folder

pytestmark = pytest.mark.integration

PIPELINE = """\
name: held-out
data:
  source: {path: SOURCE}
  target: {path: TARGET}
stages:
  finetune:
    data: source
    backbone: cnn_tiny
    weights: none
    img_size: 16
    epochs: 10
    fine_tune_epochs: 0
    learning_rate: 0.05
  source_only:
    type: evaluate
    parent: finetune
    domains: [source, target]
  export:
    parent: finetune
    format: tflite
    quant: int8
  check:
    artifacts: [export]
    data: source
    split: test
  check_target:
    type: check
    artifacts: [export]
    data: target
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("held-out")
    source = make_color_folder(root / "source", per_class=30, seed=0)
    target = make_color_folder(root / "target", per_class=12, seed=7)
    path = root / "pipeline.yaml"
    path.write_text(PIPELINE.replace("SOURCE", str(source)).replace("TARGET", str(target)))
    run_pipeline(path, run_dir=root / "run", log=lambda *_: None)
    return root / "run"


def read(path):
    return json.loads(path.read_text())


def test_every_model_is_scored_on_the_held_out_test_split_of_the_domain_it_trained_on(run):
    finetune = read(run / "finetune" / "metrics.json")
    evaluation = read(run / "source_only" / "evaluate.json")
    check, check_target = read(run / "check" / "check.json"), read(run / "check_target" / "check.json")
    source, target = evaluation["domains"]["source"], evaluation["domains"]["target"]
    # The source: only its held-out test split, the very images the fine-tune stage tested on.
    assert (source["split"], source["n"], source["labels_used_for_training"]) == (
        "test",
        finetune["splits"]["test"],
        True,
    )
    assert source["accuracy"] == pytest.approx(finetune["test_accuracy"])
    # The check scored the Keras model and its int8 file on the same images.
    assert (check["split"], check["n"]) == ("test", source["n"])
    assert check["parents"][0]["accuracy"] == pytest.approx(source["accuracy"])
    # The target's labels were never used: all its images.
    assert (target["split"], target["n"], target["labels_used_for_training"]) == ("all", 36, False)
    assert check_target["n"] == 36 and check_target["parents"][0]["accuracy"] == pytest.approx(target["accuracy"])


def test_macs_counted_on_the_keras_model_and_on_its_tflite_file_agree(run, tmp_path):
    from edgexfer.evaluate.macs import keras_macs, tflite_macs
    from edgexfer.tf_env import import_tf

    assert read(run / "source_only" / "evaluate.json")["macs"] == tflite_macs(run / "export" / "model.tflite") > 0
    _, keras = import_tf()
    inputs = keras.Input((8, 8, 3))
    hidden = keras.layers.Conv2D(4, 3)(inputs)  # 6·6 positions × 3·3·3·4 = 3,888
    hidden = keras.layers.DepthwiseConv2D(3, padding="same")(hidden)  # 6·6 × 3·3·4 = 1,296
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(hidden))  # 144·2 = 288
    assert keras_macs(keras.Model(inputs, outputs)) == 3_888 + 1_296 + 288


def test_an_evaluate_stage_asking_for_a_split_the_folder_lacks_names_the_splits_it_has(run, tmp_path):
    few = tmp_path / "few"
    make_color_folder(few, per_class=1)  # one image a class: nothing can be held out
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    path = tmp_path / "pipeline.yaml"
    extra = f"  few:\n    type: evaluate\n    parent: finetune\n    domains: {{few: {few}}}\n    split: test\n"
    path.write_text((run.parent / "pipeline.yaml").read_text() + extra)
    with pytest.raises(
        ConfigError,
        match=r"stage 'few': domain 'few' .*: the folder has no 'test' split; it has "
        r"train \(3 images\)",
    ) as info:
        run_pipeline(path, run_dir=copy, only="few", log=lambda *_: None, report=False)
    assert "\n" not in str(info.value)


def test_the_report_renders_in_a_real_browser_with_the_summary_above_the_fold(run, tmp_path, render_in_chromium):
    page = render_in_chromium(run / "report.html", screenshot=tmp_path / "top.png")
    assert page["images"] and all(loaded for loaded in page["images"]), f"broken images: {page['images']}"
    assert page["console_errors"] == []
    assert page["requests"] == [], "the report must be one self-contained file"
    top, bottom = page["summary_box"]
    assert 0 <= top and bottom <= 800, f"the summary spans {top}–{bottom} px of an 800 px window"
    assert (tmp_path / "top.png").stat().st_size > 10_000
