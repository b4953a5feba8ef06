"""The DAG table, and each job's computed dependencies: what the Snakefile, ``dvc.yaml`` and
the CLI share.

A job (a stage, and for ``train`` / ``evaluate`` an objective) depends on
- **code**: the closure of its stage module's imports (:mod:`.imports`), plus the modules
  picked by name from the config (:func:`plugins`: its loss, backbone and reward models);
- **params**: the values it reads *after the active profile is merged and defaults are
  filled in* (:func:`params`), listed per stage in :data:`PARAMS`. A stage's actual reads are
  recorded while it runs (:mod:`diffpref.settings`) and tests hold the table to them.

Snakemake reads both per job; DVC, which cannot resolve profiles, gets the static code in
the generated ``dvc.yaml`` and the rest from its ``resolve`` stage, which writes each job's
resolved params (and its config-picked modules' digests) to ``results/resolved/<job>.yaml``
(:mod:`.dvc`).
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffpref import registry
from diffpref.config import imports
from diffpref.config.schema import Config, ConfigError, JobResources, TrainParams, model_variant
from diffpref.settings import paused


@dataclass(frozen=True)
class Stage:
    """One row of the DAG: ``module``, the stage it runs (``diffpref <module>``); ``deps``
    and ``outs``, upstream and own results with Snakemake's ``{objective}``, ``{seed}`` and
    ``{round}`` wildcards (``{after}``: the round before); ``per_model``: one job per
    (objective, training seed), and with ``per_round`` per online round too."""

    module: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    per_model: bool = False
    data: str | None = None  # the user's data folder (DVC dependency; Snakemake: the file)
    per_round: bool = False


MODEL = "{objective}/seed{seed}"
ONLINE = f"results/online/{MODEL}/round{{round}}"  # a later round's own training data
ADAPTER, EVAL = f"results/adapters/{MODEL}", f"results/eval/{MODEL}"
AFTER = f"{ADAPTER}/round{{after}}"  # the policy a round samples and starts from

STAGES: dict[str, Stage] = {
    "world": Stage("world", (), ("results/world",)),
    "prompts": Stage("prompts", (), ("results/prompts",), data=registry.DATA_DIRS["prompts"]),
    "candidates": Stage(
        "candidates",
        ("results/world", "results/prompts"),
        ("results/candidates",),
        data=registry.DATA_DIRS["candidates"],
    ),
    "rewards": Stage("rewards", ("results/world", "results/candidates"), ("results/rewards",)),
    "labels": Stage("labels", ("results/rewards",), ("results/labels",)),
    "train": Stage(
        "train",
        ("results/world", "results/candidates", "results/labels"),
        (f"{ADAPTER}/round1",),
        per_model=True,
    ),
    "evaluate_base": Stage(
        "evaluate", ("results/world", "results/prompts"), ("results/eval/base",)
    ),
    "evaluate": Stage(
        "evaluate",
        ("results/world", "results/prompts", f"{ADAPTER}/round1", "results/eval/base"),
        (f"{EVAL}/round1",),
        per_model=True,
    ),
    # online rounds (online.rounds) of online.objectives: round r samples round r-1's policy
    "candidates_round": Stage(
        "candidates",
        ("results/world", "results/prompts", AFTER),
        (f"{ONLINE}/candidates",),
        per_model=True,
        per_round=True,
    ),
    "rewards_round": Stage(
        "rewards",
        ("results/world", f"{ONLINE}/candidates"),
        (f"{ONLINE}/rewards",),
        per_model=True,
        per_round=True,
    ),
    "labels_round": Stage(
        "labels", (f"{ONLINE}/rewards",), (f"{ONLINE}/labels",), per_model=True, per_round=True
    ),
    "train_round": Stage(
        "train",
        ("results/world", f"{ONLINE}/candidates", f"{ONLINE}/labels", AFTER),
        (f"{ADAPTER}/round{{round}}",),
        per_model=True,
        per_round=True,
    ),
    "evaluate_round": Stage(
        "evaluate",
        ("results/world", "results/prompts", f"{ADAPTER}/round{{round}}", "results/eval/base"),
        (f"{EVAL}/round{{round}}",),
        per_model=True,
        per_round=True,
    ),
    # the compute-matched control of round r: round 1's adapter continued on round 1's data
    "train_matched": Stage(
        "train",
        ("results/world", "results/candidates", "results/labels", f"{ADAPTER}/round1"),
        (f"{ADAPTER}/matched{{round}}",),
        per_model=True,
        per_round=True,
    ),
    "evaluate_matched": Stage(
        "evaluate",
        ("results/world", "results/prompts", f"{ADAPTER}/matched{{round}}", "results/eval/base"),
        (f"{EVAL}/matched{{round}}",),
        per_model=True,
        per_round=True,
    ),
    "report": Stage(
        "report",
        ("results/world", "results/prompts", "results/adapters", "results/eval"),
        (
            "results/report",
            "results/metrics",
            "results/plots/win_vs_base.png",
            "results/plots/training_loss.png",
        ),
    ),
}


def row_of(stage: str, objective: str | None = None, rnd: int = 1, matched: bool = False) -> str:
    """The DAG row of a job of ``stage`` (the inverse of :func:`stage_of`)."""
    if stage == "evaluate" and objective == "base":
        return "evaluate_base"
    if matched:
        return f"{stage}_matched"
    if rnd > 1:
        return f"{stage}_round"
    return stage


def variant(row: str, rnd: int = 1) -> str:
    """The model folder a train/evaluate job writes: ``round<r>`` or ``matched<r>``."""
    return model_variant(rnd, row.endswith("_matched"))


def stage_of(row: str) -> str:
    """The CLI stage a DAG row runs (``evaluate_base`` is ``diffpref evaluate``)."""
    return STAGES[row].module


# -- code --------------------------------------------------------------------------------------


def plugins(stage: str, cfg: Config, objective: str | None = None) -> list[str]:
    """The modules a job imports by a name from the config: its backbone, its reward models,
    its loss. Registry lookups, so that a job depends on these and not on every alternative."""
    with paused():
        backbone = [registry.BACKBONES[cfg.backbone.kind][0]]
        rewards = [registry.REWARDS[r][0] for r in cfg.rewards.models]
        judged = [registry.REWARDS[r][0] for r in cfg.eval_rewards]
        loss = cfg.objectives[objective].loss if objective in cfg.objectives else None
    loss_module = [registry.loss_module(loss)] if loss else []
    return {
        "candidates": backbone,
        "rewards": rewards,
        "train": backbone + loss_module,
        "evaluate": backbone + judged,
    }.get(stage, [])


def static_code(row: str, src: Path | None = None) -> list[str]:
    """The source files a DAG row's stage module can import, whatever the config."""
    return imports.files(imports.closure([f"diffpref.stages.{stage_of(row)}"], src), src)


