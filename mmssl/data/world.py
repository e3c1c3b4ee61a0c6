"""The built-in data world: seeded, procedural scenes of coloured shapes with paraphrased captions.

Every objective in mmssl can run and be evaluated on it without downloads:

* a text corpus (all captions) for masked and causal LM;
* paraphrase pairs (two captions of one scene) with hard negatives (the same words, another meaning:
  colours or positions swapped) for contrastive text training;
* image-caption pairs with colour and shape labels for CLIP, zero-shot and linear-probe evaluation;
* images with **shape** labels for image-only self-supervised learning (`world_columns(cfg, "images")`).

The image-only task is classification by shape while colour, position and size vary, the object placed
anywhere it fits at any size between small and large. Colour is separable from raw pixels (linear probe
97%), and a shape drawn at the five named places and two sizes of the captioned scenes nearly is (80%);
at free places and sizes raw pixels give 37% (linear) / 37% (20-NN) on 4 shapes (chance 25%; 3,000 scenes,
32 px), so an encoder has to earn shape through invariance to crops and colour.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

from mmssl.config import WorldConfig

COLOURS: list[tuple[str, tuple[int, int, int]]] = [
    ("red", (220, 40, 40)),
    ("green", (40, 170, 60)),
    ("blue", (40, 80, 220)),
    ("yellow", (235, 200, 30)),
    ("purple", (140, 60, 180)),
    ("orange", (245, 130, 30)),
    ("pink", (245, 120, 190)),
    ("brown", (130, 80, 40)),
    ("gray", (128, 128, 128)),
    ("cyan", (40, 200, 210)),
]
SHAPES: list[str] = ["circle", "square", "triangle", "cross", "diamond", "star"]
POSITIONS: dict[str, tuple[float, float]] = {
    "on the left": (0.27, 0.5),
    "on the right": (0.73, 0.5),
    "at the top": (0.5, 0.27),
    "at the bottom": (0.5, 0.73),
    "in the middle": (0.5, 0.5),
}
RELATIONS: dict[str, tuple[str, tuple[float, float], tuple[float, float]]] = {
    # relation: (inverse, centre of first object, centre of second object)
    "above": ("below", (0.5, 0.27), (0.5, 0.73)),
    "below": ("above", (0.5, 0.73), (0.5, 0.27)),
    "to the left of": ("to the right of", (0.27, 0.5), (0.73, 0.5)),
    "to the right of": ("to the left of", (0.73, 0.5), (0.27, 0.5)),
}
RELATION_LEADS = {"above": "above", "below": "below", "to the left of": "left of", "to the right of": "right of"}
SIZES = {"small": 0.16, "large": 0.26}

Kind = Literal["text", "pairs", "image_text", "images"]


@dataclass(frozen=True)
class Thing:
    colour: str
    shape: str
    size: str


@dataclass(frozen=True)
class Scene:
    """One image: a single thing at a position, or two things in a spatial relation."""

    first: Thing
    position: str | None = None
    second: Thing | None = None
    relation: str | None = None

    @property
    def label(self) -> str:
        return f"{self.first.colour} {self.first.shape}"

    @property
    def meaning(self) -> str:
        """What every caption of the scene says (sizes aside): equal meanings make captions paraphrases."""
        a = f"{self.first.colour} {self.first.shape}"
        if self.second is None:
            return f"{a} {self.position}"
        b = f"{self.second.colour} {self.second.shape}"
        return min(f"{a} {self.relation} {b}", f"{b} {RELATIONS[self.relation][0]} {a}")


def class_names(cfg: WorldConfig) -> list[str]:
    """The colour x shape classes of the world, e.g. 'red circle'."""
    return [f"{c} {s}" for c, _ in COLOURS[: cfg.num_colours] for s in SHAPES[: cfg.num_shapes]]


def shape_names(cfg: WorldConfig) -> list[str]:
    """The classes of the image-only shape task, e.g. 'circle'."""
    return SHAPES[: cfg.num_shapes]


def _check(cfg: WorldConfig) -> None:
    if not 2 <= cfg.num_colours <= len(COLOURS):
        raise ValueError(f"world.num_colours must lie in [2, {len(COLOURS)}]")
    if not 2 <= cfg.num_shapes <= len(SHAPES):
        raise ValueError(f"world.num_shapes must lie in [2, {len(SHAPES)}]")


def generate_scenes(cfg: WorldConfig, split: str = "train") -> list[Scene]:
    """Seeded scenes; the 'eval' split uses an independent stream, so its images are held out."""
    _check(cfg)
    rng = random.Random(f"{cfg.seed}/{split}")
    colours = [c for c, _ in COLOURS[: cfg.num_colours]]
    shapes = SHAPES[: cfg.num_shapes]
    count = cfg.num_scenes if split == "train" else max(1, cfg.num_scenes // 5)

    def thing() -> Thing:
        return Thing(rng.choice(colours), rng.choice(shapes), rng.choice(list(SIZES)))

    scenes = []
    for _ in range(count):
        if rng.random() < cfg.pair_fraction:
            first = thing()
            second = thing()
            while (second.colour, second.shape) == (first.colour, first.shape):
                second = thing()
            scenes.append(Scene(first=first, second=second, relation=rng.choice(list(RELATIONS))))
        else:
            scenes.append(Scene(first=thing(), position=rng.choice(list(POSITIONS))))
    return scenes


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _np(t: Thing, with_size: bool = False) -> str:
    words = f"{t.size} {t.colour} {t.shape}" if with_size else f"{t.colour} {t.shape}"
    return f"{_article(words)} {words}"


def captions(scene: Scene) -> list[str]:
    """Paraphrases: different words and order, one meaning."""
    a = scene.first
    if scene.second is None:
        pos = scene.position
        return [
            f"{_np(a, True)} {pos}",
            f"there is {_np(a)} {pos}",
            f"{pos} there is {_np(a, True)}",
            f"the {a.shape} {pos} is {a.colour}",
            f"{_np(a)} placed {pos} of the picture",
        ]
    b, rel = scene.second, scene.relation
    inverse = RELATIONS[rel][0]
    return [
        f"{_np(a)} {rel} {_np(b)}",
        f"{RELATION_LEADS[rel]} the {b.colour} {b.shape} there is {_np(a)}",
        f"{_np(b)} {inverse} {_np(a)}",
        f"the {a.colour} {a.shape} is {rel} the {b.colour} {b.shape}",
        f"{_np(a, True)} and {_np(b, True)}, the {a.shape} {rel} the {b.shape}",
    ]


def hard_negatives(scene: Scene, cfg: WorldConfig, rng: random.Random) -> list[str]:
    """Captions sharing most words with the scene's captions but describing another scene."""
    a = scene.first
    if scene.second is None:
        other_pos = rng.choice([p for p in POSITIONS if p != scene.position])
        other_colour = rng.choice([c for c, _ in COLOURS[: cfg.num_colours] if c != a.colour])
        return [f"there is {_np(a)} {other_pos}", f"there is a {other_colour} {a.shape} {scene.position}"]
    b, rel = scene.second, scene.relation
    inverse = RELATIONS[rel][0]
    negs = [f"{_np(a)} {inverse} {_np(b)}"]  # relation flipped
    if a.colour != b.colour:  # colours swapped between the two things
        negs.append(f"{_np(Thing(b.colour, a.shape, a.size))} {rel} {_np(Thing(a.colour, b.shape, b.size))}")
    return negs


