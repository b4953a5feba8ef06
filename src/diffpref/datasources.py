"""Data from outside the pipeline: prompt files, Pick-a-Pic-style human preferences, and the
GenEval folder layout for evaluation samples.

Every reader fails early with the file, the column and the row at fault, because a bad row
found after an hour of generation is the expensive kind of error.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from diffpref.config.loader import NotUTF8, decode_utf8
from diffpref.io import InputError
from diffpref.registry import DATA_DIRS

if TYPE_CHECKING:
    from diffpref.config import Config, PromptParams

log = logging.getLogger(__name__)

PROMPT_FORMATS = (".txt", ".jsonl", ".csv", ".tsv", ".parquet")
SPLIT_ALIASES = {  # a prompt file's split column -> ours (eval: the test prompts)
    "train": "train",
    "eval": "eval",
    "test": "eval",
    "val": "val",
    "validation": "val",
    "dev": "val",
}
PICKAPIC_COLUMNS = ["caption", "jpg_0", "jpg_1", "label_0"]
# Longer prompt-file entries are refused, not truncated: text encoders read at most 77 tokens
# (CLIP; the embedded world's MiniLM: 16), about 300 characters, and drop the rest as the
# diffusers pipelines do, so an entry several times longer is nearly always a broken file (a
# lost line break, a pasted document). The prompts stage cannot cut to the encoder's limit
# itself: that limit is in tokens of a backbone it does not load.
MAX_PROMPT_CHARS = 2_000


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def prompt_id(text: str) -> str:
    """Stable id from the text: reordering or extending a file keeps every prompt's id."""
    return "p" + text_hash(text)[:12]


def hash_split(prompts: pd.Series, eval_fraction: float, val_fraction: float = 0.0) -> pd.Series:
    """``eval`` for a deterministic ``eval_fraction`` of prompts and ``val`` for the next
    ``val_fraction``, decided by the text alone (so a prompt repeated in a file, or moved,
    always lands in the same split, and adding validation takes prompts from training only)."""
    u = prompts.map(lambda p: int(text_hash(p)[:8], 16) / 2**32)
    split = np.where(u < eval_fraction + val_fraction, "val", "train")
    return pd.Series(np.where(u < eval_fraction, "eval", split), index=prompts.index)


def _text(path: Path) -> str:
    """The file as UTF-8 text (a byte-order mark is fine); else the line of the first bad byte."""
    try:
        return decode_utf8(path.read_bytes())
    except NotUTF8 as e:
        raise InputError(f"{path}: {e}") from None


