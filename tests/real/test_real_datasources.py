"""Prompt files, Pick-a-Pic-style preference import and the GenEval export layout."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from tests.real.conftest import jpeg, pickapic

from diffpref import datasources as ds

PROMPTS = [f"prompt number {i}" for i in range(40)]


def write(path, fmt: str, df: pd.DataFrame):
    if fmt == "txt":
        path.write_text("\n".join(df.prompt) + "\n\n")
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in df.to_dict("records")) + "\n")
    elif fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "tsv":
        df.to_csv(path, sep="\t", index=False)
    else:
        df.to_parquet(path)
    return path


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "csv", "tsv", "parquet"])
def test_prompt_files_of_every_format_give_the_same_hash_split(tmp_path, fmt):
    col = "prompt" if fmt == "txt" else "Prompt"
    df = pd.DataFrame({col: PROMPTS})
    out = ds.read_prompt_file(write(tmp_path / f"p.{fmt}", fmt, df), column=col, eval_fraction=0.25)
    assert list(out.columns[:3]) == ["prompt_id", "prompt", "split"]
    assert sorted(out.prompt) == sorted(PROMPTS)
    assert out.prompt_id.is_unique and set(out.split) == {"train", "eval"}
    want = ds.hash_split(pd.Series(PROMPTS), 0.25)
    assert dict(zip(out.prompt, out.split)) == dict(zip(PROMPTS, want))


def test_split_column_caps_duplicates_and_binary_columns(tmp_path):
    df = pd.DataFrame(
        {
            "caption": ["a", "b", "c", "a", "d"],
            "split": ["train", "train", "test", "train", "validation"],
            "jpg_0": [b"\xff\xd8"] * 5,
        }
    )
    out = ds.read_prompt_file(
        write(tmp_path / "p.parquet", "parquet", df), column="caption", n_train=1
    )
    assert list(zip(out.prompt, out.split)) == [("a", "train"), ("c", "eval"), ("d", "val")]
    assert "jpg_0" not in json.loads(out.metadata[0])


def test_geneval_metadata_tag_becomes_the_category_and_metadata_is_kept(tmp_path):
    rows = [
        {
            "tag": "counting",
            "include": [{"class": "cat", "count": 2}],
            "prompt": "a photo of two cats",
            "split": "eval",
        },
        {
            "tag": "single_object",
            "include": [{"class": "dog", "count": 1}],
            "prompt": "a photo of a dog",
            "split": "train",
        },
    ]
    out = ds.read_prompt_file(
        write(tmp_path / "evaluation_metadata.jsonl", "jsonl", pd.DataFrame(rows))
    )
    assert list(out.category) == ["counting", "single_object"]
    assert json.loads(out.metadata[0])["include"] == [{"class": "cat", "count": 2}]


@pytest.mark.parametrize(
    ("df", "kw", "needle"),
    [
        (pd.DataFrame({"text": ["a"]}), {}, "no column 'prompt'"),
        (pd.DataFrame({"prompt": ["a", " ", "b"]}), {}, "line 2: empty prompt"),
        (pd.DataFrame({"prompt": ["a", "b"], "split": ["train", "holdout"]}), {}, "'holdout'"),
        (pd.DataFrame({"prompt": ["a", "b"]}), {"eval_fraction": 0.0}, "no eval prompts"),
    ],
)
def test_bad_prompt_files_name_file_and_column(tmp_path, df, kw, needle):
    path = write(tmp_path / "bad.jsonl", "jsonl", df)
    with pytest.raises(ValueError) as e:
        ds.read_prompt_file(path, **kw)
    assert str(path) in str(e.value) and needle in str(e.value)


def test_pickapic_import_drops_ties_merges_images_and_holds_out_eval(tmp_path):
    a, b, c, d = jpeg(0), jpeg(1), jpeg(2), jpeg(3)
    path = pickapic(
        tmp_path / "pp.parquet",
        [
            ("cat", a, b, 1.0),  # a > b
            ("cat", c, a, 0.0),  # a > c (a reused: one candidate)
            ("cat", a, c, 0.5),  # tie: dropped
            ("dog", c, d, 0.0),  # d > c
            ("held out", a, b, 1.0),
        ],
    )
    prefs = ds.read_pickapic(path, size=16, exclude={"held out"})
    assert list(prefs.prompts.prompt) == ["cat", "dog"]
    assert prefs.images.shape == (5, 3, 16, 16) and prefs.images.dtype == np.uint8
    assert list(prefs.candidates.cand_idx) == [0, 1, 2, 0, 1]
    assert list(prefs.candidates.row) == list(range(5))
    cat, dog = prefs.prompts.prompt_id
    assert prefs.pairs.values.tolist() == [[cat, 0, 1], [cat, 0, 2], [dog, 1, 0]]
    scores, pairs = ds.human_labels(prefs.pairs)
    assert scores.loc[cat].tolist() == [1.0, 0.0, 0.0]
    assert (pairs.margin > 0).all()
    assert len(ds.read_pickapic(path, size=16, max_pairs=1).pairs) == 1


@pytest.mark.parametrize(
    ("rows", "needle"),
    [
        ([("cat", b"not an image", jpeg(0), 1.0)], "row 0 column 'jpg_0'"),
        ([("cat", jpeg(0), jpeg(1), 2.0)], "label_0"),
        ([("cat", jpeg(0), jpeg(1), 0.5)], "no usable pairs"),
    ],
)
def test_bad_preference_files_name_row_and_column(tmp_path, rows, needle):
    path = pickapic(tmp_path / "bad.parquet", rows)
    with pytest.raises(ValueError) as e:
        ds.read_pickapic(path, size=16)
    assert str(path) in str(e.value) and needle in str(e.value)
    pd.DataFrame({"caption": ["x"]}).to_parquet(tmp_path / "cols.parquet")
    with pytest.raises(ValueError, match="missing columns"):
        ds.read_pickapic(tmp_path / "cols.parquet", size=16)


def test_geneval_export_layout(tmp_path):
    prompts = pd.DataFrame(
        {
            "prompt": ["a cat", "a dog"],
            "metadata": [json.dumps({"tag": "single_object", "prompt": "a cat"}), None],
        }
    )
    images = np.random.default_rng(0).integers(0, 255, (4, 3, 8, 8), dtype=np.uint8)
    ds.export_geneval(tmp_path / "geneval", prompts, images, per_prompt=2)
    root = tmp_path / "geneval"
    assert sorted(p.name for p in root.iterdir()) == ["00000", "00001"]
    assert json.loads((root / "00000" / "metadata.jsonl").read_text())["tag"] == "single_object"
    assert json.loads((root / "00001" / "metadata.jsonl").read_text()) == {"prompt": "a dog"}
    assert sorted(p.name for p in (root / "00001" / "samples").iterdir()) == [
        "0000.png",
        "0001.png",
    ]
    back = np.asarray(Image.open(root / "00001" / "samples" / "0001.png")).transpose(2, 0, 1)
    assert np.array_equal(back, images[3])