def relation_probes(caption: str) -> tuple[str, str | None] | None:
    """For a two-object caption in the world's first form ("a red circle to the left of a blue square"): the
    same words with the objects swapped ("a blue square to the left of a red circle") and with the colours
    swapped ("a blue circle to the left of a red square"; None when both share a colour). Both mean another
    scene; None for any other caption."""
    colours, relations = "|".join(c for c, _ in COLOURS), "|".join(RELATIONS)
    found = re.fullmatch(rf"an? ({colours}) (\w+) ({relations}) an? ({colours}) (\w+)", caption)
    if found is None or found[2] not in SHAPES or found[5] not in SHAPES:
        return None
    a, rel, b = Thing(found[1], found[2], "small"), found[3], Thing(found[4], found[5], "small")  # sizes unsaid
    objects = f"{_np(b)} {rel} {_np(a)}"
    if a.colour == b.colour:
        return objects, None
    return objects, f"{_np(replace(a, colour=b.colour))} {rel} {_np(replace(b, colour=a.colour))}"


def render(scene: Scene, size: int, rng: random.Random) -> Image.Image:
    """Draw the scene as an RGB image on a white background, with a little positional jitter."""
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    if scene.second is None:
        placed = [(scene.first, POSITIONS[scene.position])]
    else:
        _, c1, c2 = RELATIONS[scene.relation]
        placed = [(scene.first, c1), (scene.second, c2)]
    for thing, (cx, cy) in placed:
        r = SIZES[thing.size] * size / 2 * (1 + 0.15 * (rng.random() - 0.5))
        x = cx * size + (rng.random() - 0.5) * 0.08 * size
        y = cy * size + (rng.random() - 0.5) * 0.08 * size
        draw_shape(draw, thing.shape, x, y, r, dict(COLOURS)[thing.colour])
    return image


