"""Compositional hard-negative captions (`mmssl.data.caption_negatives`) on every caption the world can produce:
they differ from the caption, swaps keep its words, and none means the same scene (the world's meaning keys)."""

from __future__ import annotations

import itertools
import random
import re
from collections import Counter

import pytest

from mmssl.data import world
from mmssl.data.caption_negatives import KINDS, caption_negatives, head_nouns, sample_negatives


def all_scenes(colours: int = 3, shapes: int = 3) -> list[world.Scene]:
    things = [world.Thing(c, s, size) for (c, _), s, size in
              itertools.product(world.COLOURS[:colours], world.SHAPES[:shapes], world.SIZES)]
    singles = [world.Scene(first=t, position=p) for t in things for p in world.POSITIONS]
    pairs = [world.Scene(first=a, second=b, relation=r) for a, b in itertools.permutations(things, 2)
             if (a.colour, a.shape) != (b.colour, b.shape) for r in world.RELATIONS]
    return singles + pairs


SCENES = all_scenes()
MEANING = {caption: scene.meaning for scene in SCENES for caption in world.captions(scene)}
NOUNS = world.SHAPES[:3]


def words(text: str) -> Counter:
    return Counter("a" if w == "an" else w for w in re.findall(r"\w+", text.lower()))


def test_world_negatives_differ_keep_the_words_and_never_mean_the_same_scene():
    made = Counter()
    for caption, meaning in MEANING.items():
        for kind in KINDS:
            for negative in caption_negatives(caption, [kind], NOUNS):
                made[kind] += 1
                assert negative != caption
                assert MEANING.get(negative) != meaning, (caption, kind, negative)  # never a paraphrase
                if kind in ("objects", "attributes"):
                    assert words(negative) == words(caption), (caption, negative)  # the same words, moved
                elif kind == "noun":
                    assert sum((words(caption) - words(negative)).values()) == 1  # one word replaced
    # every kind applies to the world's captions, and swaps reach the relation captions
    assert all(made[k] > 100 for k in KINDS), made
    relation_captions = [c for c, m in MEANING.items() if any(r in m for r in world.RELATIONS)]
    unswappable = [c for c in relation_captions if not caption_negatives(c, ["objects"])]
    # only captions whose two phrases read the same ("the circle above the circle"): a swap changes nothing
    rels = "|".join(world.RELATIONS)
    assert all(re.search(rf"the (\w+) ({rels}) the \1$", c) for c in unswappable), unswappable[:3]
    assert len(unswappable) < 0.15 * len(relation_captions)


def test_swapped_captions_are_world_captions_of_another_scene():
    caption = "a red circle to the left of a blue square"
    negatives = caption_negatives(caption, ["relation", "objects", "attributes"])
    assert negatives == ["a red circle to the right of a blue square", "a blue square to the left of a red circle",
                         "a blue circle to the left of a red square"]
    assert all(n in MEANING and MEANING[n] != MEANING[caption] for n in negatives)
    assert caption_negatives("a blue square above a orange circle", ["objects"]) == [
        "an orange circle above a blue square"]  # articles follow the words they now precede


def test_probes_of_the_world_eval_are_the_swaps_and_mean_another_scene():
    for scene in SCENES:
        if scene.second is None:
            assert world.relation_probes(world.captions(scene)[0]) is None
            continue
        caption = world.captions(scene)[0]
        objects, attributes = world.relation_probes(caption)
        assert MEANING[objects] != scene.meaning and words(objects) == words(caption)
        if scene.first.colour == scene.second.colour:
            assert attributes is None
        else:
            assert MEANING[attributes] != scene.meaning and words(attributes) == words(caption)


def test_other_english_gets_a_heuristic_not_a_crash():
    negatives = caption_negatives("A man riding a horse to the left of a small white dog.", nouns=["cat", "horse"])
    assert negatives == ["A man riding a horse to the right of a small white dog.",
                         "A man riding a small white dog to the left of a horse.",  # the phrases around the relation
                         "A cat riding a horse to the left of a small white dog.",
                         "A horse riding a horse to the left of a small white dog."]
    assert caption_negatives("sunset", nouns=["cat"]) == []  # nothing it can read: no negatives
    assert head_nouns(["a red circle on the left", "the blue circle above a square"]) == ["circle", "square"]
    with pytest.raises(ValueError, match="unknown caption negative kinds"):
        caption_negatives("a red circle", ["colour"])


def test_sampling_is_seeded_and_bounded_per_caption():
    captions = [world.captions(s)[0] for s in SCENES[-5:]]
    texts, owners = sample_negatives(captions, 2, KINDS, NOUNS, random.Random(3))
    assert (texts, owners) == sample_negatives(captions, 2, KINDS, NOUNS, random.Random(3)) and len(texts) == 10
    assert owners == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert all(t in caption_negatives(captions[o], KINDS, NOUNS) for t, o in zip(texts, owners))
