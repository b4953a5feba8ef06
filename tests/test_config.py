"""params.yaml validation: one clear error naming file and key, exit code 2, nothing computed."""

from __future__ import annotations

import logging
import subprocess
import sys
import typing

import pydantic
import pytest
import yaml
from tests.conftest import REPO

from diffpref import config, registry
from diffpref.cli import main
from diffpref.config import dag


def write(tmp_path, mutate):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    mutate(raw)
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_repo_params_validate_in_every_profile():
    for profile in ["default", *yaml.safe_load((REPO / "params.yaml").read_text())["profiles"]]:
        cfg, _ = config.load(REPO / "params.yaml", profile)
        assert cfg.profile == profile
        assert "dpo" in cfg.objectives


def test_profile_is_deep_merged_over_base():
    cfg, _ = config.load(REPO / "params.yaml", "smoke")
    base, _ = config.load(REPO / "params.yaml", "default")
    assert cfg.prompts.n_train < base.prompts.n_train
    assert cfg.prompts.source == base.prompts.source  # untouched keys survive the merge


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda r: r["train"].update(lr="fast"), "train.lr"),
        (lambda r: r["train"].update(learning_rate=1e-3), "train.learning_rate"),
        (lambda r: r["objectives"]["dpo"].update(beta="big"), "objectives.dpo.beta"),
        (lambda r: r["objectives"]["dpo"].update(betta=1.0), "objectives.dpo.betta"),
        (lambda r: r["objectives"].update(x={"loss": "nope"}), "objectives.x"),
        (lambda r: r.update(profile="huge"), "profile"),
        (lambda r: r["candidates"].update(k=1), "candidates.k"),
        (lambda r: r["evaluate"].update(judge="oracle"), "evaluate.judge"),
        (lambda r: r["train"].update(seeds=[0, 1]), "top-level key `train_seeds`"),
        (lambda r: r.update(train_seeds=[0, 0]), "train_seeds: repeated seeds"),
        (lambda r: r.update(train_seeds=[]), "train_seeds"),
        (lambda r: r["objectives"].update({"../../escape": {"loss": "dpo"}}), "not a valid"),
        (lambda r: r["objectives"].update({".hidden": {"loss": "dpo"}}), "not a valid"),
        (lambda r: r["objectives"].update({"a b": {"loss": "dpo"}}), "not a valid"),
        (lambda r: r["objectives"].update({"dpo.v2": {"loss": "dpo"}}), "not a valid"),
        (lambda r: r["objectives"].update({"": {"loss": "dpo"}}), "not a valid"),
        (lambda r: r["objectives"].update({"Base": {"loss": "dpo"}}), "reserved"),
        (lambda r: r["objectives"].update({"DPO": {"loss": "dpo"}}), "same folder as"),
        (lambda r: r["resources"]["sdxl"]["train"].update(gpus=2), "resources.sdxl.train.gpus"),
        (lambda r: r["resources"]["sd15"].update(evaluat={}), "resources.sd15.evaluat"),
        (lambda r: r["resources"].update(sd3={}), "resources.sd3"),
    ],
)
def test_bad_params_name_file_and_key(tmp_path, mutate, needle):
    p = write(tmp_path, mutate)
    with pytest.raises(config.ConfigError) as e:
        config.load(p)
    assert str(p) in str(e.value)
    assert needle in str(e.value)


def test_cli_exits_2_before_any_work(tmp_path, capsys):
    p = write(tmp_path, lambda r: r["train"].update(steps=-3))
    results = tmp_path / "results"
    assert main(["train", "--params", str(p), "--objective", "dpo", "--seed", "0"]) == 2
    assert "train.steps" in capsys.readouterr().err
    assert not results.exists()


def test_cli_unknown_objective_is_a_params_error(tmp_path, capsys):
    p = write(tmp_path, lambda r: None)
    assert main(["train", "--params", str(p), "--objective", "nope", "--seed", "0"]) == 2
    assert "objectives.nope" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train", "--objective", "dpo"], "--seed is required"),
        (["evaluate", "--objective", "dpo", "--seed", "7"], "seed 7 is not one of [0, 1, 2]"),
        (["evaluate", "--objective", "base", "--seed", "0"], "only to trained objectives"),
    ],
)
def test_cli_checks_the_training_seed(tmp_path, capsys, args, needle):
    p = write(tmp_path, lambda r: r.update(results=str(tmp_path / "results")))
    assert main([*args, "--params", str(p)]) == 2
    err = capsys.readouterr().err
    assert "train_seeds" in err and needle in err
    assert not (tmp_path / "results").exists()


def test_under_dvc_a_profile_may_not_change_the_seeds_dvc_expands(tmp_path, capsys, monkeypatch):
    p = write(tmp_path, lambda r: None)  # top level [0, 1, 2]; the smoke profile sets [0]
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert main(["check", "--params", str(p), "--profile", "smoke"]) == 2
    assert "dvc exp run -S profile=smoke -S 'train_seeds=[0]'" in capsys.readouterr().err
    assert main(["check", "--params", str(p)]) == 0
    monkeypatch.delenv("DVC_ROOT")
    assert main(["check", "--params", str(p), "--profile", "smoke"]) == 0  # Snakemake: fine


