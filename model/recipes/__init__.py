"""One folder per recipe: ``<name>/config.py`` registers the config and its builder
(``lavla.model.registry.register_recipe``), ``<name>/policy.py`` holds the ``lavla.model.recipe.Recipe``."""
