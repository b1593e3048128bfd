"""Config precedence (defaults < YAML < --set < cli), unknown keys, YAML round trip."""

from __future__ import annotations

import pytest
import yaml

from histoedge.training.config import ConfigError, TrainConfig, load_config, parse_override


def test_defaults_follow_the_seed():
    config = load_config()
    assert config.seed == 0 and config.recipe == "class_weight" and config.recipes == {}
    assert config.data.image_size == 96 and config.data.label == "binary"
    assert config.data.split.train == 0.7 and config.data.split.test == 0.15
    assert config.optimizer.schedule == "inverse_time" and config.optimizer.decay_steps == 1000
    assert config.optimizer.clipnorm is None and config.optimizer.clipvalue is None
    assert config.training.epochs == 30 and config.training.batch_size == 64
    assert config.training.early_stopping.patience == 8
    assert config.training.early_stopping.restore_best_weights is True
    assert config.training.reduce_on_plateau.factor == 0.5
    assert config.ensemble.members == ["ldam", "class_weight", "oversample", "focal"]
    assert config.ensemble.target_sensitivity == 0.95 and config.evaluation.bootstrap == 1000
    assert config.model.filters == [32, 64, 128, 256, 256]
    assert config.augmentation.preset == "auto" and config.augmentation.rotation is None
    assert config.augmentation.resolved("histology").rotation == 20.0
    assert config.ensemble.threshold_rule == "patient_lower_bound" and config.ensemble.cv_folds == 0
    assert config.evaluation.patient_aggregation == "mean"


def test_precedence_yaml_then_set_then_cli(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "seed": 3,
        "training": {"epochs": 4, "batch_size": 8, "early_stopping": {"patience": 2}},
        "optimizer": {"learning_rate": 0.01},
        "data": {"image_size": 48},
    }))
    config = load_config(path, overrides=["training.epochs=6", "optimizer.clipnorm=1.0",
                                          "model.filters=[8, 16]", "data.magnification=40X"],
                         epochs=9, image_size=None, batch_size=None, seed=None, recipe="focal")
    assert config.training.epochs == 9                    # cli beats --set beats YAML
    assert config.training.batch_size == 8                # YAML kept (cli None = not given)
    assert config.training.early_stopping.patience == 2
    assert config.training.early_stopping.monitor == "val_loss"  # nested defaults survive merges
    assert config.optimizer.learning_rate == 0.01 and config.optimizer.clipnorm == 1.0
    assert config.model.filters == [8, 16] and config.data.image_size == 48
    assert config.data.magnification == "40X" and config.seed == 3 and config.recipe == "focal"


@pytest.mark.parametrize("yaml_text, overrides, key", [
    ("trainig: {epochs: 3}", [], "'trainig'"),
    ("training: {epoch: 3}", [], "'training.epoch'"),
    ("", ["optimizer.lr=0.1"], "'optimizer.lr'"),
    ("", ["training.early_stopping.patiense=1"], "'training.early_stopping.patiense'"),
    ("augmentation: {rotate: 5}", [], "'augmentation.rotate'"),
    ("", ["training=3"], "'training' is a section"),
])
def test_unknown_keys_name_the_key_and_the_valid_ones(tmp_path, yaml_text, overrides, key):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides=overrides)
    assert key in str(info.value)
    if "section" not in key:
        assert "valid keys here:" in str(info.value)


def test_bad_overrides_and_cli_names():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("training.epochs")
    assert parse_override("a.b=[1, 2]") == {"a": {"b": [1, 2]}}
    assert parse_override("a=null") == {"a": None}
    with pytest.raises(ConfigError, match="unknown option 'lr'"):
        load_config(lr=0.1)


