"""Settings validate themselves when built: a wrong value is refused naming its key and what is allowed."""

import pytest

from genreclf.config import FeaturizeSettings, ScoreSettings, TrainSettings, load_settings
from genreclf.errors import ConfigError


def test_the_shipped_configuration_loads():
    settings = load_settings()
    assert settings.train == TrainSettings() and settings.featurize == FeaturizeSettings()


@pytest.mark.parametrize("cls, values, message", [
    (FeaturizeSettings, {"files_per_task": 0}, "[featurize] files_per_task = 0 is not allowed: must be an integer >= 1"),
    (FeaturizeSettings, {"max_duration_s": "1h"}, "[featurize] max_duration_s = '1h' is not allowed"),
    (FeaturizeSettings, {"row_group_size_mb": 4096}, "[featurize] row_group_size_mb = 4096 is not allowed"),
    (ScoreSettings, {"batch_size": 0}, "[score] batch_size = 0 is not allowed: must be an integer >= 1"),
    (ScoreSettings, {"max_windows": -1}, "[score] max_windows = -1 is not allowed"),
    (TrainSettings, {"epochs": 0}, "[train] epochs = 0 is not allowed: must be an integer >= 1"),
    (TrainSettings, {"val_fraction": 1.0}, "[train] val_fraction = 1.0 is not allowed: must be a number in [0, 1)"),
    (TrainSettings, {"batch_size": True}, "[train] batch_size = True is not allowed"),
    (TrainSettings, {"precision": "fp8"}, "must be 'float32' or 'mixed_float16' or 'mixed_bfloat16'"),
    (TrainSettings, {"reader": "spark"}, "[train] reader = 'spark' is not allowed: must be 'arrow' or 'petastorm'"),
])
def test_a_wrong_value_names_its_key(cls, values, message):
    with pytest.raises(ConfigError) as e:
        cls(**values)
    assert message in str(e.value)


def test_a_wrong_value_in_a_config_file_is_refused_on_load(tmp_path):
    conf = tmp_path / "bad.toml"
    conf.write_text('[featurize]\nfiles_per_task = "many"\n')
    with pytest.raises(ConfigError, match=r"\[featurize\] files_per_task = 'many' is not allowed"):
        load_settings(str(conf))
