import random

import numpy as np

from mmssl.data.world import (
    FREE_DIAMETERS,
    captions,
    class_names,
    generate_scenes,
    hard_negatives,
    shape_names,
    world_columns,
)
from mmssl.config import WorldConfig


def test_seeded_and_held_out():
    cfg = WorldConfig(num_scenes=50, seed=3)
    assert generate_scenes(cfg) == generate_scenes(cfg)
    assert generate_scenes(cfg) != generate_scenes(WorldConfig(num_scenes=50, seed=4))
    assert generate_scenes(cfg, "eval") != generate_scenes(cfg, "train")[: len(generate_scenes(cfg, "eval"))]


def test_vocabulary_and_classes_follow_the_config():
    cfg = WorldConfig(num_scenes=200, num_colours=3, num_shapes=2)
    names = class_names(cfg)
    assert names == ["red circle", "red square", "green circle", "green square", "blue circle", "blue square"]
    words = {w for t in world_columns(cfg, "text")["text"] for w in t.split()}
    assert "yellow" not in words and "triangle" not in words
    assert {"red", "green", "blue", "circle", "square"} <= words


def test_paraphrases_share_meaning_and_negatives_change_it():
    cfg = WorldConfig(num_scenes=100, pair_fraction=1.0)
    rng = random.Random(0)
    for scene in generate_scenes(cfg)[:20]:
        caps = captions(scene)
        assert len(set(caps)) == len(caps) >= 4
        a, b = scene.first, scene.second
        for cap in caps:  # every paraphrase names both things
            assert a.colour in cap and b.shape in cap
        for neg in hard_negatives(scene, cfg, rng):
            assert neg not in caps
            assert set(neg.split()) <= set(" ".join(caps).split()) | {"a", "an", "below", "above", "to", "the", "left", "right", "of"}


def test_tables_have_the_documented_columns():
    cfg = WorldConfig(num_scenes=30, image_size=24)
    pairs = world_columns(cfg, "pairs")
    assert set(pairs) == {"anchor", "positive", "negative", "label", "meaning"} and len(pairs["anchor"]) == 30
    assert all(a != p for a, p in zip(pairs["anchor"], pairs["positive"]))
    images = world_columns(cfg, "image_text")
    assert images["image"][0].size == (24, 24) and images["image"][0].mode == "RGB"
    assert len(images["captions"][0]) == 5
    assert all(0 <= label < len(class_names(cfg)) for label in images["label"])
    # something is drawn in colour on the white background
    pixels = np.asarray(images["image"][0]).reshape(-1, 3)
    assert (pixels.min(1) < 200).sum() > 10


def test_image_only_table_labels_shapes_while_colour_position_and_size_vary():
    cfg = WorldConfig(num_scenes=300, num_colours=3, num_shapes=3, pair_fraction=0.0, image_size=32)
    cols = world_columns(cfg, "images")
    assert set(cols) == {"image", "label", "colour", "position", "size", "single"}
    assert shape_names(cfg) == ["circle", "square", "triangle"]
    scenes = generate_scenes(cfg)
    assert cols["label"] == [shape_names(cfg).index(s.first.shape) for s in scenes] and all(cols["single"])
    assert np.array_equal(np.asarray(cols["image"][5]), np.asarray(world_columns(cfg, "images")["image"][5]))  # seeded
    xs = np.array([p[0] for p in cols["position"]])
    sizes = np.array(cols["size"])
    for shape in range(3):  # each shape spans colours, places and sizes: no fixed template gives it away
        rows = np.array(cols["label"]) == shape
        assert len({c for c, keep in zip(cols["colour"], rows) if keep}) == 3
        assert xs[rows].min() < 0.3 and xs[rows].max() > 0.7 and len(np.unique(xs[rows].round(2))) > 30
        low, high = FREE_DIAMETERS
        spread = high - low
        assert low <= sizes[rows].min() < low + 0.2 * spread and high - 0.2 * spread < sizes[rows].max() <= high
    # the object lies whole inside the picture where the columns say
    image = np.asarray(cols["image"][0]).min(2) < 250
    x, y = cols["position"][0]
    rows_, cols_ = np.nonzero(image)
    assert abs(cols_.mean() / 32 - x) < 0.1 and abs(rows_.mean() / 32 - y) < 0.1
    assert image[0].sum() + image[-1].sum() + image[:, 0].sum() + image[:, -1].sum() <= 4


def test_two_object_scenes_are_labelled_by_the_first_and_flagged():
    cfg = WorldConfig(num_scenes=50, pair_fraction=1.0)
    cols = world_columns(cfg, "images", "eval")
    scenes = generate_scenes(cfg, "eval")
    assert not any(cols["single"]) and set(cols["position"]) == {None}
    assert cols["label"] == [shape_names(cfg).index(s.first.shape) for s in scenes]