def _read_table(path: Path) -> tuple[pd.DataFrame, str]:
    """The file as a frame indexed by where each row is (1-based ``line`` of .txt/.jsonl
    files, 0-based ``row`` of tables, as ``iloc`` counts); binary columns of parquet files
    (images) are never read."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        lines = {i: ln.strip() for i, ln in enumerate(_text(path).split("\n"), 1)}
        return pd.DataFrame({"prompt": {i: ln for i, ln in lines.items() if ln}}), "line"
    if suffix == ".jsonl":
        rows = {}
        for i, line in enumerate(_text(path).split("\n"), 1):
            if line.strip():
                try:
                    rows[i] = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}: line {i}: not valid JSON: {e}") from None
                if not isinstance(rows[i], dict):
                    raise InputError(f"{path}: line {i}: not a JSON object")
        return pd.DataFrame.from_dict(rows, orient="index"), "line"
    try:
        if suffix in (".csv", ".tsv"):
            sep = "\t" if suffix == ".tsv" else ","
            return pd.read_csv(io.StringIO(_text(path)), sep=sep), "row"
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pq.read_schema(path)
        cols = [
            f.name
            for f in schema
            if not pa.types.is_binary(f.type) and not pa.types.is_large_binary(f.type)
        ]
        return pd.read_parquet(path, columns=cols), "row"
    except pd.errors.EmptyDataError:
        return pd.DataFrame(), "row"
    except (ValueError, OSError) as e:  # pandas' ParserError, pyarrow's ArrowInvalid
        raise InputError(f"{path}: not a readable {suffix[1:]} file: {e}") from None


def _at(unit: str, where: pd.Index) -> str:
    """``line 3`` / ``rows [0, 7, ...] (12 in all)``: where a problem is, the first few."""
    first = [int(i) for i in where[:5]]
    if len(where) == 1:
        return f"{unit} {first[0]}"
    more = f" ({len(where)} in all)" if len(where) > len(first) else ""
    return f"{unit}s {first}{more}"


def read_prompt_file(
    path: str | Path,
    column: str = "prompt",
    category_column: str | None = None,
    eval_fraction: float = 0.2,
    n_train: int | None = None,
    n_eval: int | None = None,
    *,
    val_fraction: float = 0.0,
    n_val: int | None = None,
) -> pd.DataFrame:
    """``prompt_id, prompt, split, metadata[, category]`` from a prompt file.

    The split is the file's ``split`` column if it has one, else :func:`hash_split`. The
    category is ``category_column``, else ``category``, else GenEval's ``tag``. ``metadata``
    keeps each source row as JSON (GenEval's evaluator needs its include/exclude specs).
    Repeated prompts are dropped with a warning (caption files repeat them); one listed in
    two splits is refused. At most ``n_train`` / ``n_eval`` / ``n_val`` are kept, in file
    order (``n_val`` 0: none). Any
    other problem is an :class:`InputError` naming the file and the lines or rows at fault.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"prompts.file: {path}: no such file")
    if path.suffix.lower() not in PROMPT_FORMATS:
        raise InputError(
            f"prompts.file: {path}: unsupported format (use one of {', '.join(PROMPT_FORMATS)})"
        )
    raw, unit = _read_table(path)
    if raw.empty:
        raise InputError(f"{path}: no prompts in the file")
    if path.suffix.lower() == ".txt":
        column = "prompt"
    if column not in raw:
        raise InputError(f"{path}: no column {column!r} (prompts.column); has {list(raw.columns)}")
    text = raw[column]
    bad = text.isna() | (text.astype(str).str.strip() == "")
    if bad.any():
        raise InputError(f"{path}: {_at(unit, raw.index[bad])}: empty prompt (column {column!r})")
    df = pd.DataFrame({"prompt": text.astype(str).str.strip()})
    long = df.prompt.str.len() > MAX_PROMPT_CHARS
    if long.any():
        raise InputError(
            f"{path}: {_at(unit, df.index[long])}: prompt of "
            f"{df.prompt[long].str.len().iloc[0]:,} characters; the limit is "
            f"{MAX_PROMPT_CHARS:,} (text encoders read at most 77 tokens, about 300 "
            "characters, so a longer entry is usually a broken file)"
        )
    df["metadata"] = [
        json.dumps({k: v for k, v in r.items() if _plain(v)}, default=str)
        for r in raw.to_dict("records")
    ]
    cat = category_column or next((c for c in ("category", "tag") if c in raw), None)
    if cat is not None:
        if cat not in raw:
            raise InputError(f"{path}: no column {cat!r} (prompts.category_column)")
        empty = raw[cat].isna() | (raw[cat].astype(str).str.strip() == "")
        if empty.any():
            raise InputError(
                f"{path}: {_at(unit, raw.index[empty])}: no category (column {cat!r}); fill "
                "it in, or name another column in prompts.category_column"
            )
        df["category"] = raw[cat].astype(str)
    if "split" in raw:
        split = raw["split"].astype(str).str.lower()
        unknown = ~split.isin(list(SPLIT_ALIASES))
        if unknown.any():
            raise InputError(
                f"{path}: {_at(unit, raw.index[unknown])}: column 'split' has values "
                f"{sorted(set(split[unknown]))} (allowed: {sorted(SPLIT_ALIASES)})"
            )
        df["split"] = split.map(SPLIT_ALIASES)
    else:
        df["split"] = hash_split(df.prompt, eval_fraction, val_fraction)
    df = _drop_repeats(df, path, unit)
    caps = {"train": n_train, "eval": n_eval, "val": n_val}
    df = pd.concat(
        [g.head(caps[s]) if caps[s] is not None else g for s, g in df.groupby("split", sort=True)]
    )
    for s in ("train", "eval"):
        if not (df.split == s).any():
            raise InputError(
                f"{path}: no {s} prompts (add a 'split' column or change "
                f"prompts.eval_fraction={eval_fraction})"
            )
    df.insert(0, "prompt_id", df.prompt.map(prompt_id))
    first = ["prompt_id", "prompt", "split"]
    return df[first + [c for c in df if c not in first]].sort_index().reset_index(drop=True)


