"""Text views as extra training text for MLM/CLM (`objective.text_views`) and extra captions for image-text
objectives (`objective.caption_views`): counterfactual data augmentation beyond SimCSE."""

import datasets

from mmssl.data.text_views.config import ViewConfig
from mmssl.objectives.image_text import with_caption_views
from mmssl.objectives.language_modeling import with_text_views

CDA = [ViewConfig(type="counterfactual")]


def test_language_model_text_gets_each_changed_texts_view_beside_it():
    ds = datasets.Dataset.from_dict({"text": ["He is a king.", "A red square.", None, "Her sister sang."],
                                     "other": [1, 2, 3, 4]})
    out = with_text_views(ds, CDA, seed=0)
    assert out["text"][:4] == ds["text"]  # the originals, untouched and in order
    assert out["text"][4:] == ["She is a queen.", "His brother sang."]  # only texts the view changed
    assert with_text_views(ds, [], seed=0) is ds


def test_caption_views_join_their_own_images_captions():
    captions = [["a man rides", "a horse"], ["a blue circle"], ["the woman and her son"]]
    out = with_caption_views(captions, CDA, seed=0)
    assert out == [["a man rides", "a horse", "a woman rides"], ["a blue circle"],
                   ["the woman and her son", "the man and his daughter"]]
