"""Settings validate themselves when built: a wrong value is refused naming its key and what is allowed."""

import re

import pytest

from genreclf.config import (
    EvaluateSettings,
    FeaturizeSettings,
    ScoreSettings,
    StorageSettings,
    TrainSettings,
    load_settings,
)
from genreclf.errors import ConfigError

pytestmark = pytest.mark.pure  # no Spark, no training: pytest -m pure


def test_settings_load_in_layers_each_listing_only_its_changes(tmp_path, monkeypatch):
    """defaults <- conf/genreclf.toml <- --conf: each layer changes only the keys it lists."""
    import dataclasses

    from genreclf import config
    from genreclf.config import layers

    site, preset = tmp_path / "site.toml", tmp_path / "preset.toml"
    site.write_text('[train]\nepochs = 7\n[score]\nbatch_size = 32\n[labels]\ngenres = ["a", "b"]\n')
    preset.write_text("[train]\npatience = 2\n[score]\nbatch_size = 16\n")
    monkeypatch.setattr(layers, "DEFAULT_CONF", str(site))
    layered = load_settings(str(preset))
    assert layered.train == dataclasses.replace(TrainSettings(), epochs=7, patience=2)
    assert layered.score == dataclasses.replace(ScoreSettings(), batch_size=16)
    assert layered.featurize == FeaturizeSettings() and layered.recipe == config.Recipe()
    assert layered.genres == ("a", "b")
    assert load_settings().train == dataclasses.replace(TrainSettings(), epochs=7)
    assert load_settings(str(site)) == load_settings()  # the site file named again is one layer
    monkeypatch.setattr(layers, "DEFAULT_CONF", str(tmp_path / "absent.toml"))
    assert load_settings() == config.Settings()


@pytest.mark.parametrize("preset", ["quality.toml", "gpu.toml", "musicnn.toml", "musicnn-fusion.toml"])
def test_a_shipped_preset_lists_only_what_it_changes(preset):
    import os
    import tomllib

    from genreclf.config import DEFAULT_CONF, SECTIONS, Settings

    path = os.path.join(os.path.dirname(DEFAULT_CONF), preset)
    data = tomllib.loads(open(path).read())
    base = data.pop("base", None)  # a preset on another: what it changes is relative to that one
    defaults, loaded = (load_settings(os.path.join(os.path.dirname(path), base)) if base else Settings(),
                        load_settings(path))
    assert data
    for section, table in data.items():
        for key, value in table.items():
            assert value != getattr(getattr(defaults, section), key), f"{preset} restates [{section}] {key}"
            assert getattr(getattr(loaded, section), key) == value
    assert set(data) <= set(SECTIONS)


def test_a_preset_on_a_base_file_changes_only_what_it_lists(tmp_path):
    """``base = FILE``: that file's settings first (relative to this file), then this file's; a loop is refused."""
    import dataclasses

    (tmp_path / "one.toml").write_text('[train]\nepochs = 7\npatience = 2\n')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "two.toml").write_text('base = "../one.toml"\n[train]\npatience = 3\n')
    assert load_settings(str(tmp_path / "sub" / "two.toml")).train == dataclasses.replace(
        load_settings().train, epochs=7, patience=3)
    (tmp_path / "one.toml").write_text('base = "sub/two.toml"\n')
    with pytest.raises(ConfigError, match="base files form a loop"):
        load_settings(str(tmp_path / "sub" / "two.toml"))
    (tmp_path / "three.toml").write_text("base = 3\n")
    with pytest.raises(ConfigError, match="base = 3 must be the path of a settings file"):
        load_settings(str(tmp_path / "three.toml"))


def test_the_recommended_preset_is_the_fast_one_with_a_second_backbone():
    import os

    from genreclf.config import DEFAULT_CONF

    fast, best = (load_settings(os.path.join(os.path.dirname(DEFAULT_CONF), n))
                  for n in ("musicnn.toml", "musicnn-fusion.toml"))
    assert best.recipe == fast.recipe and best.train.network == fast.train.network == "musicnn"
    assert fast.train.names("backbones") == ("musicnn-msd",)
    assert best.train.names("backbones") == ("musicnn-msd", "musicnn-mtt")


