"""mmssl: multimodal self-supervised pretraining on the Hugging Face stack."""

from mmssl.errors import MmsslError

__version__ = "0.1.0"
__all__ = ["MmsslError", "__version__"]
