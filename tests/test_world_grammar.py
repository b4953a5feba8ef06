"""Caption grammar, parser and prompt generator of the embedded world."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diffpref.world.captions import (
    HELDOUT_CLAUSES,
    HELDOUT_WRAPPERS,
    LEXICONS,
    TEMPLATES,
    caption_variants,
    parse_prompt,
)
from diffpref.world.prompts import (
    all_specs,
    generate_prompts,
    heldout_specs,
    is_heldout_combo,
    prompt_id,
    train_specs,
)
from diffpref.world.spec import CATEGORIES, Spec, ngram_words


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_caption_parses_back(category: str) -> None:
    """Every training caption parses back to its spec, and so does every held-out clause for
    every spec with each of its choices (class synonyms, relation, brightness, determiner)
    varied in turn: the parser reads words one by one (a class name of two words is matched
    whole), so each word in each slot is covered; the wrappers, whose words no lexicon knows,
    are tried on every spec."""
    n = 0
    for spec in all_specs(category):
        for template in TEMPLATES[category]["train"]:
            for caption in caption_variants(spec, template):
                assert parse_prompt(caption) == spec, caption
                n += 1
        for clause in HELDOUT_CLAUSES[category]:  # each choice varied on its own
            for key in ("a", "b", "rel", "attr", "pred", "det"):
                for caption in caption_variants(spec, clause, "heldout", vary={key}):
                    assert parse_prompt(caption) == spec, caption
                    n += 1
        for wrapper in HELDOUT_WRAPPERS:
            caption = caption_variants(
                spec, wrapper.format(HELDOUT_CLAUSES[category][0]), "heldout"
            )[0]
            assert parse_prompt(caption) == spec, caption
    assert n > 0


def _vocabulary(wording: str) -> set[str]:
    """Every word a wording can write: its templates' words and its lexicon's."""
    lex = LEXICONS[wording]
    phrases = [t for c in CATEGORIES for t in TEMPLATES[c][wording]]
    phrases += [w for forms in lex.synonyms.values() for form in forms for w in form]
    phrases += list(lex.numbers.values()) + list(lex.relation_ref.values())
    for table in (lex.relations, lex.bright, lex.predicate):
        phrases += [w for words in table.values() for w in words]
    phrases += [w for pair in lex.determiners for w in pair]
    phrases += ["a", "an"] if not lex.determiners else []
    return {w for p in phrases for w in ngram_words(p.replace("{", " ").replace("}", " "))}


def test_heldout_wording_shares_no_word_with_the_training_wording() -> None:
    """Synonyms for every content word, other determiners and number forms, other frames:
    the only word both wordings use is "of" (in "west of"); slot names are not words."""
    slots = {"x", "y", "xs", "n", "rel", "its", "xa", "adj"}
    assert (_vocabulary("train") & _vocabulary("heldout")) - slots == {"of"}


def test_templates_per_category() -> None:
    for cat in CATEGORIES:
        assert len(TEMPLATES[cat]["train"]) >= 6
        assert len(HELDOUT_CLAUSES[cat]) >= 4
        assert TEMPLATES[cat]["heldout"] == tuple(
            w.format(c) for c in HELDOUT_CLAUSES[cat] for w in HELDOUT_WRAPPERS
        )


def test_parser_handles_free_wording() -> None:
    assert parse_prompt("Two Sneakers!") == Spec("counting", (7,), count=2)
    assert parse_prompt("a T-shirt") == Spec("single", (0,))
    assert parse_prompt("a shirt") == Spec("single", (6,))
    assert parse_prompt("left of the handbag sits a boot") == Spec(
        "position", (9, 8), relation="left"
    )
    assert parse_prompt("a purse with a coat above it") == Spec(
        "position", (4, 8), relation="above"
    )
    assert parse_prompt("a pullover over trousers") == Spec("position", (2, 1), relation="above")
    with pytest.raises(ValueError, match="no clothing class"):
        parse_prompt("a photo of a cat")


def test_spec_json_round_trip_and_validation() -> None:
    spec = Spec("position", (3, 4), relation="below")
    assert Spec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError):
        Spec("two_object", (3, 3))
    with pytest.raises(ValueError):
        Spec("counting", (3,), count=5)


def test_all_captions_fit_the_text_encoder() -> None:
    """Every caption of every train and held-out template fits the shipped encoder length.
    WordPiece splits at whitespace and punctuation first, so a caption's token count is the
    sum of its words': a template's longest caption takes each slot's longest filling, which
    bounds every caption it can make (any classes, synonyms, determiners, relations; {x} and
    {y} are two different classes)."""
    from transformers import AutoTokenizer

    import diffpref.world
    from diffpref.world.captions import noun_phrase
    from diffpref.world.text import minilm_path

    meta = Path(diffpref.world.__file__).parent / "pretrained" / "base" / "text_encoder.json"
    max_length = int(json.loads(meta.read_text())["max_length"])
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())  # tokenizer only, no weights

    def longest(phrases) -> int:
        return max(len(tokenizer.tokenize(p)) for p in phrases)

    for wording, lex in LEXICONS.items():
        dets = list(lex.determiners) or [None]
        heads = [f for forms in lex.synonyms.values() for f in forms]
        adjs = [a for words in lex.bright.values() for a in words]
        per_class = {  # the longest noun phrase of each class (any synonym, determiner)
            k: longest(noun_phrase(s, det=d) for s, _ in forms for d in dets)
            for k, forms in lex.synonyms.items()
        }
        slot = {
            "x": max(per_class.values()),
            "xs": longest(p for _, p in heads),
            "n": longest(lex.numbers.values()),
            "rel": longest(r for words in lex.relations.values() for r in words),
            "its": longest(lex.relation_ref.values()),
            "xa": longest(noun_phrase(s, a, d) for s, _ in heads for a in adjs for d in dets),
            "adj": longest(a for words in lex.predicate.values() for a in words),
        }
        pair = max(per_class[a] + per_class[b] for a in per_class for b in per_class if a != b)
        for cat in CATEGORIES:
            for template in TEMPLATES[cat][wording]:
                words = template
                for name in [*slot, "y"]:
                    words = words.replace("{" + name + "}", " ")
                bound = len(tokenizer.tokenize(words)) + 2  # [CLS] ... [SEP]
                bound += sum(slot[k] * template.count("{" + k + "}") for k in slot)
                if "{y}" in template:  # two different classes
                    bound += pair - slot["x"]
                assert bound <= max_length, (wording, template, bound)


def test_prompt_split_holds_out_combos_and_templates() -> None:
    df = generate_prompts(600, 300, seed=3)
    assert list(df.columns[:5]) == ["prompt_id", "prompt", "split", "category", "spec"]
    assert not df["prompt"].duplicated().any()
    assert not df["prompt_id"].duplicated().any()
    assert (df["prompt_id"] == df["prompt"].map(prompt_id)).all()
    train, ev = df[df.split == "train"], df[df.split == "eval"]
    assert len(train) == 600 and len(ev) == 300
    train_specs_seen = [Spec.from_json(s) for s in train["spec"]]
    assert not any(is_heldout_combo(s) for s in train_specs_seen)
    # every prompt, held-out wording included, parses back to its spec
    for prompt, spec in zip(df["prompt"], df["spec"], strict=True):
        assert parse_prompt(prompt) == Spec.from_json(spec), prompt
    # held-out wording: no word of a training prompt but "of"
    train_words = {w for p in train["prompt"] for w in ngram_words(p)}
    held = ev[ev["heldout_template"]]
    assert {w for p in held["prompt"] for w in ngram_words(p)} & train_words <= {"of"}
    assert ev["heldout_combo"].any() and ev["heldout_template"].any()
    assert all(
        is_heldout_combo(Spec.from_json(s)) == h
        for s, h in zip(ev["spec"], ev["heldout_combo"], strict=True)
    )
    # roughly even category mix by default
    counts = train["category"].value_counts()
    assert counts.min() >= 0.1 * len(train)
    json.loads(df["spec"].iloc[0])


def test_prompts_deterministic_and_mix_configurable() -> None:
    a = generate_prompts(200, 50, seed=7)
    b = generate_prompts(200, 50, seed=7)
    c = generate_prompts(200, 50, seed=8)
    assert a.equals(b)
    assert not a["prompt"].equals(c["prompt"])
    only = generate_prompts(50, 10, seed=0, category_mix={"counting": 1.0})
    assert set(only["category"]) == {"counting"}
    with pytest.raises(ValueError, match="unknown categories"):
        generate_prompts(10, 10, category_mix={"colour": 1.0})


def test_heldout_combos_exist_in_every_multi_category() -> None:
    for cat in ("two_object", "counting", "position", "brightness"):
        assert heldout_specs(cat)
        assert len(train_specs(cat)) + len(heldout_specs(cat)) == len(all_specs(cat))