def code(row: str, cfg: Config, objective: str | None = None, src: Path | None = None) -> list[str]:
    """Every source file a job runs: :func:`static_code` and its config-picked modules'."""
    roots = [f"diffpref.stages.{stage_of(row)}", *plugins(stage_of(row), cfg, objective)]
    return imports.files(imports.closure(roots, src), src)


def dynamic_code(row: str, cfg: Config, objective: str | None = None) -> list[str]:
    """The files of :func:`code` that :func:`static_code` lacks (DVC tracks their digests in
    the job's resolved params file: ``dvc.yaml`` cannot name files chosen by params)."""
    return sorted(set(code(row, cfg, objective)) - set(static_code(row)))


# -- params ------------------------------------------------------------------------------------

# The keys each stage reads, as a function of the config (a prompt file's columns are read only
# when prompts come from a file). A key names a leaf of params.yaml, a whole section or entry
# (every leaf under it), or a mapping of models (``objectives``: which names it holds).
# tests/test_reruns.py holds this table to what the stages really read (their _reads.json).


def _backbone(c: Config) -> list[str]:
    real = [] if c.backbone.kind == "embedded" else ["pretrained", "vae", "variant", "resolution"]
    return ["device", "backbone.kind", "backbone.dtype", *(f"backbone.{k}" for k in real)]


