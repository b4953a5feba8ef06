"""report: the seed-aware comparison table, verdicts, plots and a same-seed image grid, plus
the small files `dvc metrics` (``results/metrics/<model>.json``) and `dvc plots` read."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from diffpref import comparison, plots, registry, report, rounds
from diffpref import statistics as st
from diffpref.io import atomic_dir, read_json, write_json
from diffpref.report import Section

INPUTS = ("eval",)  # recorded in MLflow as datasets with their digests


def run(ctx) -> None:
    cfg = ctx.cfg
    res = cfg.path()
    ev = cfg.evaluate
    seeds = list(cfg.train_seeds)
    data = comparison.load(cfg)
    rewards = list(data.eval_metrics["base"][0]["reward"])
    cmp = comparison.Comparison(data, ev.judge, cfg.report.draws, ev.tie_threshold, cfg.seed)
    table = comparison.comparison_table(cmp, rewards)
    label = cfg.labels.reward
    if label not in (ev.judge, registry.HUMAN):  # the label model's own view, beside the judge's
        table = table.merge(comparison.label_win_rates(cmp, label), on="model", how="left")
    splits = comparison.split_table(cmp)
    yard = comparison.yardstick_table(cmp, rewards)
    gaps = comparison.gap_table(cmp)
    table = table.merge(comparison.headline(splits, gaps), on="model", how="left")
    poi = cmp.poi_matrix()
    world = read_json(res / "world" / "metrics.json")
    online = _online(cfg, cmp) if cfg.online.rounds else None  # no rounds: as before
    grid_models = {"base": res / "eval" / "base"}
    grid_models |= {o: cfg.model_dir("eval", o, seeds[0]) for o in cfg.objectives}
    with atomic_dir(cfg.path("report")) as tmp:
        table.to_csv(tmp / "comparison.csv", index=False)
        splits.to_csv(tmp / "splits.csv", index=False)
        yard.to_csv(tmp / "yardsticks.csv", index=False)
        gaps.to_csv(tmp / "gap_closed.csv", index=False)
        poi.to_csv(tmp / "probability_of_improvement.csv", index=False)
        figures = [n for n in report.FIGURE_CAPTIONS if online or n != report.ROUNDS_FIGURE]
        fig = {n: tmp / f"{n}.png" for n in figures}
        plots.plot_forest(table, ev.judge, fig["win_vs_base"])
        plots.plot_rewards(table, rewards, fig["rewards"])
        plots.plot_categories(table, fig["category_accuracy"])
        plots.plot_poi(poi, fig["poi"])
        plots.plot_training(data.train_metrics, fig["training_loss"])
        plots.image_grid(
            cfg.eval_prompts(), grid_models, cfg.report.grid_prompts, fig["image_grid"]
        )
        sections = _sections(cfg, cmp, table, splits, poi, world, seeds, fig)
        at = next(i for i, s in enumerate(sections) if s.title == BEATS_TITLE) + 1
        sections.insert(at, _yardstick_section(cfg, cmp, yard, gaps))
        if online:
            online.table.to_csv(tmp / "rounds.csv", index=False)
            online.splits.to_csv(tmp / "rounds_splits.csv", index=False)
            online.costs.to_csv(tmp / "rounds_cost.csv", index=False)
            plots.plot_rounds(online.table, ev.judge, fig[report.ROUNDS_FIGURE])
            at = next(i for i, s in enumerate(sections) if s.title == "Seed claims")
            sections[at:at] = online.sections(cmp, fig[report.ROUNDS_FIGURE])
        if ctx.run.enabled:
            sections.append(_run_links(cfg))
        title = "diffpref report"
        # a tuning run's numbers are for choosing settings, never verdicts
        prompts = "validation prompt" if ev.split == "validation" else "held-out test prompt"
        subtitle = (
            f"profile {cfg.profile} · {_n(len(cfg.objectives), 'objective')} × "
            f"{_n(len(seeds), 'training seed')} · {_n(len(cmp.prompt_ids), prompts)} × "
            f"{_n(len(ev.seeds), 'sampling seed')} · "
            f"win rates on {ev.judge}"
        )
        if ev.split == "validation":
            subtitle += " · for tuning only: verdicts need evaluate.split: test"
        (tmp / "report.md").write_text(report.to_markdown_report(title, sections))
        (tmp / "report.html").write_text(report.to_html(title, subtitle, sections))
    final = cfg.path("report")
    logged = ["report.html", "comparison.csv", *(f"{n}.png" for n in figures)]
    for f in logged + (["rounds.csv"] if online else []):
        ctx.run.log_artifact(final / f)
    # small uncached copies for `dvc metrics show/diff` and `dvc plots`
    with atomic_dir(res / "metrics") as tmp:
        numbers = _dvc_metrics(table)
        if online:  # <objective>.<variant>: later rounds and controls (names hold no dot)
            numbers |= rounds.dvc_metrics(online.table, ev.judge)
        for model, values in numbers.items():
            write_json(tmp / f"{model}.json", values)
    # images, so `dvc plots show` needs no Vega from a network; the folder as a whole, as
    # every output (DVC and Snakemake declare its files: they empty it before the stage runs)
    with atomic_dir(res / "plots") as tmp:
        for name in DVC_PLOTS:
            shutil.copyfile(final / name, tmp / name)
    ctx.run.log_metrics(
        {
            f"{r['model']}.{k}": v
            for r in table.to_dict("records")
            for k, v in r.items()
            if isinstance(v, int | float)
        }
    )
    if online:
        ctx.run.log_metrics(
            {
                f"{r['model']}.{r['variant']}.{k}": v
                for r in online.table.to_dict("records")
                for k, v in r.items()
                if isinstance(v, int | float) and k != "round"
            }
        )


DVC_PLOTS = ("win_vs_base.png", "training_loss.png")


@dataclass
class Online:
    """The online-rounds part of the report (:mod:`diffpref.rounds`): its tables and text."""

    rd: rounds.Rounds
    table: pd.DataFrame
    splits: pd.DataFrame
    costs: pd.DataFrame

    def sections(self, cmp: comparison.Comparison, figure: Path) -> list[Section]:
        rd, reward = self.rd, cmp.reward
        n_seeds = len(cmp.res.seeds)
        cols = [
            "model",
            "variant",
            "win_vs_base",
            "win_vs_base_ci",
            f"{reward}_mean",
            f"{reward}_ci",
            "vs_matched",
            "vs_matched_ci",
        ]
        cols = [c for c in cols if c in self.table.columns]
        intro = (
            f"Online rounds of {', '.join(rd.objectives)}: round 1 is the offline model; round "
            "r >= 2 trained on samples of its own round r-1 policy, starting from that adapter "
            "with it as the frozen reference; `matched<r>` is the compute-matched offline control "
            "(round 1 continued offline on round 1's data, the base its reference, to r x the "
            "training steps). Intervals as in the summary "
            f"(training seeds x prompts); vs_matched: round r's win rate against `matched<r>` on "
            "the same (prompt, sampling seed) samples, each training seed against the same "
            "seed's control. "
            f'Family "{rounds.ONLINE_BEATS}" '
            f"({_n(len(rd.objectives), 'comparison')}, one per online objective: its last round "
            "against its control), each at 95% on its own (raw) and Holm-adjusted."
        )
        text = (
            intro
            + "\n\n"
            + report.to_markdown(self.table[cols])
            + "\n\n"
            + _verdicts(rounds.verdicts(cmp, rd, self.table), "online objective", "vs matched")
        )
        out = [Section("Online rounds", text, [figure])]
        if not self.splits.empty:
            online = self.splits[self.splits.arm == "online"]
            split_cols = ["model", "split", "n_prompts", "variant", *cols[2:]]
            split_cols = [c for c in split_cols if c in online.columns]
            legend = "\n".join(f"- {k}: {v}" for k, v in comparison.SPLITS.items())
            out.append(
                Section(
                    "Online rounds: seen vs unseen wording",
                    "Each round's numbers on each prompt subset (the subset's own prompts, the "
                    "same seeds and intervals):\n\n"
                    + legend
                    + "\n\n"
                    + report.to_markdown(online[split_cols]),
                )
            )
        cost = (
            "Training steps, time and peak memory are means over training seeds; extra_images "
            "and extra_sampling_time_s are the images an online round sampled from its own "
            "policy for its training data and the wall time that took, summed over training "
            "seeds (round 1 and the controls train on round 1's shared candidates).\n\n"
            + report.to_markdown(self.costs)
            + "\n\n"
            + "\n".join(rounds.cost_lines(rd, self.costs, n_seeds))
        )
        out.append(Section("Online rounds: cost", cost))
        return out


def _online(cfg, cmp: comparison.Comparison) -> Online:
    rd = rounds.load(cfg, cmp.res)
    return Online(
        rd, rounds.round_table(cmp, rd), rounds.split_rounds(cmp, rd), rounds.cost_table(rd)
    )


# the summary's columns, training wording first (where preference data can act): header ->
# (value, interval); quality, diversity and cost are in "All metrics" (the first table must
# fit a window, so each value shares its cell with its interval)
SUMMARY = {
    "seen win": ("seen_win", "seen_win_ci"),
    "seen gap": ("seen_gap_best_of_k", "seen_gap_best_of_k_ci"),
    "win vs base": ("win_vs_base", "win_vs_base_ci"),
    "label win": ("label_win_vs_base", None),
    "label − judge": ("label_minus_judge", None),
    "seed sd": ("win_seed_sd", None),
}


def _summary(table: pd.DataFrame, judge: str) -> pd.DataFrame:
    """The first table: per model the headline numbers with their intervals, the verdict raw
    (and Holm where it differs) and the judge's mean reward."""

    def cell(r: pd.Series, value: str, ci: str | None) -> str:
        v = r.get(value)
        if not isinstance(v, float) or v != v:
            return ""
        return f"{v:.3f}" + (f" {r[ci]}" if ci and isinstance(r.get(ci), str) else "")

    rows = []
    for _, r in table.iterrows():
        row = {"model": r.model}
        row |= {h: cell(r, v, ci) for h, (v, ci) in SUMMARY.items() if v in table}
        if "beats_base" in table and isinstance(r.beats_base, str):
            same = r.beats_base == r.beats_base_holm
            row["beats base"] = r.beats_base + ("" if same else f" (Holm: {r.beats_base_holm})")
        else:
            row["beats base"] = ""
        row[judge] = f"{r[f'{judge}_mean']:.3f}"
        rows.append(row)
    return pd.DataFrame(rows)


