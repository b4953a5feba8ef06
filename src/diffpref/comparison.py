"""Seed-aware comparison of the trained models: the numbers and verdicts of the report.

Every objective is trained on several seeds (``train_seeds``) and every seed is evaluated on
the same held-out prompts with the same sampling seeds as the base model. Estimates and
intervals come from :mod:`diffpref.statistics`' variance-components intervals over training
seeds and prompts (calibrated at 3-5 seeds), so a verdict reflects both seed-to-seed and
prompt-to-prompt variance; each verdict names its family and is given raw and Holm-adjusted
over that family; every inconclusive verdict says what the run could have detected and what
would decide it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats

from diffpref import evaluation
from diffpref import statistics as st
from diffpref.io import read_json, read_table
from diffpref.world.spec import ngram_words

if TYPE_CHECKING:
    from diffpref.config import Config

# Prompt subsets of the eval split (embedded world: generated with these flags). A prompt may
# be in both held-out subsets; "seen" prompts are in neither.
RATE, DIFFERENCE = (0.0, 1.0), (-1.0, 1.0)  # what a win rate (accuracy) and a difference can be
SPLITS = {
    "seen": "training wording and a training combination",
    "heldout_wording": "the held-out wording, never used in training: its own synonyms for "
    "every content word, determiners, number forms, clause orders and request phrases",
    "heldout_combo": "a class combination never used in training",
}


@dataclass
class Results:
    """Everything the report reads, loaded once: per-sample scores of every model (with a
    ``train_seed`` column; the base model's is -1), the eval prompts, per-seed metrics and the
    training prompts (their wording is what held-out wording is measured against).
    ``shared_seeds``: the objectives share their training seeds (one seed list, and
    ``train.seed_streams`` shared), so two of them are compared paired by training seed."""

    scores: dict[str, pd.DataFrame]
    prompts: pd.DataFrame
    eval_metrics: dict[str, list[dict]]
    train_metrics: dict[str, list[dict]]
    seeds: list[int]
    train_prompts: list[str] = field(default_factory=list)
    shared_seeds: bool = True
    # the base's yardsticks (diffpref.yardsticks: yardstick, prompt_id, seed, reward, score)
    yardsticks: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def objectives(self) -> list[str]:
        return [n for n in self.scores if n != "base"]


SCORE_COLUMNS = ["prompt_id", "seed", "reward", "score"]


def read_model(
    cfg: Config, objective: str, variant: str = "round1"
) -> tuple[pd.DataFrame, list[dict], list[dict]]:
    """One trained model over every training seed: its per-sample scores (``train_seed``
    column), per-seed eval metrics and per-seed train metrics (``variant``: its folder)."""
    frames, evm, trm = [], [], []
    for s in cfg.train_seeds:
        d = cfg.model_dir("eval", objective, s, variant)
        frames.append(read_table(d / "scores.parquet", SCORE_COLUMNS).assign(train_seed=s))
        evm.append(read_json(d / "metrics.json"))
        adapter = cfg.model_dir("adapters", objective, s, variant)
        trm.append(read_json(adapter / "train_metrics.json"))
    return pd.concat(frames, ignore_index=True), evm, trm


def load(cfg: Config) -> Results:
    """Every model's per-sample scores and metrics, for the objectives and seeds of ``cfg``."""
    base = cfg.path("eval", "base")
    scores = {"base": read_table(base / "scores.parquet", SCORE_COLUMNS).assign(train_seed=-1)}
    evm = {"base": [read_json(base / "metrics.json")]}
    trm: dict[str, list[dict]] = {}
    for o in cfg.objectives:
        scores[o], evm[o], trm[o] = read_model(cfg, o)
    prompts = read_table(cfg.eval_prompts(), ["prompt_id", "prompt"])
    train = read_table(cfg.path("prompts", "train.parquet"), ["prompt"])
    shared = cfg.train.seed_streams == "shared"
    yard = read_table(base / "yardsticks.parquet", ["yardstick", *SCORE_COLUMNS])
    return Results(
        scores, prompts, evm, trm, list(cfg.train_seeds), list(train.prompt), shared, yard
    )


class Comparison:
    """Seed-aware estimates of every model on one reward, with shared interval settings
    (``n_draws`` fiducial draws per interval, seeded with ``seed``)."""

    def __init__(self, res: Results, reward: str, n_draws: int, tie: float, seed: int = 0):
        self.res, self.reward, self.n_draws, self.tie, self.seed = res, reward, n_draws, tie, seed
        base = res.scores["base"]
        self.base = base[base.reward == reward]
        self.prompt_ids = sorted(set(self.base.prompt_id))
        self._win: dict[tuple[str, ...], dict[str, dict]] = {}
        self._win_mats: dict[str, np.ndarray] | None = None

    def _scores(self, name: str, reward: str | None = None) -> pd.DataFrame:
        df = self.res.scores[name]
        return df[df.reward == (reward or self.reward)]

    def wins(self, name: str) -> pd.DataFrame:
        return evaluation.win_values(self._scores(name), self.base, self.tie)

    def matrices(
        self,
        column: str,
        prompts: list[str] | None = None,
        *,
        wins: bool = False,
        reward: str | None = None,
        names: list[str] | None = None,
    ) -> dict:
        """model -> M[train seed, prompt] of ``column`` (``wins``: the win vs base)."""
        prompts = prompts or self.prompt_ids
        names = names or (self.res.objectives if wins else list(self.res.scores))
        out = {}
        for n in names:
            df = self.wins(n) if wins else self._scores(n, reward)
            out[n] = st.seed_matrix(df[df.prompt_id.isin(prompts)], column, prompts)
        return out

    def win_matrices(self) -> dict[str, np.ndarray]:
        """Every objective's M[train seed, prompt] of its win vs base, computed once."""
        if self._win_mats is None:
            self._win_mats = self.matrices("win", wins=True)
        return self._win_mats

    def win_vs_base(self, prompts: list[str] | None = None) -> dict[str, dict]:
        key = tuple(prompts or self.prompt_ids)
        if key not in self._win:
            mats = self.win_matrices()
            if prompts:  # a subset: the matching columns of the full matrices
                cols = [self.prompt_ids.index(p) for p in prompts]
                mats = {n: m[:, cols] for n, m in mats.items()}
            self._win[key] = {
                n: st.seed_estimate(mats, n, 0.5, self.n_draws, self.seed, RATE) for n in mats
            }
        return self._win[key]

    def win_iqm(self, name: str) -> float:
        """rliable's IQM of the win rate over runs x tasks: per (training seed, prompt
        category) win rates pooled, 25% trimmed each side (3 per-seed values alone trim
        nothing; without categories it is the mean)."""
        return st.iqm(st.task_scores(self.wins(name), "win"))

    def reward_means(self, reward: str) -> dict[str, dict]:
        mats = self.matrices("score", reward=reward)
        return {
            n: st.seed_estimate(mats, n, mats["base"].mean(), self.n_draws, self.seed) for n in mats
        }

    def splits(self) -> dict[str, list[str]]:
        """Prompt ids of each wording/combination subset (empty without the world's flags)."""
        p = self.res.prompts
        if not {"heldout_template", "heldout_combo"} <= set(p.columns):
            return {}
        t, c = p.heldout_template.astype(bool), p.heldout_combo.astype(bool)
        masks = {"seen": ~t & ~c, "heldout_wording": t, "heldout_combo": c}
        return {k: sorted(p.prompt_id[m]) for k, m in masks.items() if m.any()}

    def paired(self, a: str, b: str) -> bool:
        """Whether ``a`` vs ``b`` is analysed paired by training seed: two trained models
        whose seeds the design shares (never the base, one fixed model)."""
        return self.res.shared_seeds and "base" not in (a, b)

    def poi_matrix(self) -> pd.DataFrame:
        """P(row > column) with its CI for every pair of models (:func:`statistics.improvement`):
        for two objectives sharing their training seeds, the chance that a seed of one scores
        a higher mean reward over the held-out prompts than the same seed of the other, else
        that a random seed of one beats a random seed of the other (the base: one fixed run);
        each pair computed once and mirrored, with ``analysis`` and the observed share of seed
        pairs (``seed_pairs``: same-seed pairs when paired, every pair as rliable otherwise)."""
        names = list(self.res.scores)
        per_seed = {n: self.matrices("score", names=[n])[n].mean(1) for n in names}
        rows = []
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                paired = self.paired(a, b)
                x, y = per_seed[a], per_seed[b]
                p, lo, hi = (
                    float(v) for v in st.improvement(x, y, self.n_draws, self.seed, paired=paired)
                )
                if paired:  # the share of seeds r whose run of a beats the run of b at r
                    x, y = x - y, np.zeros(1)
                u = st.probability_of_improvement(x[:, None], y[:, None])
                how = st.PAIRED if paired else st.UNPAIRED
                rows.append(
                    {"model": a, "versus": b, "p": p, "ci_low": lo, "ci_high": hi}
                    | {"seed_pairs": u, "analysis": how}
                )
                rows.append(
                    {"model": b, "versus": a, "p": 1 - p, "ci_low": 1 - hi, "ci_high": 1 - lo}
                    | {"seed_pairs": 1 - u, "analysis": how}
                )
        order = {n: k for k, n in enumerate(names)}
        cols = ["model", "versus", "p", "ci_low", "ci_high", "seed_pairs", "analysis"]
        df = pd.DataFrame(rows, columns=cols)
        return df.sort_values(["model", "versus"], key=lambda c: c.map(order)).reset_index(
            drop=True
        )


def comparison_table(cmp: Comparison, rewards: list[str]) -> pd.DataFrame:
    """One row per model: seed-aware win rate vs base and mean rewards with CIs, per-seed
    spread, accuracy, diversity and training cost (means over seeds)."""
    res = cmp.res
    win = cmp.win_vs_base()
    holm = beats_base_holm(cmp)
    means = {r: cmp.reward_means(r) for r in rewards}
    rows = []
    for n in [*res.objectives, "base"]:
        row: dict = {"model": n, "n_seeds": 0 if n == "base" else len(res.seeds)}
        if n != "base":
            w = win[n]
            row.update(
                win_vs_base=w["mean"],
                win_vs_base_ci=_ci(w),
                win_vs_base_ci_low=w["ci_low"],
                win_vs_base_ci_high=w["ci_high"],
                win_p_value=w["p_value"],
                win_p_holm=holm[n],
                beats_base=WORD[_verdict(w["ci_low"], w["ci_high"], 0.5)],
                beats_base_holm=WORD[_adjusted(w["mean"], holm[n], 0.5)],
                win_iqm=cmp.win_iqm(n),
                win_seed_sd=w["seed_sd"],
                win_seed_sd_upper=w["seed_sd_upper"],
                win_seed_share=w["seed_share"],
                win_per_seed=" ".join(f"{v:.3f}" for v in w["per_seed"]),
            )
        for r in rewards:
            row[f"{r}_mean"] = means[r][n]["mean"]
            row[f"{r}_ci"] = _ci(means[r][n])
            row[f"{r}_ci_low"], row[f"{r}_ci_high"] = means[r][n]["ci_low"], means[r][n]["ci_high"]
        evm = res.eval_metrics[n]
        for cat in evm[0]["accuracy"].get(cmp.reward, {}):
            row[f"acc_{cat}"] = float(np.mean([m["accuracy"][cmp.reward][cat] for m in evm]))
        row["diversity"] = float(np.mean([m["diversity"] for m in evm]))
        if n in res.train_metrics:
            fits = [training_fit(t["history"]) for t in res.train_metrics[n]]
            summ = [t["summary"] for t in res.train_metrics[n]]
            row.update(
                train_fit_metric=fits[0][0],
                train_fit=float(np.mean([f for _, f in fits])),
                **{k: float(np.mean([s[k] for s in summ])) for k in TRAIN_COST},
            )
        rows.append(row)
    # base first, columns in an objective row's order (the base has no win or cost columns)
    return pd.DataFrame(
        [rows[-1], *rows[:-1]], columns=list(dict.fromkeys(k for r in rows for k in r))
    )


def label_win_rates(cmp: Comparison, label: str) -> pd.DataFrame:
    """Each objective's win rate vs base on the label reward ``label`` (same ties and draws as
    ``cmp``), and ``label_minus_judge``: that win rate minus the judge's (``cmp.reward``) on
    the same (training seed, prompt) cells, with its interval. A positive difference is gain
    the label model sees and the judge does not: over-optimisation of the label model."""
    on_label = Comparison(cmp.res, label, cmp.n_draws, cmp.tie, cmp.seed)
    label_win, judge_mats, label_mats = (
        on_label.win_vs_base(),
        cmp.win_matrices(),
        on_label.win_matrices(),
    )
    rows = []
    for n in cmp.res.objectives:
        diff = {n: label_mats[n] - judge_mats[n]}
        d = st.seed_estimate(diff, n, 0.0, cmp.n_draws, cmp.seed, DIFFERENCE)
        rows.append(
            {
                "model": n,
                "label_win_vs_base": label_win[n]["mean"],
                "label_win_vs_base_ci": _ci(label_win[n]),
                "label_minus_judge": d["mean"],
                "label_minus_judge_ci": _ci(d),
            }
        )
    return pd.DataFrame(rows)


TRAIN_COST = ("train_time_s", "groups_per_s", "peak_memory_mb", "trainable_params")
FIT_METRICS = ("implicit_acc", "contrastive_acc", "pl_acc")


def training_fit(history: list[dict[str, float]]) -> tuple[str, float]:
    """How well an objective fits its own training groups: (metric, its mean over the last
    quarter of training); ``("", nan)`` for objectives that log no accuracy (SFT)."""
    tail = history[-max(1, len(history) // 4) :]
    for key in FIT_METRICS:
        vals = [h[key] for h in tail if key in h]
        if vals:
            return key, float(np.mean(vals))
    return "", float("nan")


def _ci(e: dict) -> str:
    return f"[{e['ci_low']:.3f}, {e['ci_high']:.3f}]"


def split_table(cmp: Comparison) -> pd.DataFrame:
    """Win rate vs base and mean reward per model in each prompt subset, with the same
    calibrated intervals as the whole set (a subset's own prompts and the same seeds)."""
    rows = []
    for split, ids in cmp.splits().items():
        win = cmp.win_vs_base(ids)
        mats = cmp.matrices("score", ids)
        for n in cmp.res.objectives:
            m = st.seed_estimate(mats, n, mats["base"].mean(), cmp.n_draws, cmp.seed)
            w = win[n]
            rows.append(
                {
                    "model": n,
                    "split": split,
                    "n_prompts": len(ids),
                    "win_vs_base": w["mean"],
                    "win_vs_base_ci": _ci(w),
                    "win_ci_low": w["ci_low"],
                    "win_ci_high": w["ci_high"],
                    "win_p_value": w["p_value"],
                    f"{cmp.reward}_mean": m["mean"],
                    f"{cmp.reward}_ci": _ci(m),
                    f"base_{cmp.reward}": float(mats["base"].mean()),
                }
            )
    return pd.DataFrame(rows)


# the yardsticks the base's evaluation writes (diffpref.yardsticks; not imported: the report
# needs none of its sampling code) and their names in the report
YARDSTICK_NAMES = {
    "best_of_k": "base best-of-K",
    "vae_ceiling": "VAE ceiling",
    "real": "real canvases",
}
GAP_YARDSTICKS = ("best_of_k", "vae_ceiling")


def _yardstick(cmp: Comparison, name: str, reward: str | None = None) -> pd.DataFrame:
    """One yardstick's scores on one reward (``cmp.reward`` by default), as a model with no
    training seed (``train_seed`` -1, like the base)."""
    y = cmp.res.yardsticks
    sel = y[(y.yardstick == name) & (y.reward == (reward or cmp.reward))]
    return sel.assign(train_seed=-1)


def yardstick_table(cmp: Comparison, rewards: list[str]) -> pd.DataFrame:
    """The base and each yardstick: the mean of every reward with its interval (prompts; no
    training seeds), and the yardstick's win rate against the base on ``cmp.reward`` over the
    same (prompt, sampling seed) samples."""
    names = [n for n in YARDSTICK_NAMES if n in set(cmp.res.yardsticks.get("yardstick", []))]
    rows = []
    for n in ["base", *names]:
        row: dict = {"model": n if n == "base" else YARDSTICK_NAMES[n]}
        if n != "base":
            wins = evaluation.win_values(_yardstick(cmp, n), cmp.base, cmp.tie)
            m = {n: st.seed_matrix(wins, "win", cmp.prompt_ids)}
            w = st.seed_estimate(m, n, 0.5, cmp.n_draws, cmp.seed, RATE)
            row.update(win_vs_base=w["mean"], win_vs_base_ci=_ci(w))
        for r in rewards:
            df = cmp._scores("base", r) if n == "base" else _yardstick(cmp, n, r)
            m = {n: st.seed_matrix(df, "score", cmp.prompt_ids)}
            e = st.seed_estimate(m, n, 0.0, cmp.n_draws, cmp.seed)
            row[f"{r}_mean"], row[f"{r}_ci"] = e["mean"], _ci(e)
        rows.append(row)
    return pd.DataFrame(rows)


GAP_LIMIT = 100.0  # |gap closed| beyond this many times the yardstick's lead: unbounded


def gap_closed(
    model: np.ndarray, base: np.ndarray, yardstick: np.ndarray, n_draws: int, seed: int = 0
) -> dict[str, float]:
    """How much of the base-to-yardstick distance a model covered: ``(model - base) /
    (yardstick - base)`` on mean rewards, each a M[training seed, prompt] matrix over the same
    prompts (the base's and the yardstick's one row).

    The interval is Fieller's, by test inversion: every ratio t whose contrast ``(model - base)
    - t (yardstick - base)`` the report's fiducial variance-components test does not reject at
    5%. So it has that test's calibration at 3-5 training seeds, keeps the correlation of
    numerator and denominator over prompts, and assumes no normal ratio. When the yardstick's
    own lead over the base has an interval that reaches 0, the set is unbounded: no interval,
    and ``defined`` is False."""
    reach_sq = st.squares([yardstick, base], [1.0, -1.0])
    r_lo, r_hi, _ = st.fiducial_interval(reach_sq, n_draws, seed)
    gain, reach = float(model.mean() - base.mean()), float(yardstick.mean() - base.mean())
    out = {
        "gain": gain,
        "reach": reach,
        "reach_ci_low": float(r_lo),
        "reach_ci_high": float(r_hi),
        "defined": bool(r_lo > 0),
        "gap_closed": gain / reach if reach else float("nan"),
        "ci_low": float("nan"),
        "ci_high": float("nan"),
    }
    if out["defined"]:

        def kept(t: float) -> bool:  # t is inside the interval
            sq = st.squares([model, (t - 1) * base - t * yardstick], [1.0, 1.0])
            return float(st.fiducial_interval(sq, n_draws, seed)[2]) >= 1 - st.CONFIDENCE

        out["ci_low"], out["ci_high"] = (_edge(kept, out["gap_closed"], d) for d in (-1, 1))
    return out


def _edge(kept: Callable[[float], bool], start: float, direction: int, steps: int = 20) -> float:
    """The last ratio kept going from ``start`` (kept) in ``direction``: doubling steps until
    one is rejected, then bisection; +-inf past :data:`GAP_LIMIT`."""
    inner, step = start, 0.05
    while kept(start + direction * step):
        inner, step = start + direction * step, 2 * step
        if step > GAP_LIMIT:
            return direction * float("inf")
    outer = start + direction * step
    for _ in range(steps):
        mid = (inner + outer) / 2
        inner, outer = (mid, outer) if kept(mid) else (inner, mid)
    return inner


def gap_table(cmp: Comparison) -> pd.DataFrame:
    """Every objective's gap closed toward best-of-K and the VAE ceiling on ``cmp.reward``, per
    prompt subset, the training-wording one first (``scope``: where preference data acts, or
    transfer), then all prompts."""
    names = [n for n in GAP_YARDSTICKS if n in set(cmp.res.yardsticks.get("yardstick", []))]
    subsets = {**cmp.splits(), "all": cmp.prompt_ids}
    rows = []
    for split, ids in subsets.items():
        mats = cmp.matrices("score", ids)
        scope = {"seen": "headline", "all": "all prompts"}.get(split, "transfer")
        for y in names:
            ym = st.seed_matrix(_yardstick(cmp, y), "score", ids)
            for n in cmp.res.objectives:
                g = gap_closed(mats[n], mats["base"], ym, cmp.n_draws, cmp.seed)
                ci = f"[{g['ci_low']:.2f}, {g['ci_high']:.2f}]" if g["defined"] else "undefined"
                reach_ci = f"[{g['reach_ci_low']:+.3f}, {g['reach_ci_high']:+.3f}]"
                rows.append(
                    {
                        "model": n,
                        "split": split,
                        "scope": scope,
                        "n_prompts": len(ids),
                        "yardstick": YARDSTICK_NAMES[y],
                        "model_minus_base": g["gain"],
                        "yardstick_minus_base": g["reach"],
                        "yardstick_minus_base_ci": reach_ci,
                        "gap_closed": g["gap_closed"],
                        "gap_closed_ci": ci,
                        "gap_ci_low": g["ci_low"],
                        "gap_ci_high": g["ci_high"],
                    }
                )
    return pd.DataFrame(rows)


def headline(splits: pd.DataFrame, gaps: pd.DataFrame) -> pd.DataFrame:
    """Per objective, the numbers on training wording (the `seen` subset), where preference
    pairs can act: the win rate vs base and the gap closed toward the base's best-of-K, each
    with its interval; empty without the subsets (a prompt file)."""
    if splits.empty or "seen" not in set(splits.split):
        return pd.DataFrame(columns=["model"])
    seen = splits[splits.split == "seen"][["model", "win_vs_base", "win_vs_base_ci"]]
    out = seen.rename(columns={"win_vs_base": "seen_win", "win_vs_base_ci": "seen_win_ci"})
    best = gaps[(gaps.split == "seen") & (gaps.yardstick == YARDSTICK_NAMES["best_of_k"])]
    if not best.empty:
        cols = {"gap_closed": "seen_gap_best_of_k", "gap_closed_ci": "seen_gap_best_of_k_ci"}
        out = out.merge(best[["model", *cols]].rename(columns=cols), on="model", how="left")
    return out


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The distinct word n-grams of ``text`` (words as the world's parser reads them)."""
    w = ngram_words(text)
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def ngram_overlap(reference: list[str], texts: list[str], n: int) -> float:
    """The share of the distinct word n-grams of ``texts`` that also occur in ``reference``:
    1 when every phrase was seen, 0 when nothing was."""
    ref = set().union(*(ngrams(t, n) for t in reference)) if reference else set()
    got = set().union(*(ngrams(t, n) for t in texts)) if texts else set()
    return len(got & ref) / len(got) if got else float("nan")


OVERLAP_N = (1, 2, 3)


def wording_overlap(res: Results) -> pd.DataFrame:
    """How far each eval-prompt subset's wording is from the training prompts' wording: the
    share of its distinct word n-grams that occur in a training prompt (seen-wording prompts
    are the reference: ~1 by construction). Empty without the world's subsets or train
    prompts."""
    p = res.prompts
    if not res.train_prompts or "heldout_template" not in p:
        return pd.DataFrame()
    held = p.heldout_template.astype(bool)
    rows = []
    for name, mask in (("heldout_wording", held), ("training wording (eval prompts)", ~held)):
        texts = list(p.prompt[mask])
        if texts:
            row = {"prompts": name, "n_prompts": len(texts)}
            row |= {f"{k}-grams": ngram_overlap(res.train_prompts, texts, k) for k in OVERLAP_N}
            rows.append(row)
    return pd.DataFrame(rows)


def _verdict(lo: float, hi: float, null: float) -> str:
    if lo > null:
        return "supported"
    if hi < null:
        return "contradicted"
    return "inconclusive"


def _adjusted(estimate: float, p_adjusted: float, null: float, alpha: float = 0.05) -> str:
    """The verdict at family-wise level ``alpha`` from a Holm-adjusted p-value."""
    if p_adjusted > alpha:
        return "inconclusive"
    return "supported" if estimate > null else "contradicted"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _p_value(p: float) -> str:
    """A p-value as a table cell prints it: three decimals, or "< 0.001"."""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _p(p: float) -> str:
    return f"p {_p_value(p)}" if p < 0.001 else f"p = {_p_value(p)}"


MAX_SCALE = 20  # beyond this many times the data, "how much more" stops being useful advice


def power_note(e: dict, what: str, n_seeds: int, n_prompts: int) -> str:
    """What an inconclusive result could have detected and what would decide it: the 95%
    half-width (an estimate that large is just shown; a true effect that large only about
    half the time) and the effect detected with 80% power, each named."""
    parts = [
        f"this run shows a {what} beyond ±{e['half_width']:.3f} (95% CI half-width) and "
        f"detects one of ±{e['detectable_80']:.3f} with 80% power"
    ]
    seeds, prompts, k = e.get("seeds_needed"), e.get("prompts_needed"), e.get("scale_both")
    if seeds and seeds <= n_seeds:
        parts.append(
            f"a difference of the observed size ({e['effect']:+.3f}) is within this design's "
            "80% power, so missing it here is chance or the interval's caution at few seeds"
        )
    else:
        need = []
        if seeds:
            need.append(f"~{seeds} training seeds at {n_prompts} prompts")
        if prompts:
            need.append(f"~{prompts} prompts at {n_seeds} seeds")
        if k and k <= MAX_SCALE:
            need.append(
                f"~{int(np.ceil(n_seeds * k))} seeds and ~{int(np.ceil(n_prompts * k))} "
                "prompts together"
            )
        elif k:
            need.append(
                f"more than {MAX_SCALE}x as many seeds and prompts: the observed difference "
                f"({e['effect']:+.3f}) is negligible at any practical scale"
            )
        if need:
            parts.append(
                "detecting the observed difference (80% power) would take " + " or ".join(need)
            )
        elif e.get("effect") == 0:
            parts.append("no difference was observed at all")
    if n_seeds == 1:
        parts.append("with one training seed the seed-to-seed spread is not measured")
    return "; ".join(parts)


WIDE_SEED_SD = 0.2  # per-seed win rates spread wider than this: outside the calibration


def spread_note(seed_sds: list[float]) -> str:
    """Empty, or that a verdict is outside what was calibrated because per-seed win rates
    spread with an sd above :data:`WIDE_SEED_SD`: there the win rate's nonlinearity costs
    coverage (a difference 0.90-0.93 in the simulation, docs/statistics.md)."""
    wide = max((v for v in seed_sds if v == v), default=0.0)
    if wide <= WIDE_SEED_SD:
        return ""
    return (
        f"; **outside what was calibrated**: per-seed win rates spread with sd {wide:.2f} "
        f"(above {WIDE_SEED_SD} the win rate's nonlinearity costs coverage)"
    )


TWO_MODES = (
    "Outside what was calibrated: seeds that land in one of two basins (two-moded seed "
    "effects), which 2-5 seeds cannot tell from normal ones; when such seeds carry 90% of "
    "the variance the intervals cover only 0.75-0.88 at 2-3 seeds and 0.93 at 5 "
    "(docs/statistics.md)."
)

BEATS_BASE = "beats the base"
SEED_CLAIMS = "seed claims"


def beats_base_holm(cmp: Comparison) -> dict[str, float]:
    """Holm-adjusted p-values of the family "beats the base": every objective's win rate
    against 0.5 (one comparison per objective)."""
    win = cmp.win_vs_base()
    names = cmp.res.objectives
    return dict(zip(names, st.holm([win[n]["p_value"] for n in names]), strict=True))


def what_seeds_decide(cmp: Comparison) -> str:
    """What this run's seed count can and cannot decide about "beats the base", from its
    variance components projected to other seed counts (same prompts)."""
    win = cmp.win_vs_base()
    n_seeds, n_prompts = len(cmp.res.seeds), len(cmp.prompt_ids)
    if n_seeds < 2:
        return (
            "With one training seed per objective the seed-to-seed spread is not measured: "
            "every interval below is conditional on that seed, and no verdict says whether "
            "another seed would agree."
        )
    at = {
        r: float(np.nanmedian([e["half_width_at"][r] for e in win.values()]))
        for r in st.PLANNED_SEEDS
    }
    now = float(np.median([e["half_width"] for e in win.values()]))
    power = float(np.median([e["detectable_80"] for e in win.values()]))
    sd = float(np.nanmedian([e["seed_sd"] for e in win.values()]))
    upper = float(np.nanmedian([e["seed_sd_upper"] for e in win.values()]))
    share = float(np.nanmedian([e["seed_share"] for e in win.values()]))
    others = ", ".join(f"±{at[r]:.3f} at {r} seeds" for r in st.PLANNED_SEEDS if r != n_seeds)
    t = float(stats.t.ppf(0.975, n_seeds - 1))  # what a seed-dominated interval uses
    return (
        f"What {n_seeds} training seeds can decide here: a win rate is shown to differ from "
        f"0.5 only when the difference exceeds about ±{now:.3f} (the median 95% half-width "
        f"over objectives; projected from this run's variance components: {others}, at the "
        f"same {n_prompts} prompts), and a true gain is shown with 80% power from about "
        f"±{power:.3f}. Smaller gains, and rankings of objectives closer than "
        f"that, are beyond this run: **not shown** means undecided, not no effect. Training "
        f"seeds carry a median {share:.0%} of the variance (between-seed sd "
        f"{seed_sd(sd, upper)}, evaluation noise removed), and with {n_seeds} seeds their part "
        "of each interval "
        f"rests on {n_seeds - 1} degree{'s' if n_seeds > 2 else ''} of freedom (t = {t:.2f}, "
        "against 1.96 for a known spread). Family: every verdict below belongs to the family "
        f'"{BEATS_BASE}" ({_count(len(win), "comparison")}, one per objective); each is given '
        "at 95% on its own (raw) and Holm-adjusted so that the chance of any false yes/no in the "
        "family stays under 5%. Two objectives are compared "
        + (
            f"{st.PAIRED} (they share seeds, init, batches and noise: one difference per "
            "seed and prompt)"
            if cmp.res.shared_seeds
            else f"{st.UNPAIRED} (train.seed_streams independent)"
        )
        + f", as the design fixes it. {TWO_MODES}"
    )


WORD = {"supported": "yes", "contradicted": "no, worse", "inconclusive": "not shown"}


@dataclass(frozen=True)
class Verdict:
    """One decided comparison, a row of the report's verdict tables: the estimate and its
    interval, the raw and family-adjusted verdicts (supported / contradicted / inconclusive),
    what the run could decide (the 95% half-width and the effect detected with 80% power),
    and its explanation, printed as a numbered note under the table."""

    subject: str
    estimate: float
    ci_low: float
    ci_high: float
    p_value: float
    p_holm: float
    raw: str
    holm: str
    half_width: float
    detectable_80: float
    note: str


def verdict_table(verdicts: list[Verdict], subject: str, estimate: str) -> pd.DataFrame:
    """The verdicts as one table, a row each; ``note`` points at the numbered explanation."""
    return pd.DataFrame(
        [
            {
                subject: v.subject,
                estimate: v.estimate,
                "95% CI": f"[{v.ci_low:.3f}, {v.ci_high:.3f}]",
                "p": _p_value(v.p_value),
                "verdict": WORD[v.raw],
                "Holm": f"{WORD[v.holm]} ({_p_value(v.p_holm)})",
                "shown beyond ±": v.half_width,
                "80% power at ±": v.detectable_80,
                "note": f"[{i}]",
            }
            for i, v in enumerate(verdicts, 1)
        ]
    )


def verdict_notes(verdicts: list[Verdict]) -> str:
    """The numbered explanations of :func:`verdict_table`'s rows (Markdown)."""
    return "\n".join(f"{i}. **{v.subject}**: {v.note}" for i, v in enumerate(verdicts, 1))


def beats_base(cmp: Comparison, table: pd.DataFrame, splits: pd.DataFrame) -> list[Verdict]:
    """Per objective: does it beat the base on held-out prompts (calibrated CI; raw and
    Holm-adjusted over the family), and in its note what the run could detect when it cannot
    tell, whether a gain carries over to unseen wording, and what the run shows about why
    (training fit vs transfer, side effects)."""
    reward = cmp.reward
    base = table[table.model == "base"].iloc[0]
    win = cmp.win_vs_base()
    holm = beats_base_holm(cmp)
    n_seeds, n_prompts = len(cmp.res.seeds), len(cmp.prompt_ids)
    out = []
    for r in table.to_dict("records"):
        n = r["model"]
        if n == "base":
            continue
        e = win[n]
        lo, hi = e["ci_low"], e["ci_high"]
        facts = [f"mean {reward} {r[f'{reward}_mean'] - base[f'{reward}_mean']:+.3f} vs base"]
        for c in table.columns:
            if c.endswith("_mean") and c != f"{reward}_mean":
                facts.append(f"{c[:-5]} {r[c] - base[c]:+.3f}")
        facts.append(f"diversity x{r['diversity'] / base['diversity']:.2f}")
        spread = (
            f"per seed {r['win_per_seed']}, IQM over seeds × categories {r['win_iqm']:.3f}, "
            f"between-seed sd {seed_sd(e['seed_sd'], e['seed_sd_upper'])}"
            if n_seeds > 1
            else "one training seed"
        )
        note = f"{n_seeds} seeds × {n_prompts} prompts ({spread}); {', '.join(facts)}"
        if lo <= 0.5 <= hi:
            note += "; " + power_note(e, "win-rate difference from 0.5", n_seeds, n_prompts)
        note += spread_note([e["seed_sd"]])
        note += _why(r, lo)
        note += _carries_over(splits, n, lo)
        raw, fam = _verdict(lo, hi, 0.5), _adjusted(e["mean"], holm[n], 0.5)
        out.append(
            Verdict(
                n,
                e["mean"],
                lo,
                hi,
                e["p_value"],
                holm[n],
                raw,
                fam,
                e["half_width"],
                e["detectable_80"],
                note,
            )
        )
    return out


def seed_sd(sd: float, upper: float) -> str:
    """The between-seed sd, or its 95% upper bound where the estimate truncates to 0 (or
    prints as 0.000): "small", not "none"."""
    if sd >= 0.0005:
        return f"{sd:.3f}"
    return f"< {upper:.3f} (95% upper bound; the estimate is 0)"


def _why(r: dict, lo: float) -> str:
    fit = r.get("train_fit", float("nan"))
    if lo > 0.5 or not np.isfinite(fit):
        return ""
    if r.get("train_fit_metric") != "implicit_acc":  # caption matching: chance 1/batch
        return f"; its training caption-matching accuracy is {fit:.2f}"
    if fit < 0.6:
        return (
            f"; it barely separates its own training pairs (training accuracy {fit:.2f}, "
            "chance 0.50): under-trained at these settings"
        )
    return (
        f"; it fits its training groups (training accuracy {fit:.2f}) but that does not "
        "carry over to held-out prompts"
    )


def _carries_over(splits: pd.DataFrame, name: str, lo: float) -> str:
    """For an objective that beats the base overall: does the gain hold on unseen wording?"""
    if splits.empty or lo <= 0.5:
        return ""
    s = splits[splits.model == name].set_index("split")
    notes = []
    for split, label in (
        ("heldout_wording", "held-out wording"),
        ("heldout_combo", "held-out combinations"),
    ):
        if split in s.index and s.loc[split, "win_ci_low"] <= 0.5:
            notes.append(
                f"{label} ({s.loc[split, 'win_vs_base']:.3f} {s.loc[split, 'win_vs_base_ci']})"
            )
    if not notes:
        return "; the gain holds on held-out wording and combinations"
    return "; the gain is **not shown to carry over** to " + " or ".join(notes)


def wording_summary(cmp: Comparison, table: pd.DataFrame, splits: pd.DataFrame) -> str:
    """Whether the ranking on all held-out prompts survives new wording: the best objective
    on all prompts, and the best on held-out wording; when they differ, the held-out-wording
    leader's lead over the overall winner is tested as its own contrast (their seed-aware
    difference on the held-out-wording prompts, paired as the design fixes), never read off
    two point estimates."""
    if splits.empty or "heldout_wording" not in set(splits.split):
        return ""
    held = splits[splits.split == "heldout_wording"].set_index("model")
    objectives = table[table.model != "base"].set_index("model")
    if objectives.empty:
        return ""
    top = objectives.win_vs_base.idxmax()
    top_held = held.win_vs_base.idxmax()
    line = (
        f"Best on all held-out prompts: {top} ({objectives.win_vs_base[top]:.3f}); on "
        f"held-out wording it scores {held.win_vs_base[top]:.3f} {held.win_vs_base_ci[top]}"
    )
    if top_held == top:
        return line + "."
    ids = cmp.splits()["heldout_wording"]
    cols = [cmp.prompt_ids.index(i) for i in ids]
    mats = {n: m[:, cols] for n, m in cmp.win_matrices().items()}
    d = st.seed_difference(
        mats, top_held, top, cmp.n_draws, cmp.seed, DIFFERENCE, paired=cmp.paired(top_held, top)
    )
    shown = d["ci_low"] > 0
    return line + (
        f", while {top_held} leads there with {held.win_vs_base[top_held]:.3f} "
        f"{held.win_vs_base_ci[top_held]}: its lead over {top} on the {len(ids)} held-out-wording "
        f"prompts, tested as its own contrast, is {_difference(d)} ({_p(d['p_value'])}) — "
        + (
            "**shown**: the overall winner's lead does not carry over to new wording."
            if shown
            else "**not shown**: which of the two leads on new wording is undecided."
        )
    )


CLAIMS = [
    ("smpo", "dpo", "SmPO is above DPO"),
    ("lair", "dpo", "Listwise LAIR is above pairwise DPO"),
    ("dpo_rethink", "dpo", "Reference updates + timestep-aware training are above plain DPO"),
]


def seed_claims(
    cmp: Comparison, table: pd.DataFrame, poi: pd.DataFrame
) -> tuple[list[Verdict], list[str]]:
    """The seed papers' claims, each decided on calibrated intervals (honest either way): the
    statistical ones form the family "seed claims", Holm-adjusted (one :class:`Verdict`
    each); beside them, lines for MaPO's speed claim (a per-seed comparison of measured
    throughput, outside the family) and the claims that did not run."""
    row = {r["model"]: r for r in table.to_dict("records")}
    n_prompts = len(cmp.prompt_ids)
    names = set(cmp.res.objectives)
    decided: list[tuple[str, dict, str, int]] = []  # the family: claim, difference, detail, P
    lines = [_mapo_claim(cmp, row)]
    for a, b, claim in CLAIMS:
        if not {a, b} <= names:
            lines.append(f"- {claim}: not run (needs objectives `{a}` and `{b}`)")
            continue
        paired = cmp.paired(a, b)
        mats = cmp.win_matrices()
        d = st.seed_difference(mats, a, b, cmp.n_draws, cmp.seed, DIFFERENCE, paired=paired)
        p = poi[(poi.model == a) & (poi.versus == b)].iloc[0]
        who = "a seed of each against the same seed" if paired else "a random training seed of each"
        detail = (
            f"win rate vs base {row[a]['win_vs_base']:.3f} vs {row[b]['win_vs_base']:.3f}, "
            f"{_difference(d)}; P({a} > {b}) = {p.p:.2f} [{p.ci_low:.2f}, {p.ci_high:.2f}] "
            f"for {who} ({p.seed_pairs:.2f} of the {'same-' if paired else ''}seed pairs)"
        )
        win = cmp.win_vs_base()
        detail += spread_note([win[a]["seed_sd"], win[b]["seed_sd"]])
        decided.append((claim, d, detail, n_prompts))
    counting = _counting_claim(cmp)
    if isinstance(counting, str):
        lines.append(counting)
    else:
        decided.append(counting)
    adjusted = st.holm([d["p_value"] for _, d, _, _ in decided]) if decided else []
    verdicts = [
        _decided(claim, d, detail, n, p_adj)
        for (claim, d, detail, n), p_adj in zip(decided, adjusted, strict=True)
    ]
    return verdicts, lines


def _mapo_claim(cmp: Comparison, row: dict) -> str:
    if not {"mapo", "dpo"} <= set(cmp.res.objectives):
        return "- MaPO is faster and lighter than DPO: not run (needs `mapo` and `dpo`)"
    speed = {
        n: [t["summary"]["groups_per_s"] for t in cmp.res.train_metrics[n]] for n in ("mapo", "dpo")
    }
    m, d = row["mapo"], row["dpo"]
    faster = min(speed["mapo"]) > max(speed["dpo"])  # every seed's run, not just the means
    lighter = m["peak_memory_mb"] <= d["peak_memory_mb"]
    verdict = (
        "supported"
        if faster and lighter
        else "partly supported"
        if faster or lighter
        else "contradicted"
    )
    return (
        f"- MaPO is faster and lighter than DPO (no reference forward): **{verdict}** — "
        f"{m['groups_per_s']:.1f} vs {d['groups_per_s']:.1f} pairs/s "
        f"({m['groups_per_s'] / d['groups_per_s']:.2f}x; per seed "
        f"{' '.join(f'{v:.1f}' for v in speed['mapo'])} vs "
        f"{' '.join(f'{v:.1f}' for v in speed['dpo'])}), peak memory "
        f"{m['peak_memory_mb']:.0f} vs {d['peak_memory_mb']:.0f} MB (measured on every seed; "
        f'not a sampled quantity, so outside the family "{SEED_CLAIMS}")'
    )


def _counting_claim(cmp: Comparison) -> str | tuple[str, dict, str, int]:
    claim = "AGSM avoids SoftREPA's counting collapse"
    if not {"agsm", "softrepa"} <= set(cmp.res.objectives):
        return f"- {claim}: not run (needs `agsm`, `softrepa`)"
    p = cmp.res.prompts
    ids = sorted(p.prompt_id[p.category == "counting"]) if "category" in p else []
    if len(ids) < 2:
        return f"- {claim}: not testable (fewer than two counting prompts)"
    mats = cmp.matrices("correct", ids, names=["agsm", "softrepa", "base"])
    paired = cmp.paired("agsm", "softrepa")
    d = st.seed_difference(
        mats, "agsm", "softrepa", cmp.n_draws, cmp.seed, DIFFERENCE, paired=paired
    )
    detail = (
        f"counting accuracy AGSM {mats['agsm'].mean():.3f}, SoftREPA "
        f"{mats['softrepa'].mean():.3f}, base {mats['base'].mean():.3f}; {_difference(d)} over "
        f"{len(ids)} counting prompts"
    )
    return claim, d, detail, len(ids)


def _difference(d: dict) -> str:
    per_seed = (
        f", per seed {' '.join(f'{v:+.3f}' for v in d['per_seed'])}" if "per_seed" in d else ""
    )
    return (
        f"difference {d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] "
        f"({d['analysis']}{per_seed})"
    )


def _decided(claim: str, d: dict, detail: str, n_prompts: int, p_adj: float) -> Verdict:
    """A claim decided on a seed-aware difference's CI, raw and Holm-adjusted (``p_adj``)
    over its family, with the power note when undecided."""
    if d["ci_low"] <= 0 <= d["ci_high"]:
        detail += "; " + power_note(d, "difference", d["n_seeds"], n_prompts)
    return Verdict(
        claim,
        d["diff"],
        d["ci_low"],
        d["ci_high"],
        d["p_value"],
        p_adj,
        _verdict(d["ci_low"], d["ci_high"], 0.0),
        _adjusted(d["diff"], p_adj, 0.0),
        d["half_width"],
        d["detectable_80"],
        detail,
    )
