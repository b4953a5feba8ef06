"""Caption grammar of the embedded world and its keyword parser.

Captions are built from class synonyms, number words, relation phrases and brightness words
slotted into templates. Each category has *train* templates (used for base-model pretraining
and train prompts) and *held-out* paraphrase templates (eval prompts only), so evaluation
also measures generalisation to unseen wording. :func:`parse_prompt` recovers the
:class:`~diffpref.world.spec.Spec` of any caption the grammar makes, which lets reward models
take plain prompt strings.
"""

from __future__ import annotations

import itertools
import re

import numpy as np

from diffpref.world.data import NUM_CLASSES
from diffpref.world.spec import Spec

# (singular head, plural head) per class. Trousers/pants are plural-only nouns: no article in
# the singular noun phrase ("trousers to the left of a bag"), "pairs of" when counted; this
# also keeps every caption within the text encoder's 16 tokens.
SYNONYMS: dict[int, tuple[tuple[str, str], ...]] = {
    0: (("t-shirt", "t-shirts"), ("tee", "tees"), ("top", "tops")),
    1: (("trousers", "pairs of trousers"), ("pants", "pairs of pants")),
    2: (("pullover", "pullovers"), ("sweater", "sweaters"), ("jumper", "jumpers")),
    3: (("dress", "dresses"),),
    4: (("coat", "coats"), ("jacket", "jackets")),
    5: (("sandal", "sandals"),),
    6: (("shirt", "shirts"),),
    7: (("sneaker", "sneakers"), ("trainer", "trainers")),
    8: (("bag", "bags"), ("handbag", "handbags"), ("purse", "purses")),
    9: (("ankle boot", "ankle boots"), ("boot", "boots")),
}
NUMBER_WORDS: dict[int, str] = {2: "two", 3: "three", 4: "four"}
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("to the left of", "left of", "on the left of"),
    "right": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
# Relation phrases with the reference object as a pronoun ("a bag with a coat to its left").
RELATION_ITS: dict[str, str] = {
    "left": "to its left",
    "right": "to its right",
    "above": "above it",
    "below": "below it",
}
BRIGHT_WORDS: dict[str, tuple[str, ...]] = {
    "bright": ("bright", "brightly lit", "glowing"),
    "dim": ("dim", "dimly lit", "faint", "dark"),
}

# {x}/{y}: noun phrases with article; {n}: number word; {xs}: plural head;
# {rel}: relation phrase; {Rel}: relation phrase capitalised-first position; {its}: pronoun
# relation; {xa}: noun phrase with brightness adjective; {adj}: brightness word.
TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "single": {
        "train": (
            "a photo of {x}",
            "{x}",
            "a picture of {x}",
            "an image of {x}",
            "a product photo of {x}",
            "{x} on a black background",
            "a photo showing {x}",
            "a studio photo of {x}",
        ),
        "heldout": (
            "a drawing of {x}",
            "a catalog shot of {x}",
            "a close-up of {x}",
            "an illustration of {x}",
            "{x} against a plain backdrop",
            "this picture shows {x}",
        ),
    },
    "two_object": {
        "train": (
            "a photo of {x} and {y}",
            "{x} and {y}",
            "a picture of {x} and {y}",
            "an image of {x} and {y}",
            "{x} together with {y}",
            "a photo showing {x} and {y}",
        ),
        "heldout": (
            "a drawing of {x} plus {y}",
            "{x} alongside {y}",
            "both {x} and {y}",
            "{x} as well as {y}",
            "a scene containing {x} and {y}",
            "{x}, and {y} too",
        ),
    },
    "counting": {
        "train": (
            "a photo of {n} {xs}",
            "{n} {xs}",
            "a picture of {n} {xs}",
            "an image of {n} {xs}",
            "a photo showing {n} {xs}",
            "exactly {n} {xs}",
        ),
        "heldout": (
            "a drawing of {n} {xs}",
            "a set of {n} {xs}",
            "a group of {n} {xs}",
            "{n} {xs} in total",
            "there are {n} {xs}",
            "{n} {xs}, no more, no fewer",
        ),
    },
    "position": {
        "train": (
            "{x} {rel} {y}",
            "a photo of {x} {rel} {y}",
            "{x} is {rel} {y}",
            "an image of {x} {rel} {y}",
            "{x} placed {rel} {y}",
            "a photo with {x} {rel} {y}",
        ),
        "heldout": (
            "{rel} {y} there is {x}",
            "{y} with {x} {its}",
            "we see {x} {rel} {y}",
            "{x} can be seen {rel} {y}",
            "{y}, and {x} {its}",
            "{rel} {y} you can see {x}",
        ),
    },
    "brightness": {
        "train": (
            "a photo of {xa}",
            "{xa}",
            "a picture of {xa}",
            "an image of {xa}",
            "a photo showing {xa}",
            "{x}, looking {adj}",
        ),
        "heldout": (
            "a drawing of {xa}",
            "{x} in {adj} light",
            "a close-up of {xa}",
            "{xa} against a plain backdrop",
            "we see {xa}",
            "{x} shown in {adj} tones",
        ),
    },
}
# Predicate/light adjectives must read well after "looking", "in ... light", "in ... tones".
_PREDICATE_ADJ: dict[str, tuple[str, ...]] = {"bright": ("bright",), "dim": ("dim", "dark")}


_PLURALIA = ("trousers", "pants")