def test_yaml_round_trip(tmp_path):
    config = load_config(overrides=["model.batch_norm=true", "augmentation.stain=0.0",
                                    "recipes={wide: {base: focal, loss: {name: focal, gamma: 3.0}}}"])
    text = config.to_yaml()
    path = tmp_path / "resolved.yaml"
    path.write_text(text)
    again = load_config(path)
    assert again == config
    assert TrainConfig.from_dict(yaml.safe_load(text)).to_dict() == config.to_dict()
    assert again.recipes["wide"]["loss"]["gamma"] == 3.0 and again.model.batch_norm is True


@pytest.mark.parametrize("override, message", [
    ("data.label=subtypes", "data.label must be"),
    ("training.epochs=0", "training.epochs"),
    ("training.label_smoothing=1.5", "label_smoothing"),
    ("optimizer.schedule=step", "optimizer.schedule must be"),
    ("ensemble.method=voting", "ensemble.method must be"),
    ("training.onset.min_auc=0.5", "training.onset.min_auc"),
    ("training.onset.max_wait=-1", "training.onset.max_wait"),
    ("training.early_stopping.monitor=val_f1", "training.early_stopping.monitor"),
])
def test_bad_values_fail_at_load_time(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


@pytest.mark.parametrize("override, message", [
    ("model.regularizer=l3", "model.regularizer must be null, l1, l2 or l1_l2, got 'l3'"),
    ("model.first_padding=bogus", "model.first_padding must be valid or same, got 'bogus'"),
    ("training.early_stopping.patience=-5", "training.early_stopping.patience must be >= 0, got -5"),
    ("data.split={train: 0.8, val: 0.2, test: 0.2}",
     "data.split.train, data.split.val and data.split.test must sum to 1, got 1.2"),
    ("training.epochs=3.5", "training.epochs must be an integer, got 3.5"),
    ("model.filters=[32, 0]", "each item of model.filters must be >= 1, got 0"),
    ("optimizer.learning_rate=fast", "optimizer.learning_rate must be a number, got 'fast'"),
    ("model.batch_norm=maybe", "model.batch_norm must be true or false, got 'maybe'"),
    ("training.reduce_on_plateau.monitor=val_f1", "training.reduce_on_plateau.monitor must be val_loss, val_accuracy, val_auc, loss, accuracy or auc"),
    ("ensemble.stacking_weights=positive", "ensemble.stacking_weights must be non_negative or free, got 'positive'"),
])
def test_every_value_is_checked_at_load_with_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    text = str(info.value)
    assert message in text and "\n" not in text


def test_bad_value_in_a_config_recipe_fails_at_load():
    with pytest.raises(ConfigError, match="recipe 'wide'.*model.first_padding must be valid or same"):
        load_config(overrides=["recipes={wide: {base: focal, model: {first_padding: bogus}}}",
                               "ensemble.members=[wide, ldam]"])
    with pytest.raises(ConfigError, match="unknown recipe 'nope'"):
        load_config(overrides=["ensemble.members=[ldam, nope]"])


def test_cli_fails_at_load_before_touching_the_data(tmp_path, capsys):
    import histoedge.cli

    code = histoedge.cli.main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run"),
                               "--set", "model.regularizer=l3"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == ("histoedge train: error: model.regularizer must be null, l1, l2 or l1_l2, got 'l3'")
    assert not (tmp_path / "run").exists()


def test_train_flags_come_from_one_table(capsys):
    import histoedge.cli
    from histoedge.training.config import CLI_FLAGS

    with pytest.raises(SystemExit):
        histoedge.cli.main(["train", "--help"])
    help_text = capsys.readouterr().out
    defaults = TrainConfig().to_dict()
    for name, flag in CLI_FLAGS.items():
        assert f"--{name.replace('_', '-')}" in help_text
        value = defaults
        for part in flag.key:
            value = value[part]
        assert flag.default == value, name
    args = histoedge.cli.build_parser().parse_args(
        ["train", "--data", "d", "--out", "o", "--epochs", "4", "--label", "subtype", "--image-size", "32"])
    config = load_config(None, None, **{name: getattr(args, name) for name in CLI_FLAGS})
    assert (config.training.epochs, config.data.label, config.data.image_size) == (4, "subtype", 32)