def _reward_models(c: Config, names: list[str]) -> list[str]:
    """``names``: the models a job scores; the world's need no weights source."""
    real = set(names) - set(registry.WORLD_REWARDS)
    return ["rewards.models", *(["rewards.dtype", "rewards.sources"] if real else [])]


def _world(c: Config, o: str | None) -> list[str]:
    if c.world.source == "train":  # pretraining reads every setting
        return ["results", "world"]
    packaged = ["source", "fashion_mnist_dir", "device", "threads", "seed", "item_size"]
    packaged += ["eval_test_items", "eval_test_canvases_per_category"]
    packaged += ["sampler", "sample_steps", "guidance_scale"]
    return ["results", *(f"world.{k}" for k in packaged)]


def _prompts(c: Config, o: str | None) -> list[str]:
    file = ["file", "column", "category_column", "eval_fraction", "val_fraction"]
    world = ["heldout_wording", "heldout_combo"]
    own = file if c.prompts.source == "file" else world
    return [
        "results",
        *(f"prompts.{k}" for k in ["source", "n_train", "n_eval", "n_val", *own]),
    ] + (["seed"] if c.prompts.source == "world" else [])


def _candidates(c: Config, o: str | None) -> list[str]:
    keys = ["results", *_backbone(c), "candidates.source", "candidates.batch_size"]
    if c.candidates.source == "pickapic":
        return [*keys, "candidates.preference_file", "candidates.max_pairs"]
    return [
        *keys,
        "candidates.k",
        "seed",
        "sampling.scheduler",
        "sampling.steps",
        "sampling.guidance",
    ]


def _rewards(c: Config, o: str | None) -> list[str]:
    return ["results", "device", "rewards.batch_size", *_reward_models(c, c.rewards.models)]


def _candidates_round(c: Config, o: str | None) -> list[str]:
    """A later round samples the round before's policy: ``online.k`` per prompt, from round
    1's training prompts or fresh ones of the world's distribution (their seed and count)."""
    keys = ["results", *_backbone(c), "candidates.batch_size", "online.k", "online.prompts"]
    keys += ["seed", "sampling.scheduler", "sampling.steps", "sampling.guidance"]
    return keys + (["prompts.n_train"] if c.online.prompts == "fresh" else [])


def _labels(c: Config, o: str | None) -> list[str]:
    own = ["listwise_tau", "listwise_standardize", "pointwise_threshold"]
    own += [] if c.labels.reward == registry.HUMAN else ["tie_threshold", "pairs"]
    return ["results", "labels.reward", *(f"labels.{k}" for k in own)]


def _labels_round(c: Config, o: str | None) -> list[str]:
    own = ["listwise_tau", "listwise_standardize", "pointwise_threshold"]
    keys = ["results", "labels.reward", *(f"labels.{k}" for k in own)]
    return [*keys, "online.pairs", "online.tie_threshold"]


def _train(c: Config, o: str | None) -> list[str]:
    assert o is not None
    over = c.objectives[o].train.model_dump(exclude_none=True)
    shared = [f"train.{f}" for f in TrainParams.model_fields if f not in over]
    return ["results", *_backbone(c), f"objectives.{o}", *shared]


def _evaluate(c: Config, o: str | None) -> list[str]:
    own = ["seeds", "batch_size", "bootstrap", "export_geneval", "judge", "split"]
    own += [] if o is None else ["tie_threshold"]  # win rates against the base
    sampling = ["sampling.scheduler", "sampling.steps", "sampling.guidance"]
    # the base's yardsticks: best-of-K by the label reward; real canvases from world specs
    world = [f"world.{k}" for k in ("fashion_mnist_dir", "item_size", "jitter")]
    yard = ["labels.reward", *(["candidates.k"] if c.labels.reward in c.rewards.models else [])]
    yard += world if c.prompts.source == "world" else []
    return [
        "results",
        *_backbone(c),
        *sampling,
        *(f"evaluate.{k}" for k in own),
        *_reward_models(c, c.eval_rewards),
        *(yard if o is None else []),
    ]