def _sections(cfg, cmp, table, splits, poi, world, seeds, fig) -> list[Section]:
    ev = cfg.evaluate
    n_prompts = len(cmp.prompt_ids)
    n_obj = len(cmp.res.objectives)
    full = [c for c in table.columns if not c.endswith(("_ci_low", "_ci_high", "_metric"))]
    notes = [
        f"- {len(seeds)} training seeds per objective ({seeds}), each evaluated on the same "
        f"{n_prompts} held-out prompts × sampling seeds {list(ev.seeds)}; data seed {cfg.seed}",
        f"- win rates and verdicts use the judge, {ev.judge}, on matched (prompt, sampling "
        f"seed) samples; differences up to {ev.tie_threshold} are ties and count one half",
        _label_note(cfg.labels.reward, ev.judge),
        "- 95% CIs: variance components of the crossed design (training seeds x prompts, "
        "method of moments) with a generalized (fiducial) pivot for each part "
        f"({cfg.report.draws} fiducial resamples, seeded with {cfg.seed}), so the intervals "
        "carry seed-to-seed and prompt-to-prompt variance and keep 95% at 3-5 seeds "
        "(simulated coverage 0.944-0.985, and 0.97 for the seed part on 12 real dpo seeds: "
        "docs/statistics.md; the percentile bootstrap this replaced covered 0.80-0.85 at 3 "
        "seeds when seeds dominate); differences between objectives are paired on prompts "
        + (
            "and by training seed (train.seed_streams shared: one difference per seed and prompt)"
            if cmp.res.shared_seeds
            else "with independent seeds (train.seed_streams independent)"
        )
        + "; p-values are the fiducial two-sided ones (Rao-Blackwellized), win_p_holm "
        f'Holm-adjusted over the family "{comparison.BEATS_BASE}" ({_n(n_obj, "comparison")})',
        "- win_iqm: rliable's interquartile mean over training seeds x prompt categories "
        "(3 per-seed values alone trim nothing); win_seed_sd: the between-seed standard "
        "deviation of the true per-seed win rates, evaluation noise (residual / prompts) "
        "removed; win_seed_share: the seed part of the win rate's variance"
        + (
            " (one training seed: the seed-to-seed spread is not measured)"
            if len(seeds) == 1
            else ""
        ),
        "- train_fit: an objective's own accuracy on its training groups over the last quarter "
        "of training (mean over seeds): implicit-reward accuracy on pairs (chance 0.5) or, for "
        "soft tokens, caption matching (chance 1/batch); training cost columns are means over "
        "seeds",
    ]
    sections = [
        Section(
            "Summary (held-out prompts)",
            _summary_legend(splits) + report.to_markdown(_summary(table, ev.judge)),
            [fig["win_vs_base"]],
        ),
        Section(
            BEATS_TITLE,
            comparison.what_seeds_decide(cmp)
            + "\n\n"
            + _verdicts(comparison.beats_base(cmp, table, splits), "model", "win vs base")
            + _over_optimisation(table, cfg.labels.reward, ev.judge),
        ),
    ]
    if not splits.empty:
        cols = [
            "model",
            "split",
            "n_prompts",
            "win_vs_base",
            "win_vs_base_ci",
            f"{ev.judge}_mean",
            f"{ev.judge}_ci",
        ]
        legend = "\n".join(f"- {k}: {v}" for k, v in comparison.SPLITS.items())
        text = legend + "\n\n" + report.to_markdown(splits[cols])
        if summary_line := comparison.wording_summary(cmp, table, splits):
            text += "\n\n" + summary_line
        overlap = comparison.wording_overlap(cmp.res)
        if not overlap.empty:
            text += (
                "\n\nHow far the held-out wording is from the training wording: the share of "
                "each subset's distinct word n-grams that occur in some training prompt "
                "(training-wording eval prompts are the reference).\n\n"
                + report.to_markdown(overlap)
            )
        sections.append(Section("Seen vs unseen wording", text))
    sections += [
        Section(
            "Seed claims",
            _seed_claims(cmp, table, poi),
        ),
        Section(
            "Probability of improvement P(row > column)",
            "P(X > Y): the chance that "
            + (
                f"a training seed of X scores a higher mean {ev.judge} over the held-out "
                "prompts than the same seed of Y (objectives share their training seeds: "
                f"{st.PAIRED}), or than the base (one fixed model), "
                if cmp.res.shared_seeds
                else f"a random training seed of X scores a higher mean {ev.judge} over "
                "the held-out prompts than a random seed of Y (unpaired: train.seed_streams "
                "independent; the base is one fixed model), "
            )
            + "estimated in the normal seed model with a 95% fiducial interval "
            "(calibrated at 3-5 seeds; rliable's stratified bootstrap over 3 x 3 seed pairs "
            "covered 0.15-0.85); P(Y > X) is exactly 1 - P(X > Y), its interval the mirror "
            "image; 0.5 is no difference. Prompt categories are not separate tasks: the same "
            "seeds score all of them.\n\n" + report.to_markdown(_poi_table(poi)),
            [fig["poi"]],
        ),
        Section(
            "All metrics",
            report.to_markdown(table[full]),
            [fig["rewards"], fig["category_accuracy"]],
        ),
        Section("Training and samples", "", [fig["training_loss"], fig["image_grid"]]),
        Section("Notes", "\n".join(notes)),
        Section("World reward models (held-out)", report.to_markdown(_world_rows(world))),
    ]
    return sections


