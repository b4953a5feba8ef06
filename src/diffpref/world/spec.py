"""Structured requirements of a prompt (a miniature of GenEval's metadata) and canvas rules.

The canvas is a 2x2 grid of cells, indexed ``row * 2 + col`` (0 top-left, 1 top-right,
2 bottom-left, 3 bottom-right). A :class:`Spec` says what the canvas must show; its
:meth:`Spec.assignments` enumerate every cell layout that satisfies it, which is what the
fidelity reward maximises over.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from diffpref.world.constants import CATEGORIES, NUM_CLASSES

Category = Literal["single", "two_object", "counting", "position", "brightness"]
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")
BRIGHTNESS: tuple[str, ...] = ("bright", "dim")
COUNTS: tuple[int, ...] = (2, 3, 4)
GRID = 2
NUM_CELLS = GRID * GRID
EMPTY = NUM_CLASSES  # content index of an empty cell (the classifier's 11th class)
# Brightness requirement codes used in assignment tensors.
ANY, BRIGHT, DIM = 0, 1, 2


def cell_row(cell: int) -> int:
    return cell // GRID


def cell_col(cell: int) -> int:
    return cell % GRID


@dataclass(frozen=True)
class Spec:
    """What a prompt asks for. ``classes`` holds A (and B for two_object/position)."""

    category: Category
    classes: tuple[int, ...]
    count: int = 1
    relation: str | None = None
    brightness: str | None = None

    def __post_init__(self) -> None:
        c = self.category
        if c not in CATEGORIES:
            raise ValueError(f"unknown category {c!r}; allowed: {CATEGORIES}")
        if any(not 0 <= k < NUM_CLASSES for k in self.classes):
            raise ValueError(f"class index out of range in {self.classes}")
        n_cls = 2 if c in ("two_object", "position") else 1
        if len(self.classes) != n_cls:
            raise ValueError(f"{c} needs {n_cls} class(es), got {self.classes}")
        if n_cls == 2 and self.classes[0] == self.classes[1]:
            raise ValueError(f"{c} needs two different classes, got {self.classes}")
        if c == "counting" and self.count not in COUNTS:
            raise ValueError(f"counting needs count in {COUNTS}, got {self.count}")
        if c == "position" and self.relation not in RELATIONS:
            raise ValueError(f"position needs relation in {RELATIONS}, got {self.relation}")
        if c == "brightness" and self.brightness not in BRIGHTNESS:
            raise ValueError(f"brightness needs one of {BRIGHTNESS}, got {self.brightness}")

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "category": self.category,
            "classes": list(self.classes),
            "count": self.count,
            "relation": self.relation,
            "brightness": self.brightness,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> Spec:
        return cls(
            category=d["category"],
            classes=tuple(int(k) for k in d["classes"]),
            count=int(d.get("count", 1)),
            relation=d.get("relation"),
            brightness=d.get("brightness"),
        )

    @classmethod
    def from_json(cls, s: str) -> Spec:
        return cls.from_dict(json.loads(s))

    # -- canvas rules --------------------------------------------------------------------
    def assignments(self) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """Every valid ``(content per cell, brightness requirement per cell)``.

        Content is a class index or :data:`EMPTY`; cells not named by the spec must be empty,
        so extra objects are penalised like missing ones.
        """
        out: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        cells = range(NUM_CELLS)
        a = self.classes[0]
        if self.category in ("single", "brightness"):
            req = {"bright": BRIGHT, "dim": DIM}.get(self.brightness or "", ANY)
            for i in cells:
                content = [EMPTY] * NUM_CELLS
                bright = [ANY] * NUM_CELLS
                content[i], bright[i] = a, req
                out.append((tuple(content), tuple(bright)))
        elif self.category == "counting":
            for chosen in itertools.combinations(cells, self.count):
                content = tuple(a if i in chosen else EMPTY for i in cells)
                out.append((content, (ANY,) * NUM_CELLS))
        else:
            b = self.classes[1]
            for i, j in itertools.permutations(cells, 2):
                if self.category == "position" and not satisfies_relation(i, j, self.relation):
                    continue
                content = [EMPTY] * NUM_CELLS
                content[i], content[j] = a, b
                out.append((tuple(content), (ANY,) * NUM_CELLS))
        return out

    def sample_layout(self, rng: np.random.Generator) -> list[tuple[int, int, str]]:
        """A random correct layout: ``[(cell, class, brightness)]`` for the occupied cells."""
        options = self.assignments()
        content, bright = options[int(rng.integers(len(options)))]
        names = {ANY: "bright", BRIGHT: "bright", DIM: "dim"}
        return [(i, k, names[bright[i]]) for i, k in enumerate(content) if k != EMPTY]


def satisfies_relation(cell_a: int, cell_b: int, relation: str | None) -> bool:
    """Whether A in ``cell_a`` is ``relation`` of B in ``cell_b`` on the 2x2 grid."""
    if relation == "left":
        return cell_col(cell_a) < cell_col(cell_b)
    if relation == "right":
        return cell_col(cell_a) > cell_col(cell_b)
    if relation == "above":
        return cell_row(cell_a) < cell_row(cell_b)
    if relation == "below":
        return cell_row(cell_a) > cell_row(cell_b)
    raise ValueError(f"unknown relation {relation!r}; allowed: {RELATIONS}")


MAX_ASSIGNMENTS = 12  # two_object: 4 * 3 ordered cell pairs


def assignment_arrays(specs: list[Spec]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pad assignments of many specs to ``[B, MAX_ASSIGNMENTS, 4]`` content/brightness arrays
    plus a ``[B, MAX_ASSIGNMENTS]`` validity mask, for vectorised scoring."""
    n = len(specs)
    content = np.full((n, MAX_ASSIGNMENTS, NUM_CELLS), EMPTY, dtype=np.int64)
    bright = np.zeros((n, MAX_ASSIGNMENTS, NUM_CELLS), dtype=np.int64)
    valid = np.zeros((n, MAX_ASSIGNMENTS), dtype=bool)
    cache: dict[Spec, list] = {}
    for b, spec in enumerate(specs):
        opts = cache.get(spec)
        if opts is None:
            opts = cache[spec] = spec.assignments()
        for a, (c, br) in enumerate(opts):
            content[b, a] = c
            bright[b, a] = br
            valid[b, a] = True
    return content, bright, valid


_WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def ngram_words(text: str) -> list[str]:
    """The words of ``text`` as the prompt parser reads them (lower case; hyphenated words
    whole): what the report's wording overlap counts in n-grams."""
    return _WORD.findall(text.lower())
