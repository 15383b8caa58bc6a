import pytest

from edgexfer.config import FinetuneConfig, load_config_file
from edgexfer.errors import ConfigError


def test_defaults_are_valid():
    config = FinetuneConfig.build()
    assert config.backbone == "efficientnet_lite0" and config.feature_cache


@pytest.mark.parametrize(
    "values, message",
    [
        ({"epochs": 0}, "epochs=0 is invalid"),
        ({"batch_size": -4}, "batch_size=-4"),
        ({"strategy": "horovod"}, "strategy='horovod'"),
        ({"learning_rate": 0}, "learning_rate=0"),
        ({"epocs": 3}, "did you mean 'epochs'"),
        ({"fine_tune_epochs": 2, "unfreeze_layers": 0}, "needs unfreeze_layers > 0"),
        ({"augment": {"crop_zoom": 0.9}}, "augment.crop_zoom=0.9"),
        ({"image_cache": "ram"}, "image_cache='ram' is invalid: Input should be 'auto', 'memory', 'disk' or 'none'"),
    ],
)
def test_bad_values_give_one_line_errors(values, message):
    with pytest.raises(ConfigError, match=message) as info:
        FinetuneConfig.build(**values)
    assert "\n" not in str(info.value)


def test_config_files(tmp_path):
    (tmp_path / "a.yaml").write_text("epochs: 3\naugment:\n  flip: true\n")
    (tmp_path / "b.toml").write_text("epochs = 4\n")
    (tmp_path / "c.yaml").write_text("- just\n- a list\n")
    assert load_config_file(tmp_path / "a.yaml") == {"epochs": 3, "augment": {"flip": True}}
    assert load_config_file(tmp_path / "b.toml") == {"epochs": 4}
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config_file(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="no such file"):
        load_config_file(tmp_path / "missing.yaml")


def test_image_cache_defaults_to_auto():
    assert FinetuneConfig.build().image_cache == "auto"
    assert FinetuneConfig.build(image_cache="none").image_cache == "none"


def test_auto_image_cache_is_memory_under_the_budget_and_disk_over_it(monkeypatch):
    from edgexfer.train import data_cache

    sizes = dict(images=1000, input_size=96, feature_dim=1280, cache_images=True, cache_features=True)
    held = 1000 * (96 * 96 * 3 + 1280 * 4)
    plan = data_cache.plan_data_cache("auto", **sizes)
    assert (plan["images"], plan["features"], plan["memory_bytes_if_cached"]) == ("memory", "memory", held)
    monkeypatch.setattr(data_cache, "MEMORY_CACHE_BUDGET_BYTES", held - 1)
    plan = data_cache.plan_data_cache("auto", **sizes)
    assert (plan["images"], plan["features"], plan["budget_bytes"]) == ("disk", "disk", held - 1)
    assert data_cache.plan_data_cache("memory", **sizes)["images"] == "memory"  # explicit modes win
    none = data_cache.plan_data_cache("none", **sizes)
    assert (none["images"], none["features"]) == ("none", "disk")  # features are a cache by definition
    head_only = data_cache.plan_data_cache("disk", **{**sizes, "cache_images": False})
    assert (head_only["images"], head_only["features"]) == ("unused", "disk")
    with pytest.raises(ConfigError, match="allowed: auto, memory, disk, none"):
        data_cache.plan_data_cache("ram", **sizes)
