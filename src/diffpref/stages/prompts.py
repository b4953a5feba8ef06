"""prompts: the train, eval (test) and val (validation) prompt tables every later stage reads.

Validation prompts are for tuning choices (``evaluate.split: validation``); the report's
verdicts use the eval prompts only, and no prompt is in two splits. Sources: the embedded
world's generator (default), or a prompt file (``prompts.source: file``; see
:func:`diffpref.datasources.read_prompt_file`).
"""

from __future__ import annotations

import pandas as pd

from diffpref.io import atomic_dir

SPLITS = ("train", "eval", "val")  # eval: the test prompts of every verdict


def run(ctx) -> None:
    cfg = ctx.cfg
    p = cfg.prompts
    if p.source == "world":
        from diffpref.world.prompts import generate_prompts

        df = generate_prompts(
            p.n_train,
            p.n_eval,
            seed=cfg.seed,
            heldout_combo_frac=p.heldout_combo,
            heldout_template_frac=p.heldout_wording,
            n_val=p.n_val,
        )
    else:
        from diffpref.datasources import read_prompts, warn_if_untracked

        df = read_prompts(p)
        warn_if_untracked("prompts", p.file)
    check_prompts(df)
    with atomic_dir(cfg.path("prompts")) as tmp:
        for split in SPLITS:  # every file, an empty one too: the layout does not depend on it
            df[df.split == split].reset_index(drop=True).to_parquet(tmp / f"{split}.parquet")
    ctx.run.log_metrics({f"n_{s}": int((df.split == s).sum()) for s in SPLITS})
    if "category" in df:
        for cat, n in df[df.split == "eval"].category.value_counts().items():
            # free text in a file ("Food & Beverage"): the writer makes it a valid MLflow key
            ctx.run.log_metric(f"n_eval_{cat}", int(n))


def check_prompts(df: pd.DataFrame) -> None:
    for col in ("prompt_id", "prompt", "split"):
        if col not in df:
            raise ValueError(f"prompt table lacks column {col!r}")
    if df.prompt_id.duplicated().any():
        raise ValueError("duplicate prompt_id values in the prompt table")
    if (df.prompt.str.strip() == "").any():
        raise ValueError("empty prompts in the prompt table")
    if not set(df.split) <= set(SPLITS):
        raise ValueError(f"unknown split values {set(df.split) - set(SPLITS)}")
    shared = df.groupby("prompt").split.nunique() > 1
    if shared.any():
        raise ValueError(
            f"prompt {shared.index[shared][0][:80]!r} is in two splits: a validation or eval "
            "prompt must be neither trained on nor tuned on"
        )
