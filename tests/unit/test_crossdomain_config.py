"""Cross-domain configs, class maps and --data parsing: no TensorFlow needed."""

import json

import pytest

from edgexfer.data.class_map import check_map_used, match_classes, parse_class_map
from edgexfer.errors import ConfigError, DataError
from edgexfer.evaluate.domains import parse_domain, parse_domains
from edgexfer.train.config import DEFAULT_ALPHAS, METHOD_DEFAULTS, AdaptConfig, FuseConfig
from edgexfer.train.fuse import ALPHA_MEANING


def test_adapt_config_defaults_and_method_epochs():
    config = AdaptConfig.build(method="coral")
    assert config.bn_mode == "frozen" and config.output_stats == "target"
    assert AdaptConfig.build(method="adabn").bn_mode == "domain"
    assert AdaptConfig.build(method="dann").bn_mode == "domain"
    assert AdaptConfig.build(method="coral", bn="domain").bn_mode == "domain"
    assert config.epochs_for("coral") == METHOD_DEFAULTS["coral"]["epochs"]
    assert AdaptConfig.build(method="coral", epochs=2).epochs_for("coral") == 2
    assert AdaptConfig.build(method="pseudo-label", after="dann").first_method == "dann"
    assert AdaptConfig.build(method="pseudo-label", after="none").first_method is None
    default = AdaptConfig.build(method="pseudo-label")
    assert (default.first_method, default.bn_mode) == ("coral", "frozen")
    assert AdaptConfig.build(method="pseudo-label", bn="domain").first_method == "adabn"
    assert AdaptConfig.build(method="pseudo-label", after="adabn").bn_mode == "domain"
    assert AdaptConfig.build(method="pseudo-label", after="dann").bn_mode == "domain"
    assert AdaptConfig.build(method="coral").first_method is None


@pytest.mark.parametrize(
    "values, match",
    [
        (dict(method="mmd"), "method"),
        (dict(method="coral", after="adabn"), "pseudo-label"),
        (dict(method="adabn", bn="frozen"), "contradicts"),
        (dict(method="pseudo-label", after="adabn", bn="frozen"), "contradicts"),
        (dict(method="pseudo-label", threshold=1.5), "threshold"),
        (dict(method="dann", epochs=-1), "epochs"),
        (dict(method="dann", learning_rte=0.1), "did you mean 'learning_rate'"),
    ],
)
def test_adapt_config_rejects_bad_values_in_one_line(values, match):
    with pytest.raises(ConfigError, match=match) as info:
        AdaptConfig.build(**values)
    assert "\n" not in str(info.value)


def test_fuse_config_alpha_range_and_auto_needs_validation_data():
    assert FuseConfig.build(alpha=0.3).alpha == 0.3
    assert FuseConfig.build(alpha="auto", val_data="d").alphas == DEFAULT_ALPHAS
    with pytest.raises(ConfigError, match="alpha"):
        FuseConfig.build(alpha=1.5)
    with pytest.raises(ConfigError, match="val_data"):
        FuseConfig.build(alpha="auto")
    with pytest.raises(ConfigError, match="alphas"):
        FuseConfig.build(alpha="auto", val_data="d", alphas=(0.0, 2.0))
    assert FuseConfig.build(alpha="auto", val_data="d", alphas=(1.0, 0.0, 0.5)).alphas == (0.0, 0.5, 1.0)
    assert "source" in ALPHA_MEANING and "0 keeps the fine-tuned" in ALPHA_MEANING


def test_class_map_from_text_json_and_lines(tmp_path):
    assert parse_class_map("seven=7, eight = 8") == {"seven": "7", "eight": "8"}
    assert parse_class_map(None) == {} and parse_class_map("") == {}
    assert parse_class_map({"a": "b"}) == {"a": "b"}
    (tmp_path / "map.json").write_text(json.dumps({"seven": "7"}))
    assert parse_class_map(tmp_path / "map.json") == {"seven": "7"}
    (tmp_path / "map.txt").write_text("# renames\nseven=7\n\neight=8\n")
    assert parse_class_map(str(tmp_path / "map.txt")) == {"seven": "7", "eight": "8"}


@pytest.mark.parametrize(
    "spec, match",
    [
        ("seven", "folder_name=model_class"),
        ("a=b=c", "folder_name=model_class"),
        ("a=", "empty class name"),
        ("a=x,b=x", "cannot merge"),
        ("a=x,a=y", "mapped twice"),
        ("nosuch.json", "no such file"),
    ],
)
def test_class_map_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_class_map(spec)


def test_match_classes_renames_and_explains_mismatches():
    assert match_classes(["seven", "eight"], ["7", "8"], {"seven": "7", "eight": "8"}, "t") == {"seven": 0, "eight": 1}
    assert match_classes(["b", "a"], ["a", "b"], {}, "t") == {"b": 1, "a": 0}
    with pytest.raises(DataError, match=r"--class-map 'seven=\?' \(folder_name=model_class; each \? one of 7\)"):
        match_classes(["seven", "8"], ["7", "8"], {}, "target")
    with pytest.raises(DataError, match="missing 9"):
        match_classes(["7", "8"], ["7", "8", "9"], {}, "target")
    with pytest.raises(DataError, match="not a class folder"):
        match_classes(["7", "8"], ["7", "8"], {"seven": "7"}, "target")
    with pytest.raises(DataError, match="two class folders named"):
        match_classes(["seven", "7"], ["7", "8"], {"seven": "7"}, "target", strict_keys=False)
    with pytest.raises(DataError, match="source folder must have the model's classes"):
        match_classes(["seven", "8"], ["7", "8"], {}, "source", source_domain=True)
    with pytest.raises(ConfigError, match="none of the folders"):
        check_map_used({"sevn": "7"}, ["seven", "8"])


def test_parse_domains_names_and_errors():
    assert parse_domain("mnist=data/mnist") == ("mnist", "data/mnist")
    assert parse_domain("data/uci/") == ("uci", "data/uci/")
    assert list(parse_domains(["b=x", "a=y"])) == ["b", "a"]  # order kept: the first is the reference
    with pytest.raises(ConfigError, match="twice"):
        parse_domains(["a=x", "a=y"])
    with pytest.raises(ConfigError, match="NAME=DIR"):
        parse_domains(["=x"])
    with pytest.raises(ConfigError, match="at least one"):
        parse_domains([])