def test_console_script_check_reports_ok():
    out = subprocess.run(
        [sys.executable, "-m", "diffpref.cli", "check", "--params", str(REPO / "params.yaml")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "ok" in out.stdout


def test_the_judge_is_not_the_label_reward_and_check_warns_when_it_is(tmp_path, caplog):
    """Verdicts use evaluate.judge; in every profile that labels with a reward model the judge
    is another one (the throughput benchmark has a single reward and no verdict)."""
    for profile in ["default", *yaml.safe_load((REPO / "params.yaml").read_text())["profiles"]]:
        cfg, _ = config.load(REPO / "params.yaml", profile)
        assert cfg.evaluate.judge in cfg.eval_rewards
        assert cfg.evaluate.judge != cfg.labels.reward or profile == "sd15-bench", profile
    p = write(tmp_path, lambda r: None)
    with caplog.at_level(logging.WARNING, logger="diffpref"):
        assert main(["check", "--params", str(p)]) == 0
    assert "evaluate.judge" not in caplog.text
    p = write(tmp_path, lambda r: r["evaluate"].update(judge="fidelity"))
    with caplog.at_level(logging.WARNING, logger="diffpref"):
        assert main(["check", "--params", str(p)]) == 0  # allowed, with a warning
    assert f"{p}: evaluate.judge is labels.reward (fidelity)" in caplog.text


def test_evaluate_scores_the_judge_beside_the_reward_models():
    cfg, _ = config.load(REPO / "params.yaml")
    assert cfg.rewards.models == ["fidelity", "quality"] and cfg.evaluate.judge == "judge"
    assert cfg.eval_rewards == ["fidelity", "quality", "judge"]
    assert "diffpref.world.judge" in dag.plugins("evaluate", cfg, "dpo")
    assert "diffpref.world.judge" not in dag.plugins("rewards", cfg)  # labels never see it
    assert {"evaluate.judge", "labels.reward"} <= set(dag.keys("report", cfg))
    assert "evaluate.judge" in dag.keys("evaluate", cfg, "base")
    assert "rewards.sources" not in dag.keys("evaluate", cfg, "base")  # world rewards only
    sd15, _ = config.load(REPO / "params.yaml", "sd15")  # a real judge reads its weights' source
    assert sd15.evaluate.judge == "clip_score" and sd15.labels.reward == "pickscore"
    assert "rewards.sources" in dag.keys("evaluate", sd15, "base")


def test_params_hash_changes_only_for_stages_that_read_the_key():
    raw = config.read_raw(REPO / "params.yaml")

    def hashes() -> dict[str, str]:
        cfg = config.validate(raw)
        return {s: dag.params_hash(s, cfg, "dpo") for s in dag.PARAMS}

    before = hashes()
    raw["objectives"]["dpo"]["beta"] = 1234
    after = hashes()
    # every training row of dpo: round 1, a later online round, the compute-matched control
    assert [s for s in before if before[s] != after[s]] == ["train", "train_round", "train_matched"]
    raw["train_seeds"] = [0, 1, 2, 3]  # a new replicate: only the report reads the list
    again = hashes()
    assert [s for s in after if after[s] != again[s]] == ["report"]


def test_job_resources_follow_the_backbone_and_default_under_each_stage():
    smoke, sd15, sdxl = (config.load(REPO / "params.yaml", p)[0] for p in ("smoke", "sd15", "sdxl"))
    cpu = dag.job_resources(smoke, "train")
    assert cpu.gpu == 0  # the embedded world runs on any node
    assert dag.job_resources(smoke, "world").cpus > cpu.cpus  # world's entry over default
    for stage in ("candidates", "rewards", "train", "evaluate"):
        small, big = dag.job_resources(sd15, stage), dag.job_resources(sdxl, stage)
        assert small.gpu == big.gpu == 1
        assert big.mem_mb >= small.mem_mb and big.runtime >= small.runtime
    assert dag.job_resources(sdxl, "train").runtime > dag.job_resources(sd15, "train").runtime
    for stage in ("prompts", "labels", "report"):
        assert dag.job_resources(sdxl, stage).gpu == 0
    # a stage entry per stage the pipeline has, no more
    assert set(config.BackboneResources.model_fields) == {"default", *map(dag.stage_of, dag.STAGES)}


def test_job_resources_name_a_bad_entry(tmp_path, capsys):
    p = write(tmp_path, lambda r: r["resources"]["embedded"].update(train={"cpus": 0}))
    assert main(["check", "--params", str(p)]) == 2
    assert "resources.embedded.train.cpus: Input should be greater than or equal to 1" in (
        capsys.readouterr().err
    )
    p = write(tmp_path, lambda r: r["resources"].pop("embedded"))
    assert main(["check", "--params", str(p)]) == 2
    assert (
        f"{p}: resources: no entry for backbone.kind 'embedded': say what "
        "its jobs need (resources.embedded.default: cpus, mem_mb, runtime, gpu)"
    ) in capsys.readouterr().err


def _leaves(node: object, prefix: str = "") -> list[str]:
    if isinstance(node, dict) and (node or not prefix):
        return [leaf for k, v in node.items() for leaf in _leaves(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")]


def _field(model: type | None, path: list[str]):
    """The schema field at ``path`` under ``model``: a mapping of models (``resources``) skips
    its key, an optional model (``rethinking``) is its model."""
    field, parts = None, list(path)
    while parts:
        if model is None or (field := model.model_fields.get(parts.pop(0))) is None:
            return None
        tp = field.annotation
        if typing.get_origin(tp) is dict:  # the next part is the mapping's key
            tp = typing.get_args(tp)[1]
            if parts:
                parts.pop(0)
        models = [a for a in (typing.get_args(tp) or (tp,)) if _is_model(a)]
        model = models[0] if models else None
    return field


def _is_model(tp: object) -> bool:
    return isinstance(tp, type) and issubclass(tp, pydantic.BaseModel)


def test_every_default_lives_in_one_place():
    """What params.yaml sets has no default in the schema (deleting its line is an error
    naming the key, not a silent change of the experiment); an objective entry never restates
    its loss's default (the loss module holds it; the entry only what it changes)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    overrides = (config.schema.ResourceOverrides, config.TrainOverrides)  # None: inherit
    checked = 0
    for leaf in _leaves({k: v for k, v in raw.items() if k not in ("profiles", "objectives")}):
        path = leaf.split(".")
        field = _field(config.Config, path)
        assert field is not None, leaf
        parent = _field(config.Config, path[:-1]) if len(path) > 1 else None
        if parent is not None and parent.annotation in overrides:
            continue
        assert field.is_required(), f"{leaf}: set in params.yaml and defaulted in the schema"
        checked += 1
    assert checked > 40
    for name, entry in raw["objectives"].items():
        params = config.schema._loss_module(entry["loss"]).Params
        for leaf in _leaves({k: v for k, v in entry.items() if k not in ("loss", "train")}):
            field = _field(params, leaf.split("."))
            assert field is not None, (name, leaf)
            value = entry
            for part in leaf.split("."):
                value = value[part]
            assert field.is_required() or field.default != value, (
                f"objectives.{name}.{leaf}: restates the default of loss {entry['loss']}"
            )


def test_a_deleted_line_is_an_error_naming_its_key(tmp_path, capsys):
    p = write(tmp_path, lambda r: r["train"].pop("steps"))
    assert main(["check", "--params", str(p)]) == 2
    assert f"{p}: train.steps: Field required" in capsys.readouterr().err
    p = write(tmp_path, lambda r: r["objectives"]["dpo"].pop("beta"))
    assert main(["check", "--params", str(p)]) == 2
    assert f"{p}: objectives.dpo.beta: Field required" in capsys.readouterr().err


def test_why_names_the_jobs_there_are(tmp_path, capsys):
    p = write(tmp_path, lambda r: None)
    assert main(["why", "train@x-0", "--params", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no job 'train@x-0' in this DAG (jobs: world, prompts, ")
    assert "train@dpo-0" in err and "evaluate_base" in err


def _all_settings() -> list[type]:
    """Every params model: the schema's, the world's, each loss's (and Rethinking's)."""
    import importlib

    from diffpref.settings import Settings

    for loss in registry.LOSSES:
        importlib.import_module(registry.loss_module(loss))
    importlib.import_module("diffpref.objectives.rethinking")
    found, todo = [], [Settings]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return [c for c in found if c.__module__.startswith("diffpref.")]


def _bare_numbers(tp: object, meta: tuple = ()) -> list[object]:
    """The ``int``/``float`` inside annotation ``tp`` that lack the no-boolean check of
    :data:`diffpref.settings.Int` / ``Float``."""
    if typing.get_origin(tp) is typing.Annotated:
        base, *more = typing.get_args(tp)
        return _bare_numbers(base, (*meta, *more))
    if tp in (int, float):
        checked = any(
            getattr(getattr(m, "func", None), "__qualname__", "").startswith("_not_bool")
            for m in meta
        )
        return [] if checked else [tp]
    return [b for arg in typing.get_args(tp) for b in _bare_numbers(arg)]


def test_every_number_in_every_params_model_is_finite_and_no_boolean():
    """Int/Float everywhere (a new field typed plain ``int`` fails here), and every model
    refuses NaN and ±inf."""
    models = _all_settings()
    assert {m.__name__ for m in models} >= {"Config", "TrainParams", "WorldParams", "Params"}
    assert len([m for m in models if m.__name__ == "Params"]) >= len(registry.LOSSES)
    bare = {}
    for model in models:
        assert model.model_config.get("allow_inf_nan") is False, model
        for name, field in model.model_fields.items():
            if found := _bare_numbers(field.annotation, tuple(field.metadata)):
                bare[f"{model.__module__}.{model.__name__}.{name}"] = found
    assert not bare, bare