BEATS_TITLE = "Does each objective beat the base?"
YARDSTICK_TEXT = {
    "best_of_k": "per (prompt, sampling seed) the best of {k} base samples by the label reward "
    "({label}), the first the base's own sample: the most that offline preference data ranked "
    "by that reward can teach",
    "vae_ceiling": "real canvases of each prompt's spec (Fashion-MNIST test items no world model "
    "trained on) encoded and decoded by the world's VAE: the best a model of this latent space "
    "can draw",
    "real": "the same canvases, not through the VAE",
}


def _gap_cells(gaps: pd.DataFrame) -> pd.DataFrame:
    """One row per model, one column per (prompt subset, yardstick): gap closed [interval]."""
    cell = gaps.assign(
        column=gaps.split + " · " + gaps.yardstick,
        value=[f"{g:.2f} {ci}" for g, ci in zip(gaps.gap_closed, gaps.gap_closed_ci, strict=True)],
    )
    wide = cell.pivot(index="model", columns="column", values="value")
    return wide[list(dict.fromkeys(cell.column))].reset_index()


def _yardstick_section(
    cfg, cmp: comparison.Comparison, yard: pd.DataFrame, gaps: pd.DataFrame
) -> Section:
    """Where each model got between the base and what was reachable: the yardsticks' own
    numbers, then the gap each model closed per prompt subset, training wording first."""
    info = cmp.res.eval_metrics["base"][0]["yardsticks"]
    n_seeds, n_train = len(cfg.evaluate.seeds), len(cmp.res.seeds)
    lines = [
        f"Yardsticks, scored by the base model's evaluation on the same "
        f"{_n(len(cmp.prompt_ids), 'held-out prompt')} × {_n(n_seeds, 'sampling seed')}:\n"
    ]
    for name, label in comparison.YARDSTICK_NAMES.items():
        why = info["skipped"].get(name)
        what = YARDSTICK_TEXT[name].format(k=info["k"], label=info["label_reward"])
        lines.append(f"- {label}: " + (f"not computed: {why}" if why else what))
    lines.append(
        f"\nwin_vs_base on {cmp.reward}: the share of (prompt, sampling seed) samples where the "
        "yardstick scores above the base's sample (ties within the win rates' threshold count "
        "half); best-of-K's set holds that sample, so on the label reward it never loses; a "
        "real canvas is paired with the base's sample only by prompt."
    )
    text = "\n".join(lines) + "\n\n" + report.to_markdown(yard)
    if gaps.empty:
        return Section(YARDSTICK_TITLE, text)
    sizes = gaps.drop_duplicates("split")
    power = ", ".join(f"{r.split} {r.n_prompts}" for r in sizes.itertuples())
    headline = gaps[gaps.scope == "headline"]
    rest = gaps[gaps.scope != "headline"]
    text += (
        f"\n\nGap closed = (model − base) / (yardstick − base) in mean {cmp.reward} (the reward "
        "of the win rates): 1 reached the yardstick, 0 no change, below 0 worse than the base. "
        "Per prompt subset: the **headline** is `seen` (training wording and a training "
        "combination), where preference data can act; held-out wording and held-out "
        f"combinations are **transfer**; last, all prompts. Prompts per subset: {power} "
        f"(× {_n(n_seeds, 'sampling seed')} × {_n(n_train, 'training seed')}). Interval: 95% "
        "Fieller interval by test inversion: every ratio t for which the contrast (model − "
        "base) − t (yardstick − base) is not rejected by the summary's fiducial "
        "variance-components test (the same calibration at 3-5 training seeds; numerator and "
        "denominator on the same prompts, their correlation kept; no normal approximation of "
        "a ratio, so the interval may be lopsided). "
        "**undefined**: the yardstick's own lead over the base has an "
        "interval that reaches 0, so the ratio is unbounded and has no interval."
    )
    if headline.empty:  # no wording subsets (a prompt file): all prompts are the headline
        return Section(YARDSTICK_TITLE, text + "\n\n" + report.to_markdown(gaps[YARDSTICK_COLUMNS]))
    text += (
        "\n\n**Headline: training wording** (`seen`)\n\n"
        + report.to_markdown(headline[YARDSTICK_COLUMNS])
        + "\n\n**Transfer and all prompts**\n\n"
        + report.to_markdown(_gap_cells(rest))
    )
    return Section(YARDSTICK_TITLE, text)


