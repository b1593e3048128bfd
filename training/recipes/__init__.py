"""Training recipes by name: ``ldam``, ``class_weight``, ``oversample``, ``focal``, ``baseline``,
plus any defined under ``recipes:`` in the config or registered in code. Import-light.

Example::

    from histoedge.training.recipes import get_recipe, list_recipes
    recipe = get_recipe("wide_focal", config)   # config.recipes["wide_focal"] = {base: focal, ...}
"""

from __future__ import annotations

from histoedge.training.recipes.base import Recipe
from histoedge.training.recipes.registry import get_recipe, list_recipes, register_recipe
from histoedge.training.recipes import builtin as _builtin  # noqa: F401  (registers the built-ins)

__all__ = ["Recipe", "get_recipe", "list_recipes", "register_recipe"]