FREE_DIAMETERS = (0.3, 0.6)  # of the image side: large enough that a shape survives a crop and a 32 px image


def render_free(thing: Thing, size: int, rng: random.Random) -> tuple[Image.Image, tuple[float, float], float]:
    """Draw one thing anywhere it fits whole, at a diameter drawn from `FREE_DIAMETERS` (its own size word is
    ignored); -> (image, centre (x, y) as fractions of the side, diameter fraction)."""
    image = Image.new("RGB", (size, size), (255, 255, 255))
    diameter = rng.uniform(*FREE_DIAMETERS)
    r = diameter * size / 2
    x, y = rng.uniform(r, size - r), rng.uniform(r, size - r)
    draw_shape(ImageDraw.Draw(image), thing.shape, x, y, r, dict(COLOURS)[thing.colour])
    return image, (x / size, y / size), diameter


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, r: float, fill: tuple) -> None:
    if shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif shape == "square":
        draw.rectangle([x - r, y - r, x + r, y + r], fill=fill)
    elif shape == "triangle":
        draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill)
    elif shape == "cross":
        w = r / 2.5
        draw.rectangle([x - r, y - w, x + r, y + w], fill=fill)
        draw.rectangle([x - w, y - r, x + w, y + r], fill=fill)
    elif shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.45
            angle = np.pi / 2 + k * np.pi / 5
            points.append((x + radius * np.cos(angle), y - radius * np.sin(angle)))
        draw.polygon(points, fill=fill)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(shape)


def world_columns(cfg: WorldConfig, kind: Kind, split: str = "train") -> dict[str, list]:
    """The world as plain columns of one kind of table.

    ``images`` (no captions, so no named positions): ``image``, a single object drawn anywhere it fits at
    a diameter between the small and the large size (`render_free`); ``label``, the index in `shape_names`
    of the scene's (first) object; ``colour`` (index in `COLOURS`); ``position``, the object's centre
    ``(x, y)`` as fractions of the side; ``size``, its diameter as a fraction of the side; ``single``. A
    two-object scene is drawn as in ``image_text`` (``position``/``size`` None); it shows two shapes and its
    first object is not visually marked (on top for "above", at the bottom for "below"), so its label is
    ambiguous: image SSL recipes use ``world.pair_fraction: 0``, and `mmssl.data.image_sources.load_images`
    labels two-object scenes -1 (unknown): they can be trained on but never count in evaluation.
    """
    scenes = generate_scenes(cfg, split)
    rng = random.Random(f"{cfg.seed}/{split}/{kind}")
    if kind == "text":
        texts = [c for scene in scenes for c in captions(scene)]
        rng.shuffle(texts)
        return {"text": texts}
    if kind == "pairs":
        rows: dict[str, list] = {"anchor": [], "positive": [], "negative": [], "label": [], "meaning": []}
        for scene in scenes:
            anchor, positive = rng.sample(captions(scene), 2)
            rows["anchor"].append(anchor)
            rows["positive"].append(positive)
            rows["negative"].append(rng.choice(hard_negatives(scene, cfg, rng)))
            rows["label"].append(scene.label)
            rows["meaning"].append(scene.meaning)
        return rows
    if kind == "image_text":
        names = class_names(cfg)
        return {
            "image": [render(scene, cfg.image_size, rng) for scene in scenes],
            "captions": [captions(scene) for scene in scenes],
            "label": [names.index(scene.label) for scene in scenes],
            "single": [scene.second is None for scene in scenes],
        }
    if kind == "images":
        colours = [c for c, _ in COLOURS]
        out: dict[str, list] = {"image": [], "label": [], "colour": [], "position": [], "size": [], "single": []}
        for scene in scenes:
            if scene.second is None:
                image, position, diameter = render_free(scene.first, cfg.image_size, rng)
            else:
                image, position, diameter = render(scene, cfg.image_size, rng), None, None
            out["image"].append(image)
            out["label"].append(SHAPES.index(scene.first.shape))
            out["colour"].append(colours.index(scene.first.colour))
            out["position"].append(position)
            out["size"].append(diameter)
            out["single"].append(scene.second is None)
        return out
    raise ValueError(f"unknown world table kind {kind!r}; choose 'text', 'pairs', 'image_text' or 'images'")
