"""Prompt generator of the embedded world (the built-in source of the ``prompts`` stage).

The eval split measures generalisation the way compositional benchmarks do: some class
combinations (two-object pairs, position pairs, (class, count) and (class, brightness)
combos) and the held-out wording (its own lexicon, determiners, clause orders and wrappers:
:mod:`diffpref.world.captions`) never occur in train prompts, nor in the base model's
pretraining captions. The held-out combos are fixed constants (not seed-dependent) so that
the world built once and prompts generated with any seed agree on what is held out.
"""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pandas as pd

from diffpref.world.captions import make_caption, templates
from diffpref.world.data import NUM_CLASSES
from diffpref.world.spec import BRIGHTNESS, CATEGORIES, COUNTS, RELATIONS, Spec

HELDOUT_TWO_OBJECT: frozenset[frozenset[int]] = frozenset(
    frozenset(p) for p in [(0, 7), (1, 8), (2, 5), (3, 9), (4, 6)]
)
HELDOUT_POSITION: frozenset[frozenset[int]] = frozenset(
    frozenset(p) for p in [(0, 9), (1, 5), (2, 8), (3, 7), (4, 7)]
)
HELDOUT_COUNTING: frozenset[tuple[int, int]] = frozenset({(0, 3), (1, 4), (5, 2), (8, 3), (9, 4)})
HELDOUT_BRIGHTNESS: frozenset[tuple[int, str]] = frozenset({(7, "dim"), (3, "bright")})

DEFAULT_MIX: dict[str, float] = {c: 1.0 for c in CATEGORIES}


def is_heldout_combo(spec: Spec) -> bool:
    """Whether ``spec`` uses a class combination reserved for evaluation."""
    if spec.category == "two_object":
        return frozenset(spec.classes) in HELDOUT_TWO_OBJECT
    if spec.category == "position":
        return frozenset(spec.classes) in HELDOUT_POSITION
    if spec.category == "counting":
        return (spec.classes[0], spec.count) in HELDOUT_COUNTING
    if spec.category == "brightness":
        return (spec.classes[0], spec.brightness) in HELDOUT_BRIGHTNESS
    return False


def all_specs(category: str) -> list[Spec]:
    """Every spec of a category (single: 10, two_object: 90, counting: 30, position: 360,
    brightness: 20)."""
    k = range(NUM_CLASSES)
    if category == "single":
        return [Spec("single", (a,)) for a in k]
    if category == "counting":
        return [Spec("counting", (a,), count=n) for a in k for n in COUNTS]
    if category == "brightness":
        return [Spec("brightness", (a,), brightness=b) for a in k for b in BRIGHTNESS]
    pairs = list(itertools.permutations(k, 2))
    if category == "two_object":
        return [Spec("two_object", p) for p in pairs]
    if category == "position":
        return [Spec("position", p, relation=r) for p in pairs for r in RELATIONS]
    raise ValueError(f"unknown category {category!r}; allowed: {CATEGORIES}")


_SPECS = {c: all_specs(c) for c in CATEGORIES}
_TRAIN_SPECS = {c: [s for s in v if not is_heldout_combo(s)] for c, v in _SPECS.items()}
_HELDOUT_SPECS = {c: [s for s in v if is_heldout_combo(s)] for c, v in _SPECS.items()}


def train_specs(category: str) -> list[Spec]:
    """Specs allowed in train prompts and base-model pretraining."""
    return _TRAIN_SPECS[category]


def heldout_specs(category: str) -> list[Spec]:
    return _HELDOUT_SPECS[category]


def prompt_id(prompt: str) -> str:
    """Stable id from the text itself, so ids survive reordering and regeneration."""
    return "p" + hashlib.sha1(prompt.encode()).hexdigest()[:12]


def sample_train_caption(rng: np.random.Generator, category: str) -> tuple[Spec, str]:
    """A random (spec, caption) from the train grammar (train combos, train templates)."""
    specs = _TRAIN_SPECS[category]
    spec = specs[int(rng.integers(len(specs)))]
    tmpl = templates(category, "train")
    return spec, make_caption(spec, tmpl[int(rng.integers(len(tmpl)))], rng)


def _normalise_mix(mix: dict[str, float] | None) -> dict[str, float]:
    mix = dict(DEFAULT_MIX if mix is None else mix)
    unknown = set(mix) - set(CATEGORIES)
    if unknown:
        raise ValueError(
            f"unknown categories in category_mix: {sorted(unknown)}; allowed: {list(CATEGORIES)}"
        )
    total = sum(max(v, 0.0) for v in mix.values())
    if total <= 0:
        raise ValueError("category_mix needs at least one positive weight")
    return {c: max(mix.get(c, 0.0), 0.0) / total for c in CATEGORIES}