def test_every_setting_has_its_meaning_beside_its_default():
    """``python -m genreclf.config`` prints each key with the comment beside its default."""
    import dataclasses

    from genreclf.cli import print_settings
    from genreclf.config import SECTIONS, describe, field_docs

    for cls in SECTIONS.values():
        assert set(field_docs(cls)) == {f.name for f in dataclasses.fields(cls)}, cls.__name__
    import tomllib

    settings = load_settings()
    data = tomllib.loads(describe(settings))  # a complete settings file: it loads back to the same settings
    assert {name: cls(**data[name]) for name, cls in SECTIONS.items()} == {n: getattr(settings, n) for n in SECTIONS}
    assert tuple(data["labels"]["genres"]) == settings.genres
    assert print_settings([]) == 0


def test_printing_the_settings_into_a_pipe_that_closes_early_is_quiet():
    """``python -m genreclf.config | head -1`` when head has gone before the first line is written: the reader
    closes its end at once, so the write fails for sure; no traceback, exit 0."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.Popen([sys.executable, "-m", "genreclf.config"], cwd=root, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=120) == 0 and not err.strip(), err


@pytest.mark.parametrize("cls, values, message", [
    (FeaturizeSettings, {"files_per_task": 0}, "[featurize] files_per_task = 0 is not allowed: must be an integer in "
                                               "[1, 100000] (files; the bound keeps memory in check"),
    (FeaturizeSettings, {"files_per_task": 10**6}, "[featurize] files_per_task = 1000000 is not allowed"),
    (FeaturizeSettings, {"max_duration_s": "1h"}, "[featurize] max_duration_s = '1h' is not allowed"),
    (FeaturizeSettings, {"row_group_size_mb": 4096}, "[featurize] row_group_size_mb = 4096 is not allowed"),
    (ScoreSettings, {"batch_size": 0}, "[score] batch_size = 0 is not allowed: must be an integer in [1, 2048]"),
    (ScoreSettings, {"batch_size": 10**12}, "[score] batch_size = 1000000000000 is not allowed: must be an integer in "
                                            "[1, 2048] (windows; the bound keeps memory in check: see genreclf/config/sections.py)"),
    (EvaluateSettings, {"batch_size": 4096}, "[evaluate] batch_size = 4096 is not allowed: must be an integer in [1, 2048]"),
    (TrainSettings, {"batch_size": 8192}, "[train] batch_size = 8192 is not allowed: must be an integer in [1, 4096]"),
    (TrainSettings, {"shuffle_buffer": 10**6}, "[train] shuffle_buffer = 1000000 is not allowed: must be an integer in "
                                               "[1, 65536]"),
    (ScoreSettings, {"max_windows": -1}, "[score] max_windows = -1 is not allowed"),
    (ScoreSettings, {"precision": "fp8"}, "[score] precision = 'fp8' is not allowed: must be 'auto' or 'float32' or"),
    (ScoreSettings, {"decode_threads": -1}, "[score] decode_threads = -1 is not allowed: must be an integer in [0, 16]"),
    (ScoreSettings, {"decode_threads": 64}, "[score] decode_threads = 64 is not allowed: must be an integer in [0, 16]"),
    (TrainSettings, {"epochs": 0}, "[train] epochs = 0 is not allowed: must be an integer >= 1"),
    (TrainSettings, {"val_fraction": 1.0}, "[train] val_fraction = 1.0 is not allowed: must be a number in [0, 1)"),
    (TrainSettings, {"batch_size": True}, "[train] batch_size = True is not allowed"),
    (TrainSettings, {"precision": "fp8"}, "must be 'auto' or 'float32' or 'mixed_float16' or 'mixed_bfloat16'"),
    (TrainSettings, {"devices": -1}, "[train] devices = -1 is not allowed: must be an integer in [0, 64] (0 = every GPU)"),
    (TrainSettings, {"reader": "spark"}, "[train] reader = 'spark' is not allowed: must be 'arrow' or 'petastorm'"),
    (StorageSettings, {"endpoint_url": "minio:9000"}, "[storage] endpoint_url = 'minio:9000' is not allowed: must be a URL"),
    (StorageSettings, {"retries": -1}, "[storage] retries = -1 is not allowed: must be an integer in [0, 20]"),
    (StorageSettings, {"read_ahead_kb": 0}, "[storage] read_ahead_kb = 0 is not allowed"),
    (FeaturizeSettings, {"max_duration_s": float("inf")}, "[featurize] max_duration_s = inf is not allowed: must be a "
                                                          "number of seconds in (0, 14400]"),
    (FeaturizeSettings, {"max_duration_s": float("nan")}, "[featurize] max_duration_s = nan is not allowed"),
    (TrainSettings, {"reader_workers": 10**6}, "[train] reader_workers = 1000000 is not allowed: must be an integer in "
                                               "[0, 32]"),
    (TrainSettings, {"backbones": "musicnn-msd,openl3"}, "[train] backbones = 'musicnn-msd,openl3' is not allowed: must "
                                                        "be distinct comma-separated names among musicnn-msd, musicnn-mtt"),
    (TrainSettings, {"backbones": "vgg-mtt,vgg-mtt"}, "[train] backbones = 'vgg-mtt,vgg-mtt' is not allowed"),
    (TrainSettings, {"head_layers": ""}, "[train] head_layers = '' is not allowed: must be distinct comma-separated "
                                         "names among penultimate, midend, tags"),
    (TrainSettings, {"head_c": 0}, "[train] head_c = 0 is not allowed: must be a number > 0"),
    (TrainSettings, {"fusion": "stack"}, "[train] fusion = 'stack' is not allowed: must be 'concat' or 'late'"),
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


@pytest.mark.parametrize("values, message", [
    ({"magnitude": "sqrt"}, "[recipe] magnitude = 'sqrt' is not allowed: must be 'linear' or 'log' or 'db'"),
    ({"sample_rate": 0}, "[recipe] sample_rate = 0 is not allowed: must be an integer in [1000, 384000] (Hz)"),
    ({"sample_rate": 22050.0}, "[recipe] sample_rate = 22050.0 is not allowed"),
    ({"n_fft": 8}, "[recipe] n_fft = 8 is not allowed"),
    ({"window": 512}, "[recipe] window = 512 is not allowed: must be an integer of samples >= n_fft (1024)"),
    ({"hop": 0}, "[recipe] hop = 0 is not allowed"),
    ({"min_window_fraction": 0}, "[recipe] min_window_fraction = 0 is not allowed: must be a number in (0, 1]"),
    ({"frames": 200}, "[recipe] frames = 200 is not allowed: must be an integer in [4, window // stft_hop + 1 = 130]"),
    ({"frames": 3}, "[recipe] frames = 3 is not allowed"),
    ({"window_function": "hamming"}, "[recipe] window_function = 'hamming' is not allowed: must be 'hann-symmetric'"),
    ({"log_scale": 0.0}, "[recipe] log_scale = 0.0 is not allowed: must be a number > 0"),
    ({"dtype": "int8"}, "[recipe] dtype = 'int8' is not allowed: must be 'float16' or 'float32'"),
])
def test_a_wrong_recipe_names_its_key_and_what_is_allowed(values, message):
    from genreclf.config import Recipe

    with pytest.raises(ConfigError) as e:
        Recipe(**values)
    assert message in str(e.value)


def test_an_impossible_recipe_is_refused_before_spark_starts(tmp_path, capsys):
    """The job exits 2 at settings load, naming the key, instead of turning every file into an error row."""
    import time

    from jobs.featurize import main

    conf = tmp_path / "bad.toml"
    conf.write_text('[recipe]\nframes = 500\n')
    started = time.time()
    rc = main(["--input", str(tmp_path), "--output", str(tmp_path / "out"), "--conf", str(conf)])
    assert rc == 2 and "[recipe] frames = 500 is not allowed" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and time.time() - started < 10  # no Spark session was started



def test_the_quality_preset_is_another_recipe():
    import os

    from genreclf.config import DEFAULT_CONF, Recipe

    preset = load_settings(os.path.join(os.path.dirname(DEFAULT_CONF), "quality.toml"))
    assert preset.recipe != Recipe() and preset.recipe.magnitude != "linear"
    assert preset.train.calibration != "none"


@pytest.mark.parametrize("job", ["featurize", "score", "train"])
def test_an_output_that_cannot_be_written_is_refused_before_spark_starts(tmp_path, capsys, job):
    """Was a 150-500 line traceback, some only after Spark had started working."""
    import importlib
    import time

    main = importlib.import_module(f"jobs.{job}").main
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = str(blocker / "out")
    args = {"featurize": ["--input", str(tmp_path), "--output", out],
            "score": ["--input", str(tmp_path), "--model", str(tmp_path), "--output", out],
            "train": ["--features", str(tmp_path), "--model", out]}[job]
    started = time.time()
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2 and f"{out} cannot be created: {blocker} is a file, not a directory" in err
    assert "Traceback" not in err and time.time() - started < 10


def test_every_train_setting_has_its_flag_and_no_job_argument_shares_a_settings_name():
    """Was: a [train] setting named ``model`` took train's --model (the bundle path) as its value.
    Each setting's flag sets that setting alone, and its help is the setting's comment in config."""
    from genreclf.cli import setting_values
    from genreclf.config import TrainSettings, field_docs
    from jobs.train import TRAIN_KEYS, parser

    flags = {option: a for a in parser()._actions for option in a.option_strings}
    for key in TRAIN_KEYS:
        flag = flags[f"--{key.replace('_', '-')}"]
        assert flag.dest == f"setting:train:{key}" and flag.help.startswith(field_docs(TrainSettings)[key]), key
    args = parser().parse_args(["--features", "f", "--model", "m", "--batch-size", "7", "--no-calibration"])
    assert (args.features, args.model) == ("f", "m")
    assert setting_values(args) == {"train": {"batch_size": 7, "calibration": "none"}}


@pytest.mark.parametrize("job,where", [("featurize", "input"), ("featurize", "output"), ("featurize", "catalogue"),
                                       ("score", "model"), ("score", "output"), ("train", "features")])
def test_a_credential_inside_a_location_is_refused_and_never_printed(tmp_path, capsys, job, where):
    """s3://KEY:SECRET@bucket/... ended in a traceback whose last line printed the secret. Now the
    run is refused in one line naming the credential variables, and the secret is in nothing it
    printed, logged or wrote (every file under the run's directory read back)."""
    import importlib

    main = importlib.import_module(f"jobs.{job}").main
    secret = "s3cr3t-planted-4711"
    url = f"s3://AKIAEXAMPLE:{secret}@bucket/x"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "cat.csv").write_text(f"path,label\n{url}/a.mp3,rock\n")
    local_in, local_out = str(tmp_path / "in"), str(tmp_path / "o")
    args = {("featurize", "input"): ["--input", url, "--output", local_out],
            ("featurize", "output"): ["--input", local_in, "--output", url],
            ("featurize", "catalogue"): ["--input", str(tmp_path / "in" / "cat.csv"), "--output", local_out],
            ("score", "model"): ["--input", local_in, "--model", url, "--output", local_out],
            ("score", "output"): ["--input", local_in, "--model", local_in, "--output", url],
            ("train", "features"): ["--features", url, "--model", local_out]}[job, where]
    rc = main(args)
    out, err = capsys.readouterr()
    assert rc == 2 and re.search(r"s3://\*\*\*@bucket/x\S* has a credential inside it", err), err
    assert "AWS_SECRET_ACCESS_KEY" in err
    assert secret not in out + err and "Traceback" not in err
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "cat.csv"]
    assert not any(secret.encode() in p.read_bytes() for p in written), written
