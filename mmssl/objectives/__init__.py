"""Objectives: one module per method, each registering itself with ``@register_objective`` (found by
`mmssl.registry`, which imports every module of this package)."""