def _report(c: Config, o: str | None) -> list[str]:
    ev = [f"evaluate.{k}" for k in ["seeds", "tie_threshold", "judge", "split"]]
    own = ["report.grid_prompts", "report.draws", "labels.reward"]  # win rates on both
    own += ["train.seed_streams"]  # whether two objectives' comparison is paired by seed
    # whether there are rounds is always read; which objectives take them, only when there are
    online = ["online.rounds", *(["online.objectives"] if c.online.rounds else [])]
    return ["results", "profile", "seed", "train_seeds", "objectives", *own, *ev, *online]


PARAMS: dict[str, Callable[[Config, str | None], list[str]]] = {
    "world": _world,
    "prompts": _prompts,
    "candidates": _candidates,
    "rewards": _rewards,
    "labels": _labels,
    "train": _train,
    "evaluate": _evaluate,
    "report": _report,
    "candidates_round": _candidates_round,
    "rewards_round": _rewards,
    "labels_round": _labels_round,
    "train_round": _train,  # the round itself is the job's name: equal keys in every round
    "train_matched": _train,
    "evaluate_round": _evaluate,
    "evaluate_matched": _evaluate,
}


def keys(row: str, cfg: Config, objective: str | None = None) -> list[str]:
    """The keys job (``row``, ``objective``) reads; ``objective`` None for the base model.
    ``row`` is a DAG row, or a stage for its round-1 job (``evaluate`` of ``base``)."""
    with paused():
        read = PARAMS[row] if row in PARAMS else PARAMS[stage_of(row)]  # evaluate_base
        return sorted(read(cfg, None if objective == "base" else objective))


def resolved(cfg: Config) -> dict[str, Any]:
    """The config as params.yaml would spell it with every default filled in (JSON values); an
    objective's entry holds its loss, its hyper-parameters and its ``train:`` overrides."""
    with paused():
        tree = cfg.model_dump(mode="json", exclude={"objectives", "profiles"})
        tree["objectives"] = {
            name: {
                "loss": o.loss,
                **o.params.model_dump(mode="json"),
                "train": o.train.model_dump(mode="json", exclude_none=True),
            }
            for name, o in cfg.objectives.items()
        }
    return tree


def value_at(tree: dict[str, Any], key: str) -> Any:
    """``key``'s value in a :func:`resolved` tree (``objectives`` alone: the names)."""
    if key == "objectives":
        return sorted(tree["objectives"])
    node: Any = tree
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def params(row: str, cfg: Config, objective: str | None = None) -> dict[str, Any]:
    """The job's resolved params: each key it reads and its value under the active profile."""
    tree = resolved(cfg)
    return {k: value_at(tree, k) for k in keys(row, cfg, objective)}


def params_hash(row: str, cfg: Config, objective: str | None = None) -> str:
    return file_hash(params(row, cfg, objective))