YARDSTICK_TITLE = "How far toward what was reachable (yardsticks)"
YARDSTICK_COLUMNS = [
    "model",
    "n_prompts",
    "yardstick",
    "model_minus_base",
    "yardstick_minus_base",
    "yardstick_minus_base_ci",
    "gap_closed",
    "gap_closed_ci",
]


VERDICT_LEGEND = (
    "Each row: the estimate, its 95% interval and p-value; the verdict at 95% on its own and "
    "Holm-adjusted over its family (yes / no, worse / not shown: undecided, not no effect); "
    "*shown beyond ±*: the 95% half-width, the smallest estimate this run shows (a true "
    "effect that large is shown only about half the time); *80% power at ±*: the true effect "
    "it shows 4 times in 5. The numbered notes explain each row."
)


def _verdicts(verdicts: list[comparison.Verdict], subject: str, estimate: str) -> str:
    """A verdict table, its legend and its numbered notes (Markdown)."""
    if not verdicts:
        return ""
    return (
        report.to_markdown(comparison.verdict_table(verdicts, subject, estimate))
        + "\n\n"
        + VERDICT_LEGEND
        + "\n\n"
        + comparison.verdict_notes(verdicts)
    )


def _seed_claims(cmp: comparison.Comparison, table: pd.DataFrame, poi: pd.DataFrame) -> str:
    verdicts, lines = comparison.seed_claims(cmp, table, poi)
    return (
        f'Family "{comparison.SEED_CLAIMS}": the claims decided on sampled quantities, each at '
        f"95% (raw) and Holm-adjusted over the {len(verdicts)} that ran; the estimate is a "
        "difference (first minus second).\n\n"
        + _verdicts(verdicts, "claim", "difference")
        + "\n\n"
        + "\n".join(lines)
    )


