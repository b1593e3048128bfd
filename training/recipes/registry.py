"""Recipe registry: built-ins, code-registered recipes and recipes defined in the config.

A config recipe is ``recipes: {NAME: {base: BASE, **overrides}}``; it starts from BASE (a built-in,
a registered or another config recipe; default: a plain cross-entropy recipe) and deep-merges the
overrides. A loss override naming a different loss replaces the base loss instead of merging.
"""

from __future__ import annotations

from typing import Any, Callable

from histoedge.training.config import ConfigError, TrainConfig, deep_merge
from histoedge.training.recipes.base import Recipe

_FACTORIES: dict[str, Callable[[], Recipe]] = {}


def register_recipe(recipe_cls_or_factory):
    """Register a Recipe subclass (built with no arguments) or a zero-argument factory; usable as
    a decorator. The recipe is registered under its ``name``.

    Example::

        @register_recipe
        def wide_focal():
            return Recipe(name="wide_focal", loss={"name": "focal", "gamma": 3.0})
    """
    factory = recipe_cls_or_factory
    recipe = factory()
    if not isinstance(recipe, Recipe):
        raise TypeError(f"{factory!r} must build a Recipe, got {type(recipe).__name__}")
    _FACTORIES[recipe.name] = factory
    return recipe_cls_or_factory


def list_recipes(config: TrainConfig | None = None) -> list[str]:
    """Names of registered recipes plus those defined in ``config.recipes``."""
    names = set(_FACTORIES)
    if config is not None:
        names |= set(config.recipes)
    return sorted(names)


def get_recipe(name: str, config: TrainConfig) -> Recipe:
    """The recipe called ``name``; config-defined recipes take precedence over registered ones."""
    return _resolve(name, config, chain=())


def _resolve(name: str, config: TrainConfig, chain: tuple[str, ...]) -> Recipe:
    user = config.recipes if config is not None else {}
    if name in user and name not in chain:
        spec = dict(user[name] or {})
        base_name = spec.pop("base", None)
        if base_name is None:
            base = Recipe(name=name).get_config()
        else:
            if not isinstance(base_name, str):
                raise ConfigError(f"recipe '{name}': base must be a recipe name")
            base = _resolve(base_name, config, chain + (name,)).get_config()
        return Recipe.from_config(_merge_recipe(base, spec, name))
    if name in _FACTORIES:
        return _FACTORIES[name]()
    known = list_recipes(config)
    where = f" (base of '{chain[-1]}')" if chain else ""
    raise ConfigError(f"unknown recipe '{name}'{where}; known recipes: {', '.join(known)}")


def _merge_recipe(base: dict[str, Any], spec: dict[str, Any], name: str) -> dict[str, Any]:
    if "name" in spec and spec["name"] != name:
        raise ConfigError(f"recipe '{name}' sets name '{spec['name']}'; the key is its name")
    spec = {k: v for k, v in spec.items() if k != "name"}
    loss = spec.get("loss")
    if isinstance(loss, dict) and loss.get("name", base["loss"]["name"]) != base["loss"]["name"]:
        base = {**base, "loss": {}}
    merged = deep_merge(base, spec)
    merged["name"] = name
    return merged
