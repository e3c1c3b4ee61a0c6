"""Code that comes with a model or tokenizer folder is never run unless a recipe key allows it.

Every mmssl call into transformers / sentence-transformers passes ``trust_remote_code`` explicitly (False
unless the recipe says so), and `refuse_prompts` makes transformers refuse instead of asking "[y/N]" when a
library underneath (open_clip's Hugging Face text tower, nlpaug) passes nothing.
"""

from __future__ import annotations

from mmssl.errors import MmsslError


def refuse_prompts() -> None:
    """transformers asks on stdin whether to run custom code when the caller passes no trust_remote_code;
    with the prompt's timeout at 0 (as transformers' own CI sets it) it raises instead."""
    import transformers.dynamic_module_utils as dynamic

    dynamic.TIME_OUT_REMOTE_CODE = 0


def is_custom_code_error(exc: BaseException) -> bool:
    text = str(exc)
    return "trust_remote_code" in text or "custom code" in text


def custom_code_error(key: str, path: str, allow_key: str | None) -> MmsslError:
    allow = (f", or set {allow_key}=true if you have read that code and trust it (the model card will say so)"
             if allow_key else "")
    return MmsslError(f"{key} {path!r} comes with custom code (auto_map in its config); mmssl never runs code that "
                      f"comes with a model or data: use a model whose architecture transformers knows{allow}")