def _over_optimisation(table: pd.DataFrame, label: str, judge: str) -> str:
    """The verdicts' coda: how much more each objective wins on the label model than on the
    judge (nothing when there is no separate label model)."""
    if "label_minus_judge" not in table:
        return ""
    rows = table.dropna(subset=["label_minus_judge"]).to_dict("records")
    each = "; ".join(
        f"{r['model']} {r['label_minus_judge']:+.3f} {r['label_minus_judge_ci']}" for r in rows
    )
    return (
        f"\n\nOver-optimisation of the label model: win rate vs base on the label reward "
        f"({label}) minus on the judge ({judge}), 95% CI: {each}. Above 0: the objective "
        "gained on the model that ranked its training data more than the judge confirms."
    )


def _label_note(label: str, judge: str) -> str:
    """What the label-reward columns mean, or why there are none."""
    if label == registry.HUMAN:
        return "- labels are human preferences: no label model to over-optimise"
    if label == judge:
        return (
            f"- the judge is the label reward ({label}): verdicts partly measure how well an "
            "objective fit the label model; judge with another reward (evaluate.judge)"
        )
    return (
        f"- label_win_vs_base: the win rate vs base on the label reward, {label}; "
        f"label_minus_judge: it minus the judge's ({judge}) on the same samples, with its "
        "interval: a positive difference is gain only the label model sees, over-optimisation "
        "of the label model"
    )