def _drop_repeats(df: pd.DataFrame, path: Path, unit: str) -> pd.DataFrame:
    """The first of each repeated prompt; a prompt in two splits would leak into evaluation
    (trained on, or tuned on: validation and test prompts must not overlap either)."""
    both = df.groupby("prompt").split.transform("nunique") > 1
    if both.any():
        text = df.prompt[both].iloc[0]
        where = df.index[both & (df.prompt == text)]
        splits = " and ".join(sorted(set(df.split[where])))
        raise InputError(
            f"{path}: {_at(unit, where)}: prompt {text[:80]!r} is in two splits ({splits}); an "
            "eval prompt must be neither trained on nor tuned on, a validation prompt not "
            "trained on"
        )
    repeated = df.prompt.duplicated()
    if repeated.any():
        log.warning(
            "%s: %s: repeated prompts dropped (the first is kept)",
            path,
            _at(unit, df.index[repeated]),
        )
    return df[~repeated]


def read_prompts(p: PromptParams) -> pd.DataFrame:
    """The prompt file of ``prompts.source: file``, read as the params describe it."""
    return read_prompt_file(
        p.file,
        p.column,
        p.category_column,
        p.eval_fraction,
        p.n_train,
        p.n_eval,
        val_fraction=p.val_fraction,
        n_val=p.n_val,
    )


def check_inputs(cfg: Config) -> None:
    """The files the params point to, read the way their stages read them (shard images are
    decoded by the candidates stage): what ``diffpref check`` adds to validating the params."""
    if cfg.prompts.source == "file":
        read_prompts(cfg.prompts)
        warn_if_untracked("prompts", cfg.prompts.file)
    if cfg.candidates.source == "pickapic":
        check_pickapic(cfg.candidates.preference_file)
        warn_if_untracked("candidates", cfg.candidates.preference_file)


def warn_if_untracked(stage: str, path: str | Path) -> None:
    """DVC reruns ``stage`` when its data folder changes (:data:`DATA_DIRS`); a file elsewhere
    is read all the same, but DVC would not see an edit of it."""
    folder = Path(DATA_DIRS[stage]).resolve()
    if not Path(path).resolve().is_relative_to(folder):
        log.warning(
            "%s is outside %s/: `dvc repro` will not rerun %s when it changes (Snakemake "
            "will); move it there, or run `dvc repro --force %s` after editing it",
            path,
            DATA_DIRS[stage],
            stage,
            stage,
        )


def _plain(v) -> bool:
    """Worth keeping in the JSON metadata: not bytes, not a missing value."""
    return not isinstance(v, bytes | bytearray) and not (isinstance(v, float) and np.isnan(v))


# --- Pick-a-Pic-style human preferences -----------------------------------------------------


@dataclass
class Preferences:
    """Imported pairs in the candidates stage's shape: unique images per prompt, indexed."""

    prompts: pd.DataFrame  # prompt_id, prompt
    candidates: pd.DataFrame  # prompt_id, prompt_row, cand_idx, seed (-1: not generated), row
    images: np.ndarray  # uint8 [N, C, S, S], rows of ``candidates``
    pairs: pd.DataFrame  # prompt_id, winner, loser (cand_idx)


