"""Built-in objectives; importing this package registers them."""

from mmssl.objectives import language_modeling  # noqa: F401
from mmssl.objectives import contrastive  # noqa: F401
from mmssl.objectives import clip  # noqa: F401
