"""The report's online-rounds part: per round, each online objective's win rate vs base and
mean win reward; head-to-head, each round r >= 2 against its compute-matched offline control
(``matched<r>``: the same objective's round 1 continued offline on round 1's data to r x the steps);
the verdict "online rounds beat compute-matched offline training" for the last round; and what
the rounds cost beyond round 1.

The intervals are :mod:`diffpref.comparison`'s (variance components over training seeds x
prompts, fiducial pivots). A head-to-head is paired by training seed, always: round r of
training seed s against the control of the same seed s (both continue seed s's round 1, whatever
``train.seed_streams``: the streams are the objective's own), on the same prompt from the same
sampling seed, so its M[seed, prompt] is a win rate like a win vs base and gets the same
interval (the training seeds' pairs are independent of one another).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from diffpref import evaluation
from diffpref import statistics as st
from diffpref.comparison import (
    RATE,
    Comparison,
    Results,
    Verdict,
    _adjusted,
    _ci,
    _count,
    _verdict,
    power_note,
    read_model,
    spread_note,
)
from diffpref.config.schema import model_variant

if TYPE_CHECKING:
    from diffpref.config import Config

ONLINE_BEATS = "online beats compute-matched"  # the family of the last round's verdicts
CLAIM = "online rounds beat compute-matched offline training"


@dataclass
class Rounds:
    """Every online objective's models: per (objective, variant) its per-sample scores
    (``train_seed`` column) and per-seed train metrics; ``round1`` is the offline model."""

    objectives: list[str]
    last: int
    scores: dict[tuple[str, str], pd.DataFrame]
    train_metrics: dict[tuple[str, str], list[dict]]

    def variants(self) -> list[tuple[int, str, bool]]:
        """(round, folder, is the control) in report order: round1, round2, matched2, ..."""
        out = [(1, model_variant(1), False)]
        for r in range(2, self.last + 1):
            out += [(r, model_variant(r), False), (r, model_variant(r, True), True)]
        return out


def load(cfg: Config, res: Results) -> Rounds:
    """The later rounds and controls of ``cfg.online.objectives`` (round 1 from ``res``)."""
    objectives, last = list(cfg.online.objectives), cfg.online.last
    rd = Rounds(objectives, last, {}, {})
    for o in objectives:
        rd.scores[o, "round1"], rd.train_metrics[o, "round1"] = res.scores[o], res.train_metrics[o]
        for _, variant, _ in rd.variants()[1:]:
            scores, _, trm = read_model(cfg, o, variant)
            rd.scores[o, variant], rd.train_metrics[o, variant] = scores, trm
    return rd


def _on_reward(cmp: Comparison, df: pd.DataFrame) -> pd.DataFrame:
    return df[df.reward == cmp.reward]


def head_to_head(
    cmp: Comparison, ours: pd.DataFrame, theirs: pd.DataFrame, prompts: list[str]
) -> np.ndarray:
    """M[training seed, prompt] of ``ours`` beating ``theirs`` on the win reward, each
    training seed against the same seed of ``theirs`` on matched (prompt, sampling seed)
    samples (ties within the report's threshold count one half)."""
    a, b = _on_reward(cmp, ours), _on_reward(cmp, theirs)
    seeds = sorted(set(a.train_seed))
    if seeds != sorted(set(b.train_seed)):
        raise ValueError(
            f"head_to_head: training seeds {seeds} vs {sorted(set(b.train_seed))}: a round and "
            "its control need the same training seeds"
        )
    wins = pd.concat(
        [evaluation.win_values(a[a.train_seed == s], b[b.train_seed == s], cmp.tie) for s in seeds],
        ignore_index=True,
    )
    return st.seed_matrix(wins, "win", prompts)


def _estimate(
    cmp: Comparison, m: np.ndarray, null: float, bounds: tuple[float, float] | None = None
) -> dict:
    """One M[seed, prompt]'s seed-aware mean with the report's interval settings."""
    return st.seed_estimate({"m": m}, "m", null, cmp.n_draws, cmp.seed, bounds)


def versus_matched(cmp: Comparison, rd: Rounds, o: str, rnd: int, prompts: list[str]) -> dict:
    """Round ``rnd`` of ``o`` head-to-head against its compute-matched control: the win rate's
    seed-aware estimate against 0.5."""
    m = head_to_head(
        cmp,
        rd.scores[o, model_variant(rnd)],
        rd.scores[o, model_variant(rnd, True)],
        prompts,
    )
    return _estimate(cmp, m, 0.5, RATE)


def round_table(cmp: Comparison, rd: Rounds, prompts: list[str] | None = None) -> pd.DataFrame:
    """One row per (online objective, round, online model or control): win rate vs base and
    mean win reward with their intervals and, for an online round r >= 2, its head-to-head
    win rate against the control of round r; on ``prompts`` (all held-out ones by default)."""
    prompts = prompts or cmp.prompt_ids
    reward = cmp.reward
    base = float(st.seed_matrix(cmp.base, "score", prompts).mean())
    rows = []
    for o in rd.objectives:
        for rnd, variant, matched in rd.variants():
            df = _on_reward(cmp, rd.scores[o, variant])
            wins = evaluation.win_values(df, cmp.base, cmp.tie)
            w = _estimate(cmp, st.seed_matrix(wins, "win", prompts), 0.5, RATE)
            f = _estimate(cmp, st.seed_matrix(df, "score", prompts), base)
            row = {
                "model": o,
                "variant": variant,
                "round": rnd,
                "arm": "matched" if matched else "online",
                "n_seeds": w["n_seeds"],
                "win_vs_base": w["mean"],
                "win_vs_base_ci": _ci(w),
                "win_vs_base_ci_low": w["ci_low"],
                "win_vs_base_ci_high": w["ci_high"],
                "win_p_value": w["p_value"],
                f"{reward}_mean": f["mean"],
                f"{reward}_ci": _ci(f),
                f"{reward}_ci_low": f["ci_low"],
                f"{reward}_ci_high": f["ci_high"],
                f"base_{reward}": base,
            }
            if rnd > 1 and not matched:
                h = versus_matched(cmp, rd, o, rnd, prompts)
                row |= {
                    "vs_matched": h["mean"],
                    "vs_matched_ci": _ci(h),
                    "vs_matched_ci_low": h["ci_low"],
                    "vs_matched_ci_high": h["ci_high"],
                    "vs_matched_p_value": h["p_value"],
                    "vs_matched_per_seed": " ".join(f"{v:.3f}" for v in h["per_seed"]),
                }
            rows.append(row)
    return pd.DataFrame(rows)


def split_rounds(cmp: Comparison, rd: Rounds) -> pd.DataFrame:
    """:func:`round_table` on each prompt subset of :data:`comparison.SPLITS` (empty without
    the world's flags), with the same intervals on the subset's own prompts."""
    frames = [
        round_table(cmp, rd, ids).assign(split=split, n_prompts=len(ids))
        for split, ids in cmp.splits().items()
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def last_round_holm(table: pd.DataFrame, last: int) -> dict[str, float]:
    """Holm-adjusted p-values of the family "online beats compute-matched": the last round
    of every online objective against its control (one comparison per objective)."""
    t = table[(table["round"] == last) & (table.arm == "online")]
    return dict(zip(t.model, st.holm(list(t.vs_matched_p_value)), strict=True))


def verdicts(cmp: Comparison, rd: Rounds, table: pd.DataFrame) -> list[Verdict]:
    """Per online objective, whether its last round beats the compute-matched control (its
    head-to-head win rate): raw (95% CI against 0.5) and Holm-adjusted over the family; the
    note says what would decide it when the run cannot tell, and gives the win rate vs base
    round by round."""
    if rd.last < 2:
        return []
    holm = last_round_holm(table, rd.last)
    n_seeds, n_prompts, reward = len(cmp.res.seeds), len(cmp.prompt_ids), cmp.reward
    control = model_variant(rd.last, True)
    out = []
    for o in rd.objectives:
        e = versus_matched(cmp, rd, o, rd.last, cmp.prompt_ids)
        t = table[table.model == o]
        online = t[t.arm == "online"].sort_values("round")
        ctrl = t[t.variant == control].iloc[0]
        by_round = " → ".join(f"{v:.3f}" for v in online.win_vs_base)
        fid = " → ".join(f"{v:.3f}" for v in online[f"{reward}_mean"])
        per_seed = " ".join(f"{v:.3f}" for v in e["per_seed"])
        note = (
            f"{CLAIM}: round {rd.last} wins {e['mean']:.3f} {_ci(e)} of the matched "
            f"(prompt, sampling seed) samples against {control} (the same objective trained "
            f"offline for {rd.last} x the steps on round 1's data: round 1 continued), "
            f"{st.PAIRED} (each training seed against "
            f"the same seed's control), over {_count(n_seeds, 'training seed')} × "
            f"{n_prompts} prompts (per seed {per_seed}); win rate vs base by round {by_round} "
            f"(control {ctrl.win_vs_base:.3f}); mean {reward} by round {fid} (control "
            f"{ctrl[f'{reward}_mean']:.3f})"
        )
        if e["ci_low"] <= 0.5 <= e["ci_high"]:
            what = "head-to-head win-rate difference from 0.5"
            note += "; " + power_note(e, what, n_seeds, n_prompts)
        elif n_seeds == 1:
            note += (
                "; with one training seed this holds for that seed: seed-to-seed spread unmeasured"
            )
        out.append(
            Verdict(
                o,
                e["mean"],
                e["ci_low"],
                e["ci_high"],
                e["p_value"],
                holm[o],
                _verdict(e["ci_low"], e["ci_high"], 0.5),
                _adjusted(e["mean"], holm[o], 0.5),
                e["half_width"],
                e["detectable_80"],
                note + spread_note([e["seed_sd"]]),
            )
        )
    return out


def cost_table(rd: Rounds) -> pd.DataFrame:
    """Per (online objective, model): training steps, time and peak memory (means over
    training seeds) and the images sampled for its own training data beyond round 1's shared
    candidates, with their sampling wall time (sums over training seeds; 0 for round 1 and the
    controls, which train on round 1's candidates)."""
    rows = []
    for o in rd.objectives:
        for rnd, variant, matched in rd.variants():
            runs = rd.train_metrics[o, variant]
            summ = [t["summary"] for t in runs]
            sampled = [t.get("sampling") or {} for t in runs]
            rows.append(
                {
                    "model": o,
                    "variant": variant,
                    "round": rnd,
                    "reference": "previous round" if rnd > 1 and not matched else "base",
                    # optimizer steps since the base model (a control's job runs (r-1)/r of them)
                    "steps": float(
                        np.mean([t.get("total_steps", t["summary"]["steps"]) for t in runs])
                    ),
                    "train_time_s": float(np.mean([s["train_time_s"] for s in summ])),
                    "peak_memory_mb": float(np.mean([s["peak_memory_mb"] for s in summ])),
                    "extra_images": float(sum(s.get("images", 0) for s in sampled)),
                    "extra_sampling_time_s": float(
                        sum(s.get("sampling_time_s", 0.0) for s in sampled)
                    ),
                }
            )
    return pd.DataFrame(rows)


def cost_lines(rd: Rounds, costs: pd.DataFrame, n_seeds: int) -> list[str]:
    """Per online objective: the rounds' extra sampling (summed over rounds and seeds) and the
    last round's training time and peak memory next to round 1's and the control's."""
    out = []
    last, control = model_variant(rd.last), model_variant(rd.last, True)
    span = "round 2" if rd.last == 2 else f"rounds 2–{rd.last}"
    for o in rd.objectives:
        c = costs[costs.model == o].set_index("variant")
        one, end, ctrl = c.loc["round1"], c.loc[last], c.loc[control]
        out.append(
            f"- {o}: {span} sampled {c.extra_images.sum():.0f} extra images in "
            f"{c.extra_sampling_time_s.sum():.1f} s of sampling (summed over the rounds and "
            f"{_count(n_seeds, 'training seed')}); training round {rd.last} took "
            f"{end.train_time_s:.1f} s at {end.peak_memory_mb:.0f} MB peak vs round 1's "
            f"{one.train_time_s:.1f} s at {one.peak_memory_mb:.0f} MB; its compute-matched "
            f"control ({ctrl.steps:.0f} steps in all, no extra sampling) "
            f"{ctrl.train_time_s:.1f} s at "
            f"{ctrl.peak_memory_mb:.0f} MB"
        )
    return out


def dvc_metrics(table: pd.DataFrame, reward: str) -> dict[str, dict[str, float]]:
    """The headline numbers of every later round and control, one small file each
    (``results/metrics/<objective>.<variant>.json``; round 1 is ``<objective>.json``)."""
    keys = {
        "win_vs_base": "win",
        "win_vs_base_ci_low": "win_low",
        "win_vs_base_ci_high": "win_high",
        f"{reward}_mean": reward,
        "vs_matched": "vs_matched",
    }  # one column more than round 1's files in `dvc metrics show` (intervals: the report)
    out = {}
    for r in table[table["round"] > 1].to_dict("records"):
        out[f"{r['model']}.{r['variant']}"] = {
            short: round(float(r[k]), 4)
            for k, short in keys.items()
            if isinstance(r.get(k), float) and r[k] == r[k]  # a control: no vs_matched
        }
    return out
