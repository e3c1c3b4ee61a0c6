"""Built-in objectives; importing this package registers them."""

from mmssl.objectives import language_modeling  # noqa: F401
