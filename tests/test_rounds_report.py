"""The report's online-rounds part on synthetic eval folders whose answers are known by
construction: 2 online objectives x 3 training seeds x 3 rounds + their compute-matched
controls. dpo's rounds improve and its controls stay flat (its verdict must be "supported"),
smpo's rounds get worse than its controls (it must be "contradicted")."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.browser import inspect, problems

from diffpref import comparison, config, evaluation, rounds, settings, yardsticks
from diffpref import statistics as st
from diffpref.config import dag
from diffpref.stages import Ctx
from diffpref.stages import report as report_stage
from diffpref.tracking.stage import StageRun

REPO = Path(__file__).resolve().parents[1]
N, SAMPLING, SEEDS, TIE = 24, (0, 1), [0, 1, 2], 0.01  # prompts: the second half held-out wording
OBJECTIVES = ("dpo", "smpo")
STEP = {"dpo": 0.06, "smpo": -0.06}  # fidelity change per online round; a control moves 0.01


def _fidelity(model: str, variant: str, train_seed: int) -> np.ndarray:
    """fidelity[prompt, sampling seed]: the base's plus each model's shift and seed effect,
    with per-sample noise (so win rates are not all 0 or 1)."""
    base = np.random.default_rng(0).uniform(0.3, 0.7, (N, len(SAMPLING)))
    if model == "base":
        return base
    kind, rnd = variant.rstrip("0123456789"), int(variant[-1])
    shift = 0.02 + 0.01 * train_seed  # round 1
    if kind == "round":
        shift += STEP[model] * (rnd - 1)
    elif kind == "matched":
        shift += 0.01
    noise = np.random.default_rng([train_seed, rnd, kind == "matched", len(model)])
    return base + shift + noise.normal(0, 0.1, base.shape)


def _scores(fid: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"prompt_id": f"p{i:02d}", "seed": s, "reward": r, "score": v}
            for i in range(N)
            for j, s in enumerate(SAMPLING)
            for r, v in (("fidelity", fid[i, j]), ("quality", 0.3))
        ]
    )


VARIANTS = ["round1", "round2", "matched2", "round3", "matched3"]


def _eval_folder(d: Path, fid: np.ndarray) -> None:
    d.mkdir(parents=True)
    _scores(fid).to_parquet(d / "scores.parquet")
    acc = {"counting": 0.5, "single": 0.5, "overall": 0.5}
    metrics = {"reward": {"fidelity": {}, "quality": {}}, "accuracy": {"fidelity": acc}}
    (d / "metrics.json").write_text(json.dumps(metrics | {"diversity": 10.0}))
    keys = pd.DataFrame([{"prompt_id": f"p{i:02d}", "seed": s} for i in range(N) for s in SAMPLING])
    keys.to_parquet(d / "samples.parquet")
    np.save(d / "samples.npy", np.zeros((len(keys), 1, 4, 4), np.uint8))


def _yardsticks(d: Path) -> None:
    """The base's yardsticks above it (best-of-K, the VAE ceiling, real canvases), as its
    evaluation writes them."""
    fid = _fidelity("base", "", -1)
    lifts = (("best_of_k", 0.1), ("vae_ceiling", 0.2), ("real", 0.25))
    frames = [_scores(fid + lift).assign(yardstick=n, correct=np.nan) for n, lift in lifts]
    pd.concat(frames)[yardsticks.COLUMNS].to_parquet(d / "yardsticks.parquet")
    metrics = json.loads((d / "metrics.json").read_text())
    metrics["yardsticks"] = {"k": 4, "label_reward": "fidelity", "skipped": {}}
    (d / "metrics.json").write_text(json.dumps(metrics))


def _train_metrics(variant: str) -> dict:
    rnd = int(variant[-1])
    online = variant.startswith("round") and rnd > 1
    steps = 10 * (rnd if variant.startswith("matched") else 1)
    return {
        "history": [{"step": s, "loss": 1.0 / s, "implicit_acc": 0.8} for s in range(1, 5)],
        "summary": {
            "steps": steps,
            "train_time_s": 2.0 * steps,
            "groups_per_s": 40.0,
            "peak_memory_mb": 500.0 + 100 * online,  # a second, frozen adapter
            "trainable_params": 1000,
        },
        "round": rnd,
        "matched": variant.startswith("matched"),
        "sampling": {"round": rnd, "images": 64, "sampling_time_s": 1.5} if online else None,
    }


def _config(root: Path, online: bool) -> config.Config:
    raw = config.schema.read_raw(REPO / "params.yaml", "smoke")
    raw |= {
        "train_seeds": SEEDS,
        "results": str(root / "results"),
        "results_outside_project": True,
        "objectives": {o: raw["objectives"][o] for o in OBJECTIVES},
    }
    raw["report"] = {"grid_prompts": 2, "draws": 2000}
    # the scores here are fidelity's alone: it judges (the label-reward columns then drop out)
    raw["evaluate"] = raw["evaluate"] | {"tie_threshold": TIE, "judge": "fidelity"}
    rounds_ = [{"round": 2, "after": 1}, {"round": 3, "after": 2}] if online else []
    raw["online"] = raw["online"] | {"objectives": list(OBJECTIVES), "rounds": rounds_}
    return config.schema.validate(raw, REPO / "params.yaml")


def _project(root: Path) -> None:
    """The folders the report stage reads, for every model of the online config."""
    res = root / "results"
    (res / "world").mkdir(parents=True)
    (res / "world" / "metrics.json").write_text(json.dumps({"fidelity_auc": 0.9}))
    (res / "prompts").mkdir()
    pd.DataFrame(
        {
            "prompt_id": [f"p{i:02d}" for i in range(N)],
            "prompt": [f"a red bag number {i}" for i in range(N)],
            "category": ["counting" if i % 2 else "single" for i in range(N)],
            "heldout_template": np.arange(N) >= N // 2,
            "heldout_combo": False,
        }
    ).to_parquet(res / "prompts" / "eval.parquet")
    pd.DataFrame({"prompt": ["a red bag", "two coats"]}).to_parquet(
        res / "prompts" / "train.parquet"
    )
    _eval_folder(res / "eval" / "base", _fidelity("base", "", -1))
    _yardsticks(res / "eval" / "base")
    for o in OBJECTIVES:
        for s in SEEDS:
            for v in VARIANTS:
                _eval_folder(res / "eval" / o / f"seed{s}" / v, _fidelity(o, v, s))
                a = res / "adapters" / o / f"seed{s}" / v
                a.mkdir(parents=True)
                (a / "train_metrics.json").write_text(json.dumps(_train_metrics(v)))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rounds")
    _project(root)
    return root


@pytest.fixture(scope="module")
def computed(project):
    cfg = _config(project, online=True)
    res = comparison.load(cfg)
    cmp = comparison.Comparison(res, "fidelity", 2000, TIE, 0)
    rd = rounds.load(cfg, res)
    return cmp, rd, rounds.round_table(cmp, rd)


def _wins(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = a - b
    return (d > TIE) + 0.5 * (np.abs(d) <= TIE)


def test_per_round_numbers_equal_a_direct_computation(computed):
    """Win rate vs base, mean fidelity and round r vs matched<r> (each seed against the same
    seed's control, per sample) equal the means computed from the generating arrays, and
    their intervals are the seed-aware ones of the same [seed, prompt] matrices."""
    table = computed[2]
    base = _fidelity("base", "", -1)
    assert list(table.variant[table.model == "dpo"]) == VARIANTS
    for o in OBJECTIVES:
        for v in VARIANTS:
            row = table[(table.model == o) & (table.variant == v)].iloc[0]
            fids = np.stack([_fidelity(o, v, s) for s in SEEDS])  # [seed, prompt, sampling seed]
            win = _wins(fids, base).mean(-1)
            assert row.win_vs_base == pytest.approx(win.mean())
            assert row.fidelity_mean == pytest.approx(fids.mean())
            e = st.seed_estimate({"m": win}, "m", 0.5, 2000, 0, comparison.RATE)
            assert (row.win_vs_base_ci_low, row.win_vs_base_ci_high) == pytest.approx(
                (e["ci_low"], e["ci_high"])
            )
            assert row.win_vs_base_ci_low < row.win_vs_base < row.win_vs_base_ci_high
            if v.startswith("round") and v != "round1":
                ctrl = np.stack([_fidelity(o, "matched" + v[-1], s) for s in SEEDS])
                h2h = _wins(fids, ctrl).mean(-1)
                assert row.vs_matched == pytest.approx(h2h.mean())
                h = st.seed_estimate({"m": h2h}, "m", 0.5, 2000, 0, comparison.RATE)
                assert row.vs_matched_ci_low == pytest.approx(h["ci_low"])
            else:
                assert np.isnan(row.vs_matched)
    dpo = table[(table.model == "dpo") & (table.arm == "online")]
    assert list(dpo.win_vs_base) == sorted(dpo.win_vs_base)  # improves round by round


def test_head_to_head_pairs_training_seeds_and_refuses_mismatched_seeds(computed):
    cmp, rd, _ = computed
    ours, theirs = rd.scores["dpo", "round3"], rd.scores["dpo", "matched3"]
    m = rounds.head_to_head(cmp, ours, theirs, cmp.prompt_ids)
    direct = evaluation.win_values(
        ours[(ours.reward == "fidelity") & (ours.train_seed == 1)],
        theirs[(theirs.reward == "fidelity") & (theirs.train_seed == 1)],
        TIE,
    )
    assert m.shape == (3, N) and m[1].mean() == pytest.approx(direct.win.mean())
    with pytest.raises(ValueError, match="same training seeds"):
        rounds.head_to_head(cmp, ours, theirs[theirs.train_seed != 2], cmp.prompt_ids)


def test_the_verdict_is_supported_for_a_better_online_model_and_contradicted_for_a_worse(
    computed,
):
    cmp, rd, table = computed
    dpo, smpo = rounds.verdicts(cmp, rd, table)
    claim = "online rounds beat compute-matched offline training"
    assert (dpo.subject, dpo.raw, dpo.holm) == ("dpo", "supported", "supported")
    assert (smpo.subject, smpo.raw, smpo.holm) == ("smpo", "contradicted", "contradicted")
    assert dpo.note.startswith(f"{claim}: round 3 wins") and dpo.ci_low > 0.5 > smpo.ci_high
    holm = rounds.last_round_holm(table, 3)
    last = table[(table["round"] == 3) & (table.arm == "online")]
    assert list(holm.values()) == st.holm(list(last.vs_matched_p_value))
    assert [dpo.p_holm, smpo.p_holm] == list(holm.values())


def test_an_undecided_round_says_what_would_decide_it(computed):
    """A round equal to its control (the control's own scores) is inconclusive, with the
    power note, not a verdict either way."""
    cmp, rd, _ = computed
    same = rounds.Rounds(["dpo"], 3, dict(rd.scores), rd.train_metrics)
    noise = np.random.default_rng(5).normal(0, 0.08, len(rd.scores["dpo", "matched3"]))
    same.scores["dpo", "round3"] = rd.scores["dpo", "matched3"].assign(
        score=lambda d: d.score + noise
    )
    [v] = rounds.verdicts(cmp, same, rounds.round_table(cmp, same))
    assert v.raw == v.holm == "inconclusive" and "with 80% power" in v.note
    assert "paired by training seed (each training seed against" in v.note


def test_splits_and_costs_cover_every_round(computed):
    cmp, rd, _ = computed
    splits = rounds.split_rounds(cmp, rd)
    assert set(splits.split) == {"seen", "heldout_wording"}
    held = splits[(splits.split == "heldout_wording") & (splits.variant == "round3")]
    fids = np.stack([_fidelity("dpo", "round3", s) for s in SEEDS])[:, N // 2 :]
    assert held[held.model == "dpo"].win_vs_base.iloc[0] == pytest.approx(
        _wins(fids, _fidelity("base", "", -1)[N // 2 :]).mean()
    )
    assert set(held.n_prompts) == {N // 2}
    costs = rounds.cost_table(rd).set_index(["model", "variant"])
    assert costs.loc[("dpo", "round2"), "extra_images"] == 64 * len(SEEDS)
    assert costs.loc[("dpo", "round1"), "extra_images"] == 0
    assert costs.loc[("dpo", "matched3"), "steps"] == 30
    [line, _] = rounds.cost_lines(rd, rounds.cost_table(rd), len(SEEDS))
    assert "sampled 384 extra images in 9.0 s" in line and "600 MB peak vs round 1's" in line


def _run_report(cfg: config.Config) -> dict:
    run = StageRun("report", None, {}, "", enabled=False)
    with settings.recording() as reads:
        report_stage.run(Ctx(cfg, None, run, threads=1))
    return reads


def test_the_report_stage_adds_the_rounds_section_only_with_rounds(project, tmp_path):
    """With rounds: the HTML has the section, its plot and the verdicts, the CSVs and the
    per-round metrics files, and a real browser shows it without errors, broken figures or
    Markdown leaks; the stage read exactly the declared keys (online ones included). Without
    rounds: none of it, and no online.objectives read."""
    reads = {}
    for online in (True, False):
        cfg = _config(project, online)
        reads[online] = _run_report(cfg)
        declared = dag.keys("report", cfg)
        assert sorted(k for k in reads[online] if k not in declared) == [], online
        assert [d for d in declared if not any(k.startswith(d) for k in reads[online])] == []
        res = project / "results"
        page = (res / "report" / "report.html").read_text()
        assert "How far toward what was reachable (yardsticks)" in page
        assert (res / "report" / "gap_closed.csv").is_file()
        names = sorted(p.name for p in (res / "metrics").glob("*.json"))
        if online:
            assert "<h2>Online rounds</h2>" in page and "Online rounds: cost" in page
            assert "Online rounds: seen vs unseen wording" in page
            # the verdicts as table rows, each explained in a numbered note below
            assert "<th>online objective</th>" in page and "<td>yes</td>" in page
            claim = "online rounds beat compute-matched offline training"
            assert f"<strong>dpo</strong>: {claim}: round 3 wins" in page
            assert page.count("data:image/png;base64,") == 7  # the 6 figures and the rounds'
            assert (res / "report" / "online_rounds.png").stat().st_size > 1000
            table = pd.read_csv(res / "report" / "rounds.csv")
            assert len(table) == len(OBJECTIVES) * len(VARIANTS)
            assert "dpo.round3.json" in names and "smpo.matched2.json" in names
            m = json.loads((res / "metrics" / "dpo.round3.json").read_text())
            assert m["vs_matched"] > 0.5 and {"win", "win_low", "fidelity", "vs_matched"} <= set(m)
            assert problems(inspect(res / "report" / "report.html", tmp_path)) == []
        else:
            assert "Online rounds" not in page and "online_rounds" not in page
            assert not (res / "report" / "rounds.csv").exists()
            assert names == ["base.json", "dpo.json", "smpo.json"]
            assert page.count("data:image/png;base64,") == 6
    assert "online.objectives" in reads[True] and "online.objectives" not in reads[False]
    assert reads[False]["online.rounds"] == []
