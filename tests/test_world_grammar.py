"""Caption grammar, parser and prompt generator of the embedded world."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diffpref.world.captions import TEMPLATES, caption_variants, parse_prompt
from diffpref.world.prompts import (
    all_specs,
    generate_prompts,
    heldout_specs,
    is_heldout_combo,
    prompt_id,
    train_specs,
)
from diffpref.world.spec import CATEGORIES, Spec


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_caption_parses_back(category: str) -> None:
    n = 0
    for spec in all_specs(category):
        for split in ("train", "heldout"):
            for template in TEMPLATES[category][split]:
                for caption in caption_variants(spec, template):
                    assert parse_prompt(caption) == spec, caption
                    n += 1
    assert n > 0


def test_templates_per_category() -> None:
    for cat in CATEGORIES:
        assert len(TEMPLATES[cat]["train"]) >= 6
        assert len(TEMPLATES[cat]["heldout"]) >= 6
        assert not set(TEMPLATES[cat]["train"]) & set(TEMPLATES[cat]["heldout"])


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
    """Every caption of every train and held-out template fits the shipped encoder length."""
    from transformers import AutoTokenizer

    import diffpref.world
    from diffpref.world.text import minilm_path

    meta = Path(diffpref.world.__file__).parent / "pretrained" / "base" / "text_encoder.json"
    max_length = int(json.loads(meta.read_text())["max_length"])
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())  # tokenizer only, no weights
    for cat in CATEGORIES:
        for split in ("train", "heldout"):
            for template in TEMPLATES[cat][split]:
                captions = [v for spec in all_specs(cat) for v in caption_variants(spec, template)]
                lengths = [len(ids) for ids in tokenizer(captions)["input_ids"]]
                longest = max(lengths)
                assert longest <= max_length, (template, captions[lengths.index(longest)], longest)


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
    heldout_templates = {t for c in CATEGORIES for t in TEMPLATES[c]["heldout"]}
    for prompt, spec in zip(train["prompt"], train_specs_seen, strict=True):
        assert parse_prompt(prompt) == spec
        for t in TEMPLATES[spec.category]["heldout"]:
            assert prompt not in caption_variants(spec, t)
    assert heldout_templates
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