def _allocate(n: int, mix: dict[str, float]) -> dict[str, int]:
    raw = {c: n * w for c, w in mix.items()}
    out = {c: int(np.floor(v)) for c, v in raw.items()}
    for c in sorted(raw, key=lambda c: raw[c] - out[c], reverse=True)[: n - sum(out.values())]:
        out[c] += 1
    return out


def generate_prompts(
    n_train: int,
    n_eval: int,
    seed: int = 0,
    category_mix: dict[str, float] | None = None,
    heldout_combo_frac: float = 0.5,
    heldout_template_frac: float = 0.5,
    n_val: int = 0,
) -> pd.DataFrame:
    """Train, eval (test) and validation prompts with their structured specs, deterministic
    for ``seed``.

    Train prompts use only train combos and the training wording. Of each category's eval (and
    validation) prompts, exactly ``round(n * heldout_combo_frac)`` use a held-out combo
    (categories that have some) and, independently, ``round(n * heldout_template_frac)`` the
    held-out wording: quotas, not coin flips, so each subset's size (its power) is what the
    fractions say, and a duplicate redrawn keeps its flags. Validation is drawn like the test
    split, so that a choice tuned on it transfers, and after it, so that adding validation
    prompts leaves the train and eval prompts of a seed as they were. No prompt appears twice
    in or across splits. When a category runs out of distinct prompts, its shortfall moves to
    the others. Columns: ``prompt_id, prompt, split, category, spec, heldout_combo,
    heldout_template``.
    """
    mix = _normalise_mix(category_mix)
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    rows: list[dict] = []
    for split, n in (("train", n_train), ("eval", n_eval), ("val", n_val)):
        want = _allocate(n, mix)
        exhausted: set[str] = set()
        while True:
            for cat in CATEGORIES:
                got = _fill_category(
                    rng, split, cat, want[cat], seen, heldout_combo_frac, heldout_template_frac
                )
                rows.extend(got)
                if len(got) < want[cat]:
                    exhausted.add(cat)
                want[cat] -= len(got)
            short = sum(want[c] for c in exhausted)
            open_cats = {c: mix[c] for c in CATEGORIES if c not in exhausted and mix[c] > 0}
            if short == 0:
                break
            if not open_cats:
                raise ValueError(
                    f"cannot make {n} distinct {split} prompts with category_mix {mix}"
                )
            for c in exhausted:
                want[c] = 0
            extra = _allocate(short, _normalise_mix(open_cats))
            want = {c: want.get(c, 0) + extra.get(c, 0) for c in CATEGORIES}
    df = pd.DataFrame(
        rows,
        columns=[
            "prompt_id",
            "prompt",
            "split",
            "category",
            "spec",
            "heldout_combo",
            "heldout_template",
        ],
    )
    return df


def _fill_category(
    rng: np.random.Generator,
    split: str,
    cat: str,
    n: int,
    seen: set[str],
    heldout_combo_frac: float,
    heldout_template_frac: float,
) -> list[dict]:
    rows: list[dict] = []
    misses = 0
    held = split != "train"  # eval and validation prompts are drawn alike
    combos = _quota(rng, n, heldout_combo_frac if held and _HELDOUT_SPECS[cat] else 0)
    wordings = _quota(rng, n, heldout_template_frac if held else 0)
    while len(rows) < n and misses < 200 + 20 * n:
        held_c, held_t = combos[len(rows)], wordings[len(rows)]
        pool = _HELDOUT_SPECS[cat] if held_c else _TRAIN_SPECS[cat]
        tmpl = templates(cat, "heldout" if held_t else "train")
        spec = pool[int(rng.integers(len(pool)))]
        wording = "heldout" if held_t else "train"
        prompt = make_caption(spec, tmpl[int(rng.integers(len(tmpl)))], rng, wording)
        if prompt in seen:
            misses += 1
            continue
        seen.add(prompt)
        rows.append(
            {
                "prompt_id": prompt_id(prompt),
                "prompt": prompt,
                "split": split,
                "category": cat,
                "spec": spec.to_json(),
                "heldout_combo": held_c,
                "heldout_template": held_t,
            }
        )
    return rows


def _quota(rng: np.random.Generator, n: int, frac: float) -> list[bool]:
    """``round(n * frac)`` of ``n`` flags set, in a random order."""
    flags = np.arange(n) < round(n * frac)
    return [bool(f) for f in rng.permutation(flags)]