def load_image(data: bytes, size: int, channels: int) -> np.ndarray:
    """JPEG/PNG bytes -> uint8 [C, size, size]: shortest side resized, then center-cropped
    (what the diffusers DPO scripts do before the VAE)."""
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB" if channels == 3 else "L")
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    arr = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def check_pickapic(path: str | Path) -> None:
    """A Pick-a-Pic shard's columns, labels and captions, its images not decoded: cheap enough
    for ``diffpref check`` and for the candidates stage before it loads any model."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise InputError(f"candidates.preference_file: {path}: no such file")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: not a readable parquet file: {e}") from None
    missing = [c for c in PICKAPIC_COLUMNS if c not in schema.names]
    if missing:
        raise InputError(
            f"{path}: missing columns {missing} (has {schema.names}; a Pick-a-Pic shard has "
            f"{PICKAPIC_COLUMNS})"
        )
    for col in ("jpg_0", "jpg_1"):
        kind = schema.field(col).type
        if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
            raise InputError(f"{path}: column {col!r} holds {kind}, not image bytes")
    df = pd.read_parquet(path, columns=["caption", "label_0"])
    bad = ~df.label_0.isin([0, 0.5, 1])
    if bad.any():
        raise InputError(
            f"{path}: {_at('row', df.index[bad])}: label_0 must be 0, 0.5 or 1, got "
            f"{df.label_0[bad].head(5).tolist()}"
        )
    empty = ~df.caption.map(lambda c: isinstance(c, str) and bool(c.strip()))
    if empty.any():
        raise InputError(f"{path}: {_at('row', df.index[empty])}: column 'caption' is empty")


def read_pickapic(
    path: str | Path,
    size: int,
    channels: int = 3,
    exclude: set[str] | None = None,
    max_pairs: int | None = None,
    batch_rows: int = 256,
) -> Preferences:
    """Import ``caption, jpg_0, jpg_1, label_0`` rows (Pick-a-Pic v1/v2 parquet shards).

    ``label_0`` is 1 if ``jpg_0`` is preferred, 0 if ``jpg_1`` is, 0.5 for a tie; ties are
    dropped (Salesforce's Diffusion-DPO does the same; the diffusers script does not).
    Captions in ``exclude`` (the eval prompts) are skipped so that evaluation stays held out.
    An image that occurs in several pairs of a caption becomes one candidate.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    check_pickapic(path)
    pf = pq.ParquetFile(path)
    exclude = exclude or set()
    prompt_rows: dict[str, int] = {}
    cand_of: dict[tuple[int, str], int] = {}  # (prompt row, image hash) -> row
    cands: list[tuple[int, int]] = []  # (prompt row, cand_idx)
    per_prompt: dict[int, int] = {}
    images: list[np.ndarray] = []
    pairs: list[tuple[int, int, int]] = []
    n_ties = n_excluded = 0
    row0 = 0

    def candidate(prow: int, data: bytes | None, where: str) -> int:
        if not data:
            raise InputError(f"{path}: {where} holds no image")
        key = (prow, hashlib.sha1(data).hexdigest())
        if key not in cand_of:
            try:
                images.append(load_image(data, size, channels))
            except Exception as e:
                raise InputError(f"{path}: {where} is not a readable image: {e}") from None
            cand_of[key] = len(cands)
            cands.append((prow, per_prompt.get(prow, 0)))
            per_prompt[prow] = cands[-1][1] + 1
        return cand_of[key]

    for batch in pf.iter_batches(batch_size=batch_rows, columns=PICKAPIC_COLUMNS):
        if max_pairs is not None and len(pairs) >= max_pairs:
            break
        for i, r in enumerate(batch.to_pylist()):
            n = row0 + i
            if max_pairs is not None and len(pairs) >= max_pairs:
                break
            if r["label_0"] == 0.5:
                n_ties += 1
                continue
            caption = r["caption"].strip()
            if caption in exclude:
                n_excluded += 1
                continue
            prow = prompt_rows.setdefault(caption, len(prompt_rows))
            a = candidate(prow, r["jpg_0"], f"row {n} column 'jpg_0'")
            b = candidate(prow, r["jpg_1"], f"row {n} column 'jpg_1'")
            if a == b:
                continue  # the same picture twice: no preference to learn
            pairs.append((prow, *((a, b) if r["label_0"] == 1 else (b, a))))
        row0 += batch.num_rows
    if not pairs:
        raise InputError(f"{path}: no usable pairs ({n_ties} ties, {n_excluded} eval prompts)")
    log.info(
        "%s: %d pairs, %d ties dropped, %d rows of eval prompts skipped",
        path,
        len(pairs),
        n_ties,
        n_excluded,
    )
    texts = list(prompt_rows)
    prompts = pd.DataFrame({"prompt_id": [prompt_id(t) for t in texts], "prompt": texts})
    ids = prompts.prompt_id.to_numpy()
    # rows in prompt-major order, as generated candidates are
    order = sorted(range(len(cands)), key=lambda j: cands[j])
    new_row = {old: new for new, old in enumerate(order)}
    candidates = pd.DataFrame(
        {
            "prompt_id": [ids[cands[j][0]] for j in order],
            "prompt_row": [cands[j][0] for j in order],
            "cand_idx": [cands[j][1] for j in order],
            "seed": -1,
        }
    )
    candidates["row"] = np.arange(len(candidates))
    cidx = candidates.cand_idx.to_numpy()
    pair_df = pd.DataFrame(
        {
            "prompt_id": [ids[p] for p, _, _ in pairs],
            "winner": [int(cidx[new_row[w]]) for _, w, _ in pairs],
            "loser": [int(cidx[new_row[lo]]) for _, _, lo in pairs],
        }
    )
    return Preferences(prompts, candidates, np.stack([images[j] for j in order]), pair_df)


def human_labels(prefs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(score matrix, pairwise labels) from imported human pairs.

    The pairs are kept exactly as the annotators gave them (no tie threshold: ties were
    dropped at import). Label kinds that need a per-image score (smoothed, listwise,
    pointwise) use each image's fraction of won comparisons within its prompt.
    """
    long = pd.concat(
        [
            pd.DataFrame({"prompt_id": prefs.prompt_id, "cand_idx": prefs.winner, "won": 1.0}),
            pd.DataFrame({"prompt_id": prefs.prompt_id, "cand_idx": prefs.loser, "won": 0.0}),
        ]
    )
    scores = long.groupby(["prompt_id", "cand_idx"]).won.mean().unstack("cand_idx")
    pairs = prefs[["prompt_id", "winner", "loser"]].copy()
    pairs["score_w"] = [scores.at[p, w] for p, w in zip(pairs.prompt_id, pairs.winner)]
    pairs["score_l"] = [scores.at[p, lo] for p, lo in zip(pairs.prompt_id, pairs.loser)]
    pairs["margin"] = pairs.score_w - pairs.score_l
    return scores, pairs.reset_index(drop=True)


# --- GenEval export -------------------------------------------------------------------------


def export_geneval(out: Path, prompts: pd.DataFrame, images: np.ndarray, per_prompt: int) -> None:
    """``out/<%05d>/{metadata.jsonl, samples/<%04d>.png}`` per prompt, as GenEval's
    ``evaluate_images.py`` reads them; ``images`` are uint8 [N,C,H,W] in prompt-major order."""
    from PIL import Image

    if len(images) != len(prompts) * per_prompt:
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts x {per_prompt}")
    meta = prompts["metadata"] if "metadata" in prompts else [None] * len(prompts)
    for i, (text, m) in enumerate(zip(prompts.prompt, meta)):
        folder = out / f"{i:05d}"
        (folder / "samples").mkdir(parents=True)
        row = json.loads(m) if isinstance(m, str) and m else {}
        row.setdefault("prompt", text)
        (folder / "metadata.jsonl").write_text(json.dumps(row) + "\n")
        for j in range(per_prompt):
            img = images[i * per_prompt + j].transpose(1, 2, 0)
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(
                folder / "samples" / f"{j:04d}.png"
            )