def _summary_legend(splits: pd.DataFrame) -> str:
    """What the summary's columns are; the training-wording headline when there is one."""
    seen = ""
    if "seen" in set(splits.get("split", [])):
        n = int(splits[splits.split == "seen"].n_prompts.iloc[0])
        seen = (
            f"*seen win*, *seen gap*: on the {n} test prompts in training wording and a training "
            "combination, where preference pairs can act: the win rate vs base and the gap "
            "closed toward the base's best-of-K (section \"How far toward what was "
            'reachable"); '
        )
    return (
        seen + "*win vs base* and *beats base*: all test prompts, transfer included (the "
        "verdicts); *label win*, *label − judge*: the label reward's win rate and its excess "
        "over the judge's; *seed sd*: the between-seed sd of the win rate. 95% intervals in "
        "brackets.\n\n"
    )


def _n(k: int, noun: str) -> str:
    return f"{k} {noun}{'' if k == 1 else 's'}"


def _run_links(cfg) -> Section:
    """Each model's train and evaluate runs in MLflow (page and artifacts folder), found by
    the stage, objective, training seed and the current params' hash."""
    from diffpref import tracking
    from diffpref.config.dag import params_hash

    rows = [("base", None)] + [(o, s) for o in cfg.objectives for s in cfg.train_seeds]
    keys = {}
    for obj, seed in rows:
        # round 1's runs ("": no model tag; a later round's evaluation has the same hash)
        keys[obj, seed, "evaluate"] = ("evaluate", obj, seed, params_hash("evaluate", cfg, obj), "")
        if seed is not None:
            keys[obj, seed, "train"] = ("train", obj, seed, params_hash("train", cfg, obj), "")
    uri = tracking.tracking_uri()
    try:
        found = tracking.latest_runs(list(keys.values()))
    except Exception as e:  # the report stands without its links
        return Section("MLflow runs", f"The MLflow store {uri} could not be read: {e}")

    def cell(k) -> str:
        r = found.get(keys.get(k))
        return f"[{r['run_id'][:8]}]({r['url']}) · [files]({r['artifacts']})" if r else "not found"

    table = pd.DataFrame(
        [
            {
                "model": obj,
                "train_seed": "" if seed is None else seed,
                "train run": "" if seed is None else cell((obj, seed, "train")),
                "evaluate run": cell((obj, seed, "evaluate")),
            }
            for obj, seed in rows
        ]
    )
    where = (
        "the tracking server"
        if uri.startswith("http")
        else f"`mlflow ui --backend-store-uri {uri}` (run links assume its default address)"
    )
    return Section(
        "MLflow runs",
        f"Each model's newest finished runs with the current params in {where}; *files* is "
        "the run's artifacts folder (train: the adapter and its loss curve; evaluate: "
        "scores and a sample grid).\n\n" + report.to_markdown(table),
    )


