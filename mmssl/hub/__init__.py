"""Publishing to the Hugging Face Hub; everything that talks to the Hub is here.

* `cards`: model and dataset cards from the templates in ``model_cards/``;
* `retries`: retries of transient failures with backoff, error messages without the token;
* `push`: `push_model` (an output folder) and `push_dataset` (a mined dataset), each in one commit.
"""

from mmssl.hub.cards import card_templates, model_output, render_card, render_dataset_card
from mmssl.hub.push import PushResult, check_repo_id, push_dataset, push_model
from mmssl.hub.retries import default_backoff, with_retries

__all__ = ["PushResult", "card_templates", "check_repo_id", "default_backoff", "model_output", "push_dataset",
           "push_model", "render_card", "render_dataset_card", "with_retries"]
