import pytest

from edgexfer.config import FinetuneConfig, load_config_file
from edgexfer.errors import ConfigError


def test_defaults_are_valid():
    config = FinetuneConfig.build()
    assert config.backbone == "efficientnet_lite0" and config.feature_cache


@pytest.mark.parametrize("values, message", [
    ({"epochs": 0}, "epochs=0 is invalid"),
    ({"batch_size": -4}, "batch_size=-4"),
    ({"strategy": "horovod"}, "strategy='horovod'"),
    ({"learning_rate": 0}, "learning_rate=0"),
    ({"epocs": 3}, "did you mean 'epochs'"),
    ({"fine_tune_epochs": 2, "unfreeze_layers": 0}, "needs unfreeze_layers > 0"),
    ({"augment": {"crop_zoom": 0.9}}, "augment.crop_zoom=0.9"),
])
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
