"""nn.Modules only (no distributed code). Recipes live in ``model.recipes``; ``model.factory.build_model``
turns a ``ModelConfig`` + ``DataConfig`` into the module the trainer wraps in one DeepSpeed engine.

ZeRO-3 rules every module here follows: a parameter is only read inside the forward of the module
that owns it, and every submodule runs on every step whatever the batch holds (mask, never skip).
"""
