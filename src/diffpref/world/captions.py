"""Caption grammar of the embedded world and its keyword parser.

Captions are built from class synonyms, number words, relation phrases and brightness words
slotted into templates. Each category has *train* templates (used for base-model pretraining
and train prompts) and *held-out* wording (eval prompts only), so evaluation also measures
generalisation to unseen wording.

The held-out wording is a different process, not more templates of the same kind: its own
lexicon (a synonym for every content word — class nouns, number forms, relation phrases,
brightness words — none of which the training wording uses), determiners the training wording
never uses (this/that/one, these/those/some; training has a/an), other clause orders
(relation first, the reference object as a pronoun, postposed numbers) and wrapper phrases
(requests such as "show me ..." or "..., please") composed with every clause. How far it is
from the training wording is measured, as shared word n-grams, in the report.

:func:`parse_prompt` recovers the :class:`~diffpref.world.spec.Spec` of any caption either
wording makes, which lets reward models take plain prompt strings.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from diffpref.world.data import NUM_CLASSES
from diffpref.world.spec import Spec, ngram_words

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
    },
}
# Predicate adjectives must read well after "looking".
_PREDICATE_ADJ: dict[str, tuple[str, ...]] = {"bright": ("bright",), "dim": ("dim", "dark")}

# -- the held-out wording: its own lexicon, determiners, clause orders and wrappers ----------
HELDOUT_SYNONYMS: dict[int, tuple[tuple[str, str], ...]] = {
    0: (("singlet", "singlets"), ("camisole", "camisoles")),
    1: (("slacks", "slacks"), ("jeans", "jeans"), ("chinos", "chinos")),
    2: (("cardigan", "cardigans"), ("hoodie", "hoodies"), ("sweatshirt", "sweatshirts")),
    3: (("gown", "gowns"), ("frock", "frocks")),
    4: (("parka", "parkas"), ("blazer", "blazers"), ("anorak", "anoraks")),
    5: (("flip-flop", "flip-flops"), ("mule", "mules")),
    6: (("blouse", "blouses"), ("button-down", "button-downs")),
    7: (("running shoe", "running shoes"), ("tennis shoe", "tennis shoes")),
    8: (("tote", "totes"), ("satchel", "satchels"), ("backpack", "backpacks")),
    9: (("bootie", "booties"),),
}
HELDOUT_NUMBERS: dict[int, str] = {2: "2", 3: "3", 4: "4"}
HELDOUT_RELATIONS: dict[str, tuple[str, ...]] = {
    "left": ("leftward of", "west of"),
    "right": ("rightward of", "east of"),
    "above": ("higher than", "atop"),
    "below": ("lower than", "underneath"),
}
HELDOUT_RELATION_REF: dict[str, str] = {  # the reference object as "that"
    "left": "west of that",
    "right": "east of that",
    "above": "higher than that",
    "below": "lower than that",
}
HELDOUT_BRIGHT: dict[str, tuple[str, ...]] = {
    "bright": ("luminous", "radiant", "brilliant"),
    "dim": ("shadowy", "murky", "gloomy"),
}
HELDOUT_PREDICATE: dict[str, tuple[str, ...]] = {
    "bright": ("radiant", "luminous"),
    "dim": ("shadowy", "gloomy"),
}
# one determiner per caption, by index: (count noun, plural-only noun)
HELDOUT_DETERMINERS: tuple[tuple[str, str], ...] = (
    ("this", "these"),
    ("one", "some"),
    ("that", "those"),
)
# clause orders per category (same slots as the training templates; {its}: "west of that")
HELDOUT_CLAUSES: dict[str, tuple[str, ...]] = {
    "single": ("{x}", "just {x}", "{x} alone", "{x}, nothing else", "solely {x}"),
    "two_object": ("{x} plus {y}", "{x} alongside {y}", "{x} beside {y}", "{x}; also {y}"),
    "counting": (
        "{n} {xs}",
        "{xs}, {n} in all",
        "{xs} numbering {n}",
        "{n} identical {xs}",
        "{n} separate {xs}",
    ),
    "position": (
        "{x} {rel} {y}",
        "{rel} {y} sits {x}",
        "{rel} {y}: {x}",
        "{y}, {x} {its}",
        "{y} having {x} {its}",
        "{x} sitting {rel} {y}",
    ),
    "brightness": ("{xa}", "{x}, {adj}", "{x} in {adj} light", "{x} that seems {adj}"),
}
# requests around any clause; words outside every lexicon, so the parse cannot change
HELDOUT_WRAPPERS: tuple[str, ...] = (
    "{}",
    "show me {}",
    "please render {}",
    "generate {}",
    "depict {}",
    "{}, please",
    "{} in frame",
)
for _cat, _clauses in HELDOUT_CLAUSES.items():
    TEMPLATES[_cat]["heldout"] = tuple(w.format(c) for c in _clauses for w in HELDOUT_WRAPPERS)


@dataclass(frozen=True)
class Lexicon:
    """The words one wording fills its templates with."""

    synonyms: dict[int, tuple[tuple[str, str], ...]]
    numbers: dict[int, str]
    relations: dict[str, tuple[str, ...]]
    relation_ref: dict[str, str]
    bright: dict[str, tuple[str, ...]]
    predicate: dict[str, tuple[str, ...]]
    determiners: tuple[tuple[str, str], ...] = ()  # empty: a/an (training)


LEXICONS: dict[str, Lexicon] = {
    "train": Lexicon(
        SYNONYMS, NUMBER_WORDS, RELATION_PHRASES, RELATION_ITS, BRIGHT_WORDS, _PREDICATE_ADJ
    ),
    "heldout": Lexicon(
        HELDOUT_SYNONYMS,
        HELDOUT_NUMBERS,
        HELDOUT_RELATIONS,
        HELDOUT_RELATION_REF,
        HELDOUT_BRIGHT,
        HELDOUT_PREDICATE,
        HELDOUT_DETERMINERS,
    ),
}

_PLURALIA = ("trousers", "pants", "slacks", "jeans", "chinos")


def noun_phrase(head: str, adj: str | None = None, det: tuple[str, str] | None = None) -> str:
    """``a coat`` / ``an ankle boot`` / ``dim trousers`` / ``a bright bag``; with ``det``
    (count noun, plural-only noun) the held-out determiners: ``this coat``, ``some jeans``."""
    phrase = f"{adj} {head}" if adj else head
    if det:
        return f"{det[1] if head in _PLURALIA else det[0]} {phrase}"
    if head in _PLURALIA:
        return phrase
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _choices(spec: Spec, lex: Lexicon) -> dict[str, list]:
    """The independent wording choices of a caption for ``spec`` in lexicon ``lex``."""
    ch: dict[str, list] = {"a": list(lex.synonyms[spec.classes[0]])}
    if len(spec.classes) > 1:
        ch["b"] = list(lex.synonyms[spec.classes[1]])
    if spec.relation:
        ch["rel"] = list(lex.relations[spec.relation])
    if spec.brightness:
        ch["attr"] = list(lex.bright[spec.brightness])
        ch["pred"] = list(lex.predicate[spec.brightness])
    if lex.determiners:
        ch["det"] = list(lex.determiners)
    return ch


def _fill(spec: Spec, template: str, pick: dict, lex: Lexicon) -> str:
    head_a, det = pick["a"], pick.get("det")
    fields = {"x": noun_phrase(head_a[0], det=det), "xs": head_a[1]}
    if "b" in pick:
        fields["y"] = noun_phrase(pick["b"][0], det=det)
    if spec.category == "counting":
        fields["n"] = lex.numbers[spec.count]
    if spec.relation:
        fields["rel"] = pick["rel"]
        fields["its"] = lex.relation_ref[spec.relation]
    if spec.brightness:
        fields["xa"] = noun_phrase(head_a[0], pick["attr"], det=det)
        fields["adj"] = pick["pred"]
    return template.format(**fields)


def make_caption(
    spec: Spec, template: str, rng: np.random.Generator, wording: str = "train"
) -> str:
    """Fill ``template`` (of ``wording``: train or heldout) for ``spec``, drawing synonyms and
    phrasings with ``rng``."""
    lex = LEXICONS[wording]
    ch = _choices(spec, lex)
    return _fill(spec, template, {k: v[int(rng.integers(len(v)))] for k, v in ch.items()}, lex)


def caption_variants(
    spec: Spec, template: str, wording: str = "train", vary: set[str] | None = None
) -> list[str]:
    """Every distinct caption ``template`` can make for ``spec`` (for exhaustive checks);
    ``vary``: only these choices (a, b, rel, attr, pred, det) vary, the others take their
    first option."""
    lex = LEXICONS[wording]
    ch = _choices(spec, lex)
    keys = list(ch)
    options = [ch[k] if vary is None or k in vary else ch[k][:1] for k in keys]
    out = {
        _fill(spec, template, dict(zip(keys, combo, strict=True)), lex)
        for combo in itertools.product(*options)
    }
    return sorted(out)


def templates(category: str, split: str) -> tuple[str, ...]:
    """Templates of a category; ``split`` is ``train`` or ``heldout`` (every held-out clause
    inside every wrapper)."""
    return TEMPLATES[category][split]


# -- parser --------------------------------------------------------------------------------
def _class_lexicon() -> dict[tuple[str, ...], int]:
    lex: dict[tuple[str, ...], int] = {}
    for k, forms in [*SYNONYMS.items(), *HELDOUT_SYNONYMS.items()]:
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
    "leftward": "left",
    "west": "left",
    "rightward": "right",
    "east": "right",
    "higher": "above",
    "atop": "above",
    "lower": "below",
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
    "radiant": "bright",
    "brilliant": "bright",
    "shadowy": "dim",
    "murky": "dim",
    "gloomy": "dim",
    "dim": "dim",
    "dimly": "dim",
    "faint": "dim",
    "dark": "dim",
}


def parse_prompt(text: str) -> Spec:
    """Recover the :class:`Spec` of a caption by keywords (classes, counts, relations, light).

    The reference object of a relation is the first class mentioned after the relation word
    ("A left of B", "left of B is A"); with a pronoun ("B with A to its left") it is the
    other one. Raises ``ValueError`` when no clothing class is mentioned.
    """
    tokens = ngram_words(text)
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


assert len(SYNONYMS) == len(HELDOUT_SYNONYMS) == NUM_CLASSES