def _poi_table(poi: pd.DataFrame) -> pd.DataFrame:
    names = list(dict.fromkeys(poi.model))
    cell = poi.assign(
        v=[
            f"{p:.2f} [{lo:.2f}, {hi:.2f}]" if p == p else "not measured (one run each)"
            for p, lo, hi in zip(poi.p, poi.ci_low, poi.ci_high, strict=True)
        ]
    )
    m = cell.pivot(index="model", columns="versus", values="v").reindex(index=names, columns=names)
    return m.fillna("—").reset_index()


def _world_rows(world: dict) -> pd.DataFrame:
    return pd.DataFrame(
        [{"metric": k, "value": v} for k, v in sorted(world.items()) if isinstance(v, int | float)]
    )


def _dvc_metrics(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """The headline numbers per model, one small file each (``results/metrics/<model>.json``),
    so that `dvc metrics show` prints a row per model that fits a terminal and `dvc metrics
    diff` compares experiments model by model; the full table is comparison.csv."""
    keys = {
        "win_vs_base": "win",
        "win_vs_base_ci_low": "win_low",
        "win_vs_base_ci_high": "win_high",
        "win_seed_sd": "seed_sd",
    }
    keys |= {c: c.removesuffix("_mean") for c in table.columns if c.endswith("_mean")}
    out = {}
    for r in table.to_dict("records"):
        out[r["model"]] = {
            short: round(r[k], 4)
            for k, short in keys.items()
            if isinstance(r.get(k), float) and r[k] == r[k]  # base: no win, NaN seed_sd
        }
    return out
