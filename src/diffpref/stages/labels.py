"""labels: pairwise, smoothed, listwise and pointwise label files from the rewards, or from
imported human preferences (``labels.reward: human``).

A later online round takes its pairs by ``online.pairs`` and ``online.tie_threshold``.
Rewards that leave no pair at all (every candidate tied) stop here, naming the threshold to
change, instead of as an empty batch in every training job.
"""

from __future__ import annotations

from diffpref import datasources, labels, registry
from diffpref.io import InputError, atomic_dir, read_table

INPUTS = ("rewards",)  # recorded in MLflow as datasets with their digests


def run(ctx) -> None:
    cfg = ctx.cfg.labels
    # a later round's pairs: the online settings (its key named in the error below)
    src = "labels" if ctx.rnd == 1 else "online"
    select = cfg if ctx.rnd == 1 else ctx.cfg.online
    if cfg.reward == registry.HUMAN:  # imported human pairs (candidates.source: pickapic)
        prefs = read_table(
            ctx.cfg.path("candidates", "preferences.parquet"), ["prompt_id", "winner", "loser"]
        )
        scores, pairs = datasources.human_labels(prefs)
    else:
        path = ctx.data("rewards") / "rewards.parquet"
        rewards = read_table(path, ["prompt_id", "cand_idx", "reward", "score"])
        scores = labels.score_matrix(rewards, cfg.reward, str(path))
        pairs = labels.pairwise(scores, select.tie_threshold, select.pairs)
    if pairs.empty:
        raise InputError(
            f"labels: every candidate is tied: no pair differs by more than "
            f"{src}.tie_threshold={select.tie_threshold} on reward {cfg.reward!r}; lower the "
            "threshold or add candidates"
        )
    tables = {
        "pairwise": pairs,
        "smoothed": labels.smoothed(pairs, scores),
        "listwise": labels.listwise(scores, cfg.listwise_tau, cfg.listwise_standardize),
        "pointwise": labels.pointwise(scores, cfg.pointwise_threshold),
    }
    with atomic_dir(ctx.data("labels")) as tmp:
        for name, df in tables.items():
            df.to_parquet(tmp / f"{name}.parquet")
    n_possible = len(scores) * scores.shape[1] * (scores.shape[1] - 1) // 2
    ctx.run.log_metrics(
        {
            "n_pairs": len(pairs),
            "tie_fraction": 1 - len(pairs) / max(n_possible, 1) if select.pairs == "all" else 0.0,
            "mean_margin": float(pairs.margin.mean()),
            "n_desirable": int(tables["pointwise"].desirable.sum()),
            "n_lists": int(tables["listwise"].prompt_id.nunique()),
        }
    )