def file_hash(raw: Any) -> str:
    """The hash of params (a job's resolved params, or the whole resolved file: which
    configuration a pipeline execution ran)."""
    blob = json.dumps(raw, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# -- the rest of the workflow glue -------------------------------------------------------------


def job_resources(cfg: Config, stage: str) -> JobResources:
    """A stage's job resources under the active profile: ``resources.<backbone kind>``."""
    with paused():
        return cfg.resources[cfg.backbone.kind].of(stage)  # validated: the kind has an entry


def snakemake_shell(row: str, profile: str) -> str:
    """The rule's shell command, every argument one shell word (Snakemake's guidance: quote
    each): the profile (any string a params file or ``--config`` holds) shell-quoted, its
    braces doubled so that Snakemake's formatting leaves it as written; the wildcards through
    Snakemake's own ``:q``; ``{threads}`` is Snakemake's integer."""
    literal = shlex.quote(profile).replace("{", "{{").replace("}", "}}")
    words = ["diffpref", stage_of(row), "--params", "params.yaml", "--profile", literal]
    words += ["--threads", "{threads}"]
    if row == "evaluate_base":
        words += ["--objective", "base"]
    elif STAGES[row].per_model:
        words += ["--objective", "{wildcards.objective:q}", "--seed", "{wildcards.seed:q}"]
    if STAGES[row].per_round:
        words += ["--round", "{wildcards.round:q}"]
    if row.endswith("_matched"):
        words += ["--matched"]
    return " ".join(words)


def user_data(cfg: Config, stage: str) -> list[str]:
    """The user's data files ``stage`` reads under the active profile (a prompt file, a
    Pick-a-Pic shard): Snakemake inputs, so that editing one reruns the stage. Snakemake reads
    "{...}" in an input path as a wildcard, with no escape: such a name is a ConfigError."""
    with paused():
        p, c = cfg.prompts, cfg.candidates
        if stage == "prompts" and p.source == "file" and p.file:
            key, path = "prompts.file", p.file
        elif stage == "candidates" and c.source == "pickapic" and c.preference_file:
            key, path = "candidates.preference_file", c.preference_file
        else:
            return []
    if "{" in path or "}" in path:
        raise ConfigError(
            f"{key}: {path!r}: Snakemake reads braces in a file name as a wildcard; rename the file"
        )
    return [path]


def output_dirs(
    row: str, objective: str | None, seed: int | None, cfg: Config, rnd: int = 1
) -> list[Path]:
    """The folders a job writes, each as a whole (a declared file's folder for the report's
    plots), under the active ``results`` root; the first holds its keys read. ``row``: a DAG
    row, or a stage for its round-1 job."""
    row = row_of(row, objective) if row not in STAGES or objective == "base" else row
    with paused():
        root = cfg.results
    out = []
    for o in STAGES[row].outs:
        filled = o.format(objective=objective, seed=seed, round=rnd, after=rnd - 1)
        path = Path(root, Path(filled).relative_to("results"))
        out.append(path.parent if path.suffix else path)  # a file (.png): its folder
    return list(dict.fromkeys(out))


Job = tuple[str, str | None, int | None, int]  # (row, objective, training seed, round)


def jobs(cfg: Config) -> list[Job]:
    """Every job of the DAG as (row, objective, training seed, round); the base model's
    evaluation is ("evaluate_base", "base", None, 1)."""
    with paused():
        models = [(o, s) for o in cfg.objectives for s in cfg.train_seeds]
        online = [(o, s) for o in cfg.online.objectives for s in cfg.train_seeds]
        rounds = [r.round for r in cfg.online.rounds]
    out: list[Job] = []
    for row, s in STAGES.items():
        if row == "evaluate_base":
            out.append((row, "base", None, 1))
        elif s.per_round:
            out += [(row, o, seed, r) for o, seed in online for r in rounds]
        elif s.per_model:
            out += [(row, o, seed, 1) for o, seed in models]
        else:
            out.append((row, None, None, 1))
    return out


def written_dirs(cfg: Config) -> list[Path]:
    """Every folder the DAG's jobs replace or delete: their outputs, training checkpoints."""
    out = [d for row, o, s, r in jobs(cfg) for d in output_dirs(row, o, s, cfg, r)]
    with paused():
        out += [
            cfg.model_dir("checkpoints", o, s, variant(row, r))
            for row, o, s, r in jobs(cfg)
            if stage_of(row) == "train"
        ]
    return out


def output_dir(
    row: str, cfg: Config, objective: str | None, seed: int | None, rnd: int = 1
) -> Path:
    """The folder a job writes first (where its keys read go: :func:`settings.write_reads`)."""
    return output_dirs(row, objective, seed, cfg, rnd)[0]
