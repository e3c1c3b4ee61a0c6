"""Objectives: one module per method, each registering itself with ``@register_objective`` (found by
`mmssl.registry`, which imports every module of this package), plus the modules that several methods build on."""

# modules that register no method: the trainer's contract and the bases methods subclass
SHARED_MODULES = frozenset({"base", "image_ssl", "image_text", "combined", "text"})
