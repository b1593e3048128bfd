"""Recipes: built-ins, config-defined recipes, code-registered recipes; each trains on tiny data."""

from __future__ import annotations

import numpy as np
import pytest

from histoedge.training.config import ConfigError, TrainConfig, deep_merge, load_config, parse_override
from histoedge.training.recipes import Recipe, get_recipe, list_recipes, register_recipe
from histoedge.training.trainer import train_member

BUILT_IN = ["baseline", "class_weight", "focal", "ldam", "oversample", "seed_margin_bce"]
TINY = ["model.filters=[4, 8]", "model.block_dropout=[0.0, 0.2]", "model.dense_units=[8]",
        "training.batch_size=16", "augmentation.stain=0.0"]


def tiny_data(num_classes, n=36, size=32, seed=0):
    """Imbalanced, easy classes: the class sets the mean colour."""
    rng = np.random.default_rng(seed)
    probs = np.linspace(2.0, 1.0, num_classes)
    labels = rng.choice(num_classes, size=n, p=probs / probs.sum())
    labels[:num_classes] = np.arange(num_classes)  # every class present at least once
    base = (60 + 150 * labels / (num_classes - 1)).astype(int)[:, None, None, None]
    images = np.clip(base + rng.integers(-30, 30, (n, size, size, 3)), 0, 255).astype(np.uint8)
    return images, labels


def test_builtins_are_listed_and_follow_the_seed():
    config = load_config()
    assert set(BUILT_IN) <= set(list_recipes()) and list_recipes() == sorted(list_recipes())
    ldam = get_recipe("ldam", config)
    assert ldam.loss["name"] == "ldam" and ldam.uses_drw and ldam.drw_start_epoch(200) == 160
    assert get_recipe("class_weight", config).imbalance == "class_weight"
    oversample = get_recipe("oversample", config)
    assert (oversample.imbalance, oversample.oversample_method) == ("oversample", "smote")
    focal = get_recipe("focal", config)
    assert focal.loss == {"name": "focal", "alpha": 0.25, "gamma": 2.0} and not focal.uses_drw
    with pytest.raises(ConfigError, match="known recipes: baseline, class_weight"):
        get_recipe("smote", config)


def test_ensemble_members_differ_in_regulariser_and_a_config_recipe_can_undo_one():
    config = load_config()
    resolved = {name: get_recipe(name, config).resolve(config) for name in config.ensemble.members}
    packages = {name: (c.model.batch_norm, c.model.regularizer, c.model.head_dropout,
                       c.training.label_smoothing) for name, c in resolved.items()}
    assert len(set(packages.values())) == len(packages), packages
    assert resolved["ldam"].model.batch_norm and resolved["class_weight"].model.regularizer == "l2"
    assert resolved["focal"].training.label_smoothing == 0.1
    plain = load_config(overrides=["recipes.ldam_plain={base: ldam, regularisation: {batch_norm: false}}"])
    assert get_recipe("ldam_plain", plain).resolve(plain).model.batch_norm is False


@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("name", BUILT_IN)
def test_every_builtin_trains_one_epoch(tmp_path, name, num_classes):
    config = load_config(overrides=TINY, epochs=1, image_size=32)
    images, labels = tiny_data(num_classes)
    classes = [f"c{i}" for i in range(num_classes)]
    model = train_member(get_recipe(name, config), config, (images[:28], labels[:28]),
                         (images[28:], labels[28:]), classes, tmp_path, verbose=0)
    probs = model.predict(images[28:].astype("float32"), verbose=0)
    assert probs.shape == (8, num_classes)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert (tmp_path / "model.keras").is_file() and (tmp_path / "history.csv").is_file()


def test_config_defined_recipe_from_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "recipes:\n"
        "  wide_focal: {base: focal, loss: {name: focal, gamma: 3.0}, model: {filters: [6, 12]},\n"
        "               regularisation: {batch_norm: true, label_smoothing: 0.1}}\n"
        "  random_os: {base: oversample, oversample_method: random}\n"
        "  ldam_late: {base: ldam, drw: {start_epoch: 1}, loss: {scale: 2.0}}\n"
        "ensemble: {members: [ldam, wide_focal, class_weight]}\n")
    config = load_config(path, overrides=TINY[1:], epochs=2, image_size=32)
    assert "wide_focal" in list_recipes(config) and "wide_focal" not in list_recipes()
    recipe = get_recipe("wide_focal", config)
    assert recipe.loss == {"name": "focal", "alpha": 0.25, "gamma": 3.0}
    resolved = recipe.resolve(config)
    assert resolved.model.filters == [6, 12] and resolved.model.batch_norm is True
    assert resolved.training.label_smoothing == 0.1 and config.model.batch_norm is False
    assert get_recipe("random_os", config).oversample_method == "random"
    late = get_recipe("ldam_late", config)
    assert late.loss == {"name": "ldam", "max_margin": 0.5, "scale": 2.0}
    assert late.drw_start_epoch(10) == 1 and late.drw["beta"] == 0.9999
    images, labels = tiny_data(2)
    model = train_member(recipe, config, (images[:28], labels[:28]), (images[28:], labels[28:]),
                         ["a", "b"], tmp_path, verbose=0)
    assert sum("bn" in layer.name for layer in model.layers) == 3


def test_config_recipe_errors_and_replacing_the_loss():
    recipes = "recipes={typo: {base: focal, los: {}}, orphan: {base: nope}, ce: {base: focal, loss: {name: crossentropy}}}"
    # load_config resolves every recipe, so each mistake fails at load ...
    for bad, message in (("{typo: {base: focal, los: {}}}", "unknown key 'los'"),
                         ("{orphan: {base: nope}}", "unknown recipe 'nope' \\(base of 'orphan'\\)"),
                         ("{deep: {model: {filtrs: [1]}}}", "recipe 'deep'.*'model.filtrs'")):
        with pytest.raises(ConfigError, match=message):
            load_config(overrides=[f"recipes={bad}"])
    # ... and the registry still names it when given a config built without that check.
    config = TrainConfig.from_dict(deep_merge(TrainConfig().to_dict(), parse_override(recipes)))
    with pytest.raises(ConfigError, match="unknown key 'los'"):
        get_recipe("typo", config)
    with pytest.raises(ConfigError, match="unknown recipe 'nope' \\(base of 'orphan'\\)"):
        get_recipe("orphan", config)
    assert get_recipe("ce", config).loss == {"name": "crossentropy"}  # focal's alpha not carried over
    bad = TrainConfig.from_dict(deep_merge(TrainConfig().to_dict(),
                                           parse_override("recipes={deep: {model: {filtrs: [1]}}}")))
    with pytest.raises(ConfigError, match="recipe 'deep'.*'model.filtrs'"):
        get_recipe("deep", bad).resolve(bad)


def test_register_recipe_in_code_and_round_trip():
    @register_recipe
    def tiny_test_recipe():
        return Recipe(name="tiny_test_recipe", loss={"name": "focal", "gamma": 1.0},
                      imbalance="class_weight")

    config = load_config()
    assert "tiny_test_recipe" in list_recipes()
    recipe = get_recipe("tiny_test_recipe", config)
    assert Recipe.from_config(recipe.get_config()) == recipe
    with pytest.raises(ConfigError, match="imbalance must be one of"):
        Recipe(name="x", imbalance="smote")
