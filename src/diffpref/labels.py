"""Rewards -> training labels: pairwise, smoothed (SmPO), listwise (LAIR), pointwise (KTO).

All four are derived from one reward column so objectives differ only in how they use the
same preference signal, not in what signal they see.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from diffpref.io import InputError
from diffpref.objectives.lair import advantages
from diffpref.objectives.smpo import preference_probability

log = logging.getLogger(__name__)


def score_matrix(rewards: pd.DataFrame, reward: str, where: str = "rewards") -> pd.DataFrame:
    """Scores of one reward model as a prompt x candidate frame (NaN: a candidate without a
    score). A score that is NaN or ±inf is refused, naming ``where`` (the rewards file), the
    prompt and the candidate: one ``-inf`` would make every smoothed label of the file NaN
    (SmPO's min-max bounds) and a NaN one an "undesirable" image. Labels compare candidates
    of one prompt, so a prompt with a single score is left out, with a warning: else it would
    be a lone "undesirable" pointwise label with nothing to compare."""
    sub = rewards[rewards.reward == reward]
    if sub.empty:
        known = sorted(rewards.reward.unique())
        raise InputError(f"labels.reward: no scores for reward {reward!r} (have {known})")
    bad = sub[~np.isfinite(sub.score.to_numpy(dtype=float))]
    if len(bad):
        first = bad.iloc[0]
        raise InputError(
            f"{where}: prompt {first.prompt_id!r} candidate {int(first.cand_idx)}: reward "
            f"{reward!r} scored {first.score}, not a finite number ({len(bad)} such scores); "
            "fix the reward model (float16 overflows to inf: rewards.dtype: float32) and rerun "
            "the rewards stage"
        )
    scores = sub.pivot(index="prompt_id", columns="cand_idx", values="score")
    alone = scores.notna().sum(axis=1) < 2
    if alone.any():
        log.warning(
            "labels: %d prompts with a single %r score left out (nothing to compare): %s",
            int(alone.sum()),
            reward,
            scores.index[alone][:5].tolist(),
        )
    return scores[~alone]


def pairwise(scores: pd.DataFrame, tie_threshold: float, mode: str = "all") -> pd.DataFrame:
    """Winner/loser pairs per prompt; pairs closer than ``tie_threshold`` are ties, dropped."""
    rows = []
    for pid, s in scores.iterrows():
        s = s.dropna()
        idx, val = s.index.to_numpy(), s.to_numpy()
        if mode == "best_worst":
            cand = [(int(np.argmax(val)), int(np.argmin(val)))]
        else:
            cand = [(i, j) for i in range(len(val)) for j in range(len(val)) if val[i] > val[j]]
        for i, j in cand:
            if val[i] - val[j] > tie_threshold:
                rows.append((pid, int(idx[i]), int(idx[j]), float(val[i]), float(val[j])))
    df = pd.DataFrame(rows, columns=["prompt_id", "winner", "loser", "score_w", "score_l"])
    df["margin"] = df.score_w - df.score_l
    return df


def smoothed(pairs: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """Pairs plus SmPO's smoothed probability, min-max bounds taken from these scores."""
    lo, hi = float(np.nanmin(scores.to_numpy())), float(np.nanmax(scores.to_numpy()))
    out = pairs.copy()
    out["prob"] = preference_probability(
        torch.tensor(pairs.score_w.to_numpy()), torch.tensor(pairs.score_l.to_numpy()), lo, hi
    ).numpy()
    out.attrs.update(score_min=lo, score_max=hi)
    return out


def listwise(scores: pd.DataFrame, tau: float, standardize: bool) -> pd.DataFrame:
    """Every candidate with its centred advantage weight A = softmax(R/tau) - 1/K."""
    full = scores.dropna()
    adv = advantages(torch.tensor(full.to_numpy()), tau, standardize).numpy()
    long = full.stack().rename("score").reset_index()
    long["advantage"] = adv.reshape(-1)
    return long


def pointwise(scores: pd.DataFrame, threshold: float | None) -> pd.DataFrame:
    """Desirable / undesirable per scored image: above ``threshold``, or above the prompt's
    median (a candidate without a score gets no label)."""
    long = scores.stack().dropna().rename("score").reset_index()
    if threshold is None:
        med = scores.median(axis=1).rename("median")
        long = long.join(med, on="prompt_id")
        long["desirable"] = long.score > long["median"]
        long = long.drop(columns="median")
    else:
        long["desirable"] = long.score >= threshold
    return long