def noun_phrase(head: str, adj: str | None = None) -> str:
    """``a coat`` / ``an ankle boot`` / ``dim trousers`` / ``a bright bag``."""
    phrase = f"{adj} {head}" if adj else head
    if head in _PLURALIA:
        return phrase
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _choices(spec: Spec) -> dict[str, list]:
    """The independent wording choices of a caption for ``spec``."""
    ch: dict[str, list] = {"a": list(SYNONYMS[spec.classes[0]])}
    if len(spec.classes) > 1:
        ch["b"] = list(SYNONYMS[spec.classes[1]])
    if spec.relation:
        ch["rel"] = list(RELATION_PHRASES[spec.relation])
    if spec.brightness:
        ch["attr"] = list(BRIGHT_WORDS[spec.brightness])
        ch["pred"] = list(_PREDICATE_ADJ[spec.brightness])
    return ch


def _fill(spec: Spec, template: str, pick: dict) -> str:
    head_a = pick["a"]
    fields = {"x": noun_phrase(head_a[0]), "xs": head_a[1]}
    if "b" in pick:
        fields["y"] = noun_phrase(pick["b"][0])
    if spec.category == "counting":
        fields["n"] = NUMBER_WORDS[spec.count]
    if spec.relation:
        fields["rel"] = pick["rel"]
        fields["its"] = RELATION_ITS[spec.relation]
    if spec.brightness:
        fields["xa"] = noun_phrase(head_a[0], pick["attr"])
        fields["adj"] = pick["pred"]
    return template.format(**fields)


def make_caption(spec: Spec, template: str, rng: np.random.Generator) -> str:
    """Fill ``template`` for ``spec``, drawing synonyms and phrasings with ``rng``."""
    ch = _choices(spec)
    return _fill(spec, template, {k: v[int(rng.integers(len(v)))] for k, v in ch.items()})


def caption_variants(spec: Spec, template: str) -> list[str]:
    """Every distinct caption ``template`` can make for ``spec`` (for exhaustive checks)."""
    ch = _choices(spec)
    keys = list(ch)
    out = {
        _fill(spec, template, dict(zip(keys, combo, strict=True)))
        for combo in itertools.product(*(ch[k] for k in keys))
    }
    return sorted(out)


def templates(category: str, split: str) -> tuple[str, ...]:
    """Templates of a category; ``split`` is ``train`` or ``heldout``."""
    return TEMPLATES[category][split]


# -- parser --------------------------------------------------------------------------------
def _class_lexicon() -> dict[tuple[str, ...], int]:
    lex: dict[tuple[str, ...], int] = {}
    for k, forms in SYNONYMS.items():
        for sing, plur in forms:
            for form in (sing, plur):
                words = form.replace("pairs of ", "").split()
                lex[tuple(words)] = k
    # Common spellings the grammar does not generate but users might type.
    lex.update({("tshirt",): 0, ("tshirts",): 0, ("trouser",): 1, ("pant",): 1})
    return lex


_CLASS_LEX = _class_lexicon()
_MAX_LEX = max(len(k) for k in _CLASS_LEX)
_COUNT_LEX = {"two": 2, "three": 3, "four": 4, "2": 2, "3": 3, "4": 4}
_REL_LEX = {
    "left": "left",
    "right": "right",
    "above": "above",
    "over": "above",
    "below": "below",
    "under": "below",
    "beneath": "below",
    "underneath": "below",
}
_BRIGHT_LEX = {
    "bright": "bright",
    "brightly": "bright",
    "glowing": "bright",
    "luminous": "bright",
    "dim": "dim",
    "dimly": "dim",
    "faint": "dim",
    "dark": "dim",
}
_TOKEN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def parse_prompt(text: str) -> Spec:
    """Recover the :class:`Spec` of a caption by keywords (classes, counts, relations, light).

    The reference object of a relation is the first class mentioned after the relation word
    ("A left of B", "left of B is A"); with a pronoun ("B with A to its left") it is the
    other one. Raises ``ValueError`` when no clothing class is mentioned.
    """
    tokens = _TOKEN.findall(text.lower())
    mentions: list[tuple[int, int]] = []  # (token position, class)
    count: int | None = None
    relation: tuple[int, str] | None = None
    brightness: str | None = None
    i = 0
    while i < len(tokens):
        for n in range(min(_MAX_LEX, len(tokens) - i), 0, -1):
            k = _CLASS_LEX.get(tuple(tokens[i : i + n]))
            if k is not None:
                mentions.append((i, k))
                i += n
                break
        else:
            tok = tokens[i]
            if tok in _COUNT_LEX and count is None:
                count = _COUNT_LEX[tok]
            elif tok in _REL_LEX and relation is None:
                relation = (i, _REL_LEX[tok])
            elif tok in _BRIGHT_LEX and brightness is None:
                brightness = _BRIGHT_LEX[tok]
            i += 1
    if not mentions:
        raise ValueError(f"no clothing class found in prompt {text!r}")
    distinct = list(dict.fromkeys(k for _, k in mentions))
    if relation is not None and len(distinct) >= 2:
        pos, rel = relation
        after = [m for m in mentions if m[0] > pos]
        if after:
            b = after[0][1]
            a = next(k for k in distinct if k != b)
        else:
            a = [m for m in mentions if m[0] < pos][-1][1]
            b = next(k for k in distinct if k != a)
        return Spec("position", (a, b), relation=rel)
    if len(distinct) >= 2:
        return Spec("two_object", (distinct[0], distinct[1]))
    a = distinct[0]
    if brightness is not None:
        return Spec("brightness", (a,), brightness=brightness)
    if count is not None and count >= 2:
        return Spec("counting", (a,), count=count)
    return Spec("single", (a,))


assert len(SYNONYMS) == NUM_CLASSES
