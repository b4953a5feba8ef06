"""Typed, validated ``params.yaml``: one configuration for every stage.

The file is read once per stage, the active ``profile`` is deep-merged over the base values,
and the result is validated with pydantic *before* any work starts, so a typo costs one clear
error (file, key, reason, exit code 2) instead of a crashed run an hour later. Every model is a
:class:`diffpref.settings.Settings`, so the keys a stage reads are recorded.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from diffpref import registry
from diffpref.config import loader
from diffpref.settings import (
    BatchSize,
    Float,
    Int,
    LearningRate,
    Name,
    PathText,
    Probability,
    Seed,
    Settings,
    Steps,
    bind,
    record,
)
from diffpref.world.settings import WorldParams


class ConfigError(Exception):
    """A bad ``params.yaml``: the CLI prints it and exits with code 2."""


BackboneKind = Literal["embedded", "sd15", "sdxl"]


class BackboneParams(Settings):
    kind: BackboneKind
    pretrained: PathText | None = Field(
        None, description="local diffusers directory or hub id (sd15/sdxl); embedded: world"
    )
    dtype: Literal["float32", "bfloat16", "float16"]
    vae: PathText | None = Field(
        None,
        description="sd15/sdxl: VAE directory or hub id replacing the pipeline's "
        "(e.g. madebyollin/sdxl-vae-fp16-fix)",
    )
    variant: Name | None = Field(None, description="weights variant on the hub, e.g. fp16")
    resolution: Int | None = Field(
        None,
        ge=8,
        le=4096,
        description="sd15/sdxl: image size in pixels; None: the UNet's native size",
    )

    @model_validator(mode="after")
    def _needs_weights(self) -> BackboneParams:
        if self.kind != "embedded" and not self.pretrained:
            raise ValueError(f"backbone.kind {self.kind!r} needs backbone.pretrained")
        return self


class SamplingParams(Settings):
    scheduler: Literal["ddim", "dpmsolver"]
    steps: Int = Field(ge=1, le=1000, description="denoising steps (DDPM has 1000 timesteps)")
    guidance: Float = Field(ge=0, le=100)


class PromptParams(Settings):
    source: Literal["world", "file"]
    n_train: Int = Field(
        ge=1, le=1_000_000, description="at most this many train prompts (file order)"
    )
    n_eval: Int = Field(ge=1, le=1_000_000, description="test prompts: every verdict's")
    n_val: Int = Field(
        ge=0,
        le=1_000_000,
        description="validation prompts: drawn like the test prompts, disjoint from every other "
        "split, for tuning choices (evaluate.split: validation); 0: none",
    )
    heldout_wording: Probability = Field(
        description="source: world: share of eval prompts in the held-out wording"
    )
    heldout_combo: Probability = Field(
        description="source: world: share of eval prompts (of categories that have held-out "
        "combinations) with a class combination never trained on"
    )
    file: PathText | None = Field(
        None,
        description="source: file: .txt (one per line), .jsonl, .csv, .tsv or .parquet; "
        "GenEval's evaluation_metadata.jsonl works as is",
    )
    column: Name = Field("prompt", description="prompt column (jsonl/csv/tsv/parquet)")
    category_column: Name | None = Field(
        None, description="None: 'category', else GenEval's 'tag', if the file has one"
    )
    eval_fraction: Float = Field(
        0.2, ge=0, lt=1, description="files without a 'split' column: hash split of the text"
    )
    val_fraction: Float = Field(
        0.1, ge=0, lt=1, description="files without a 'split' column: the validation share"
    )

    @model_validator(mode="after")
    def _file_given(self) -> PromptParams:
        if self.source == "file" and not self.file:
            raise ValueError("prompts.source: file needs prompts.file")
        return self

    @field_validator("val_fraction")
    @classmethod
    def _training_left(cls, v: float, info: ValidationInfo) -> float:
        eval_fraction = info.data.get("eval_fraction", 0.0)
        if eval_fraction + v >= 1:
            raise ValueError(
                f"eval_fraction {eval_fraction} + val_fraction {v} leaves no training prompts; "
                "keep the sum below 1"
            )
        return v


class CandidateParams(Settings):
    k: Int = Field(ge=2, le=64, description="candidates per training prompt")
    batch_size: BatchSize
    source: Literal["generate", "pickapic"] = Field(
        "generate", description="generate: sample the base model | pickapic: import human pairs"
    )
    preference_file: PathText | None = Field(
        None, description="pickapic: parquet with caption, jpg_0, jpg_1, label_0"
    )
    max_pairs: Int | None = Field(
        None, ge=1, le=10_000_000, description="pickapic: import at most this many"
    )

    @model_validator(mode="after")
    def _file_given(self) -> CandidateParams:
        if self.source == "pickapic" and not self.preference_file:
            raise ValueError("candidates.source: pickapic needs candidates.preference_file")
        return self


class RewardSource(Settings):
    """Where a real reward model's weights live: a local directory or a hub id."""

    model: PathText | None = Field(None, description="None: the reward's official hub id")
    processor: PathText | None = Field(None, description="tokenizer + image processor; None: model")
    head: PathText | None = Field(
        None, description="aesthetic: MLP head weights (.pth/.safetensors)"
    )
    trust_pickle: bool = Field(
        False,
        description="hpsv2: unpickle the checkpoint in full (runs any code in it); default: "
        "tensors only (torch.load weights_only), anything else refused",
    )


RewardName = Literal[tuple(registry.REWARDS)]  # a registered reward model
# a source: one directory / hub id, or a mapping; errors are those of the kind given
Source = Annotated[
    Union[Annotated[RewardSource, Tag("RewardSource")], Annotated[PathText, Tag("path")]],  # noqa: UP007
    Discriminator(lambda v: "path" if isinstance(v, str) else "RewardSource"),
]


class RewardParams(Settings):
    models: list[RewardName] = Field(min_length=1, max_length=16)
    batch_size: BatchSize
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    sources: dict[RewardName, Source] = Field(
        default_factory=dict,
        description="per reward: a directory/hub id, or {model, processor, head}; "
        "unset: the official hub ids",
    )

    @field_validator("models")
    @classmethod
    def _once_each(cls, models: list[str]) -> list[str]:
        if len(set(models)) != len(models):
            raise ValueError(f"repeated reward models in {models}: score each once")
        return models

    def source(self, name: str, default: RewardSource) -> RewardSource:
        """The configured source of ``name``: a plain string is one directory (or hub id)
        holding model and processor; in a mapping, unset fields fall back to ``default``."""
        got = self.sources.get(name)
        if got is None:
            return default
        if isinstance(got, str):
            got = RewardSource(model=got, processor=got)
        return default.model_copy(update=got.model_dump(exclude_none=True))


class LabelParams(Settings):
    reward: Name = Field(
        description="reward model that ranks candidates (one of rewards.models), or 'human'"
    )
    tie_threshold: Float = Field(ge=0, description="pairs closer than this are dropped")
    pairs: Literal["all", "best_worst"]
    listwise_tau: Float = Field(gt=0, description="softmax temperature of LAIR advantages")
    listwise_standardize: bool
    pointwise_threshold: Float | None = Field(
        description="desirable if reward >= this; None: above the prompt's median"
    )


# what an objective's ``train:`` may override: one type per setting, shared by both models
WarmupSteps = Annotated[Int, Field(ge=0, le=1_000_000)]
LoraRank = Annotated[Int, Field(ge=1, le=1024)]
Processes = Annotated[Int, Field(ge=1, le=64)]


class TrainParams(Settings):
    """Shared training settings; an objective may override any of them under ``train:``."""

    steps: Steps
    batch_size: BatchSize = Field(description="pairs / lists / images per step")
    lr: LearningRate
    warmup_steps: WarmupSteps
    weight_decay: Float = Field(1e-2, ge=0)
    max_grad_norm: Float = Field(1.0, gt=0)
    lora_rank: LoraRank
    lora_alpha: Float | None = Field(None, gt=0, description="None: equal to the rank")
    caption_dropout: Probability
    mixed_precision: Literal["fp32", "bf16", "fp16"]
    gradient_checkpointing: bool = Field(False, description="recompute UNet activations")
    optimizer: Literal["adamw", "adamw8bit"] = Field(
        "adamw", description="adamw8bit: bitsandbytes (GPU, optional dependency)"
    )
    checkpoint_every: Steps
    log_every: Steps
    num_processes: Processes = Field(
        description="data-parallel processes (one GPU each, or CPU processes); batch_size is "
        "the global batch, split evenly over them",
    )
    seed_streams: Literal["shared", "independent"] = Field(
        description="shared: every objective at training seed r draws the same adapter init, "
        "batch order, timesteps and noise (common random numbers), so the report compares two "
        "objectives as one paired difference over (seed, prompt); independent: each "
        "objective's streams are offset by a stable hash of its name and comparisons are "
        "unpaired. Fixed before the data are seen; not per objective",
    )


class TrainOverrides(Settings):
    steps: Steps | None = None
    batch_size: BatchSize | None = None
    lr: LearningRate | None = None
    warmup_steps: WarmupSteps | None = None
    lora_rank: LoraRank | None = None
    caption_dropout: Probability | None = None
    num_processes: Processes | None = None


class EvaluateParams(Settings):
    seeds: list[Seed] = Field(min_length=1, max_length=64)
    batch_size: BatchSize
    bootstrap: Int = Field(ge=10, le=100_000, description="resamples of each interval")
    judge: RewardName = Field(
        description="reward whose per-sample wins define win rates and verdicts; scored with "
        "rewards.models; not labels.reward, or verdicts measure how well an objective fit the "
        "label model (`diffpref check` warns)",
    )
    split: Literal["test", "validation"] = Field(
        "test",
        description="the prompts every model is evaluated on: test (results/prompts/eval.parquet, "
        "the report's verdicts) or validation (val.parquet: tuning choices, never verdicts)",
    )
    tie_threshold: Float = Field(
        ge=0, description="reward differences up to this count as ties in win rates"
    )
    export_geneval: bool = Field(
        False, description="also write samples in GenEval's <%05d>/samples/%04d.png layout"
    )


class ReportParams(Settings):
    grid_prompts: Int = Field(ge=1, le=64)
    draws: Int = Field(
        ge=1000,
        le=1_000_000,
        description="fiducial draws per interval and per power projection (seeded with `seed`)",
    )


def model_variant(rnd: int = 1, matched: bool = False) -> str:
    """The folder of one trained model under its seed: ``round<r>`` (round 1: the offline
    model), or ``matched<r>``, the compute-matched offline control of round r."""
    return f"matched{rnd}" if matched else f"round{rnd}"


class OnlineRound(Settings):
    """One online round after the first: trains on samples of round ``after``'s policy, with
    that policy as the frozen reference. Written with the round before it because DVC expands
    this list as is and cannot count."""

    round: Int = Field(ge=2, le=64)
    after: Int = Field(ge=1, le=63)


class OnlineParams(Settings):
    """Online (on-policy) rounds: docs/online-rounds.md."""

    objectives: list[Name] = Field(
        max_length=64, description="objectives retrained on their own samples, round by round"
    )
    rounds: list[OnlineRound] = Field(
        max_length=63, description="rounds after round 1: [{round: 2, after: 1}, ...]"
    )
    k: Int = Field(ge=2, le=64, description="candidates per prompt per round")
    pairs: Literal["all", "best_worst"] = Field(description="pairs from the K candidates")
    tie_threshold: Float = Field(
        ge=0, description="pairs closer than this are dropped (a margin threshold)"
    )
    prompts: Literal["same", "fresh"] = Field(
        description="same: round 1's training prompts | fresh: new world prompts each round"
    )

    @field_validator("rounds")
    @classmethod
    def _a_chain(cls, rounds: list[OnlineRound]) -> list[OnlineRound]:
        for i, r in enumerate(rounds):
            if (r.round, r.after) != (i + 2, i + 1):
                want = ", ".join(f"{{round: {j + 2}, after: {j + 1}}}" for j in range(len(rounds)))
                raise ValueError(
                    f"entry {i + 1} is {{round: {r.round}, after: {r.after}}}: rounds follow each "
                    f"other from round 2, each after the one before: [{want}]"
                )
        return rounds

    @property
    def last(self) -> int:
        """The last round (1: offline only)."""
        return 1 + len(self.rounds)


class TrackingParams(Settings):
    """What the MLflow record keeps; read by every stage's record, by no stage's work (so it is
    in no stage's params hash: changing it reruns nothing)."""

    log_large_artifacts: bool = Field(
        description="false: artifacts over large_artifact_mb are logged by reference"
    )
    large_artifact_mb: Float = Field(gt=0, le=10_000_000)


Cpus = Annotated[Int, Field(ge=1, le=1024)]
MemMb = Annotated[Int, Field(ge=1, le=100_000_000)]  # 100 TB
Runtime = Annotated[Int, Field(ge=1, le=525_600)]  # a year, in minutes
Gpus = Annotated[Int, Field(ge=0, le=64)]


class JobResources(Settings):
    """What one stage's job asks for: Snakemake threads, and from a scheduler (SLURM:
    ``--cpus-per-task``, ``--mem``, ``--time``, ``--gpus``). Run locally, only ``cpus`` counts,
    capped by ``--cores``."""

    cpus: Cpus = Field(description="threads (torch CPU threads)")
    mem_mb: MemMb = Field(description="host memory, MB")
    runtime: Runtime = Field(description="wall-time limit, minutes")
    gpu: Gpus = Field(description="GPUs on one node")

    @property
    def scheduler(self) -> dict[str, int]:
        """As Snakemake resources, named as its SLURM executor reads them."""
        return {"mem_mb": self.mem_mb, "runtime": self.runtime, "gpu": self.gpu}


class ResourceOverrides(Settings):
    cpus: Cpus | None = None
    mem_mb: MemMb | None = None
    runtime: Runtime | None = None
    gpu: Gpus | None = None


class BackboneResources(Settings):
    """One backbone kind's jobs: ``default`` for every stage, each stage's entry over it
    (``evaluate`` covers the base model's evaluation too)."""

    default: JobResources
    world: ResourceOverrides = Field(default_factory=ResourceOverrides)
    prompts: ResourceOverrides = Field(default_factory=ResourceOverrides)
    candidates: ResourceOverrides = Field(default_factory=ResourceOverrides)
    rewards: ResourceOverrides = Field(default_factory=ResourceOverrides)
    labels: ResourceOverrides = Field(default_factory=ResourceOverrides)
    train: ResourceOverrides = Field(default_factory=ResourceOverrides)
    evaluate: ResourceOverrides = Field(default_factory=ResourceOverrides)
    report: ResourceOverrides = Field(default_factory=ResourceOverrides)

    def of(self, stage: str) -> JobResources:
        over: ResourceOverrides = getattr(self, stage)
        return self.default.model_copy(update=over.model_dump(exclude_none=True))


# resources: kind -> BackboneResources; a kind left out gets JobResources' defaults
Resources = dict[BackboneKind, BackboneResources]


class Objective(Settings):
    """One entry of ``objectives:``: a loss from the registry plus its hyper-parameters (which
    sit at the entry's own key in params.yaml)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    UNRECORDED = frozenset({"name"})
    FLAT = frozenset({"params"})

    name: str
    loss: str
    params: Any  # the loss module's own validated ``Params``
    train: TrainOverrides = Field(default_factory=TrainOverrides)

    @property
    def module(self) -> Any:
        return _loss_module(self.loss)

    @property
    def labels(self) -> str:
        return self.params.labels


class Config(Settings):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    profile: str
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)
    seed: Seed = Field(description="data seed: prompts, candidates, labels")
    train_seeds: list[Seed] = Field(
        min_length=1,
        max_length=32,
        description="training replicates: one adapter per (objective, seed); top level, not "
        "under train:, so that adding a seed reruns only that seed's jobs",
    )
    device: Literal["auto", "cpu", "cuda"]
    results: str = Field(
        description="where the stages write: a folder inside the project (the params file's "
        "folder or the working directory), unless results_outside_project",
    )
    results_outside_project: bool = Field(
        description="allow `results` outside the project (another disk); `diffpref check` "
        "reports it",
    )
    world: WorldParams
    backbone: BackboneParams
    sampling: SamplingParams
    prompts: PromptParams
    candidates: CandidateParams
    rewards: RewardParams
    labels: LabelParams
    train: TrainParams
    objectives: dict[str, Objective] = Field(default_factory=dict)
    evaluate: EvaluateParams
    report: ReportParams
    online: OnlineParams
    tracking: TrackingParams
    resources: Resources = Field(
        default_factory=dict,
        description="per backbone kind, what each stage's job asks a scheduler for; in no "
        "stage's params, so editing it (outside profiles:) reruns nothing",
    )

    @model_validator(mode="after")
    def _distinct_seeds(self) -> Config:
        if len(set(self.train_seeds)) != len(self.train_seeds):
            raise ValueError(f"train_seeds: repeated seeds in {self.train_seeds}")
        return self

    @model_validator(mode="after")
    def _label_reward_is_scored(self) -> Config:
        known = [*self.rewards.models, registry.HUMAN]
        if self.labels.reward not in known:
            raise ValueError(
                f"labels.reward: {self.labels.reward!r} is not scored: use one of "
                f"rewards.models {self.rewards.models} (or {registry.HUMAN!r} for imported "
                "preferences)"
            )
        return self

    @property
    def eval_rewards(self) -> list[str]:
        """The reward models the evaluate stage scores: ``rewards.models`` and the judge."""
        return list(dict.fromkeys([*self.rewards.models, self.evaluate.judge]))

    @model_validator(mode="after")
    def _validation_prompts_exist(self) -> Config:
        if self.evaluate.split == "validation" and self.prompts.n_val == 0:
            raise ValueError(
                "evaluate.split: validation evaluates on validation prompts, and prompts.n_val "
                "is 0: set it above 0"
            )
        return self

    @model_validator(mode="after")
    def _online_alone_offline_if_not_generated(self) -> Config:
        if self.online.rounds and self.candidates.source != "generate":
            raise ValueError(
                "online.rounds: online rounds sample the policy: they need candidates.source: "
                f"generate (not {self.candidates.source!r})"
            )
        if self.online.prompts == "fresh" and self.prompts.source != "world":
            raise ValueError(
                "online.prompts: fresh prompts come from the embedded world's prompt "
                "distribution: use prompts.source: world, or online.prompts: same"
            )
        if self.online.rounds and self.labels.reward == registry.HUMAN:
            raise ValueError("online.rounds: online rounds need a reward model as labels.reward")
        return self

    @model_validator(mode="after")
    def _resources_of_the_backbone(self) -> Config:
        if self.backbone.kind not in self.resources:
            raise ValueError(
                f"resources: no entry for backbone.kind {self.backbone.kind!r}: say what its "
                f"jobs need (resources.{self.backbone.kind}.default: cpus, mem_mb, runtime, gpu)"
            )
        return self

    def model_dir(
        self, kind: str, objective: str, seed: int | None, variant: str = "round1"
    ) -> Path:
        """``results/<kind>/<objective>/seed<N>/<variant>``: one folder per trained model
        (``kind``: adapters, eval, checkpoints). ``variant``: ``round<r>`` (round 1: the
        offline model) or ``matched<r>`` (the compute-matched offline control of round r).
        The base model has neither seed nor variant."""
        path = self.path(kind, objective)
        return path if seed is None else path / f"seed{seed}" / variant

    def eval_prompts(self) -> Path:
        """The prompt table every model is evaluated on (``evaluate.split``): the test prompts
        of the report's verdicts, or the validation prompts that tuning uses instead."""
        split = "val" if self.evaluate.split == "validation" else "eval"
        return self.path("prompts", f"{split}.parquet")

    def data_path(
        self, kind: str, objective: str | None = None, seed: int | None = None, rnd: int = 1
    ) -> Path:
        """Training data (``kind``: candidates, rewards, labels) of round ``rnd``: round 1's
        are shared (``results/<kind>``), a later round's belong to one (objective, seed).
        Any other ``kind`` is shared by every round (prompts, eval)."""
        if rnd == 1 or kind not in ("candidates", "rewards", "labels"):
            return self.path(kind)
        return self.path("online", str(objective), f"seed{seed}", f"round{rnd}", kind)

    def train_for(self, objective: str) -> TrainParams:
        """Shared training settings with the objective's overrides applied. A stage that calls
        this reads the objective's ``train:`` overrides and, of ``train:``, only the settings
        they leave alone (so editing a shared value an objective overrides reruns nothing)."""
        entry = self.objectives[objective]
        over = entry.train.model_dump(exclude_none=True)
        if (key := entry.key_of("train")) is not None:
            record(key, over)
        tp = self.train.model_copy(update=over)
        tp._sources = dict.fromkeys(over)  # read above, as the overrides
        return tp

    def path(self, *parts: str) -> Path:
        return Path(self.results, *parts)


# An objective's name becomes a folder (results/adapters/<name>/), a DVC params key
# (objectives.<name>: no dots) and part of a DVC stage name; a profile's is passed on every
# stage's command line and recorded in MLflow. Both: letters, digits, _ and -, starting with a
# letter (so no name climbs out of results/, hides as a dot-file, or is a number that YAML 1.1
# and DVC's YAML 1.2 read differently: 1e3, 0o17, 1_000), at most 64 characters.
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
RULE = "use letters, digits, '_' and '-', starting with a letter, at most 64 characters"


def name_error(name: Any, what: str, why: str) -> str | None:
    """Why ``name`` cannot name an objective or a profile (``what``), or None."""
    if not isinstance(name, str):
        kinds = {bool: "a boolean", int: "a number", float: "a number", type(None): "null"}
        kind = kinds.get(type(name), f"no text ({type(name).__name__})")
        return f"{name!r} is not a valid {what} name: YAML reads it as {kind}; {RULE} ({why})"
    if not NAME.fullmatch(name):
        return f"{name!r} is not a valid {what} name: {RULE} ({why})"
    return None


def _objective(name: Any, entry: Any) -> Objective:
    if error := name_error(name, "objective", "it names folders and DVC stages"):
        raise ConfigError(error)
    if name.lower() == "base":
        raise ConfigError("'base' is reserved for the untrained model")
    if not isinstance(entry, dict) or "loss" not in entry:
        raise ConfigError("needs a 'loss' key naming a registered loss")
    entry = dict(entry)
    loss = entry.pop("loss")
    train = entry.pop("train", {})
    try:
        module = _loss_module(loss)
    except KeyError as e:
        raise ConfigError(f"loss: {e.args[0]}") from None
    return Objective(name=name, loss=loss, params=module.Params(**entry), train=train)


def _loss_module(name: str) -> Any:
    """The registered loss ``name``, imported on first use: the objectives import torch, and
    the Snakefile imports this module (every SLURM job parses the Snakefile twice)."""
    from diffpref.objectives import get

    return get(name)


def _errors(path: Path, prefix: str, e: ValidationError) -> list[str]:
    out = []
    for err in e.errors():
        loc = [prefix] if prefix else []
        loc += [str(p) for p in err["loc"]]
        msg = err["msg"].removeprefix("Value error, ")  # our validators' own messages
        if err["type"] == "finite_number":  # 1e309 has no dot: YAML reads text, pydantic inf
            msg += f" (got {err['input']!r})"
        # no key: a check across keys, whose message names them
        out.append(f"{path}: {'.'.join(loc)}: {msg}" if loc else f"{path}: {msg}")
    return out


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base`` (:func:`merge_into`)."""
    return merge_into(copy.deepcopy(base), over)


def merge_into(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into ``base`` in place (a profile's overrides; also ruamel's nodes, which
    keep comments: ``diffpref dvc-params``); a null over a mapping removes it (a profile that
    runs fewer objectives: ``objectives: {kto: null}``), and a null over nothing adds nothing
    (the same profile over a file that already left kto out)."""
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge_into(base[k], v)
        elif v is None and (k not in base or isinstance(base[k], dict)):
            base.pop(k, None)
        else:
            base[k] = copy.deepcopy(v)
    return base


def read_raw(path: str | Path, profile: str | None = None) -> dict[str, Any]:
    """The file's mapping with ``profile`` (from the argument or the file) merged in."""
    path = Path(path)
    raw = read_file(path)
    if profile is not None:
        raw["profile"] = profile
    return with_profile(raw, path)


def read_file(path: str | Path) -> dict[str, Any]:
    """The file's own mapping, read by the hardened reader (:mod:`.loader`: size, encoding,
    nesting, aliases, duplicate keys); nothing merged."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file")
    try:
        raw = loader.load(path) or {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read: {e.strerror}") from None
    except loader.ParamsFileError as e:
        raise ConfigError(f"{path}: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return raw


PROFILE_USE = "it is passed on every stage's command line and recorded in MLflow"


def with_profile(raw: dict[str, Any], path: str | Path = "params.yaml") -> dict[str, Any]:
    """``raw`` with its active ``profile``'s overrides deep-merged in; every profile's name is
    checked, not only the active one's."""
    name = raw.get("profile", "default")
    profiles = raw.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise ConfigError(f"{path}: profiles: must be a mapping name -> overrides")
    for key, over in profiles.items():
        if error := name_error(key, "profile", PROFILE_USE):
            raise ConfigError(f"{path}: profiles.{key}: {error}")
        if key == "default":
            raise ConfigError(
                f"{path}: profiles.default: 'default' is reserved for the values outside "
                "profiles:; rename it"
            )
        if not isinstance(over, dict):
            raise ConfigError(f"{path}: profiles.{key}: must be a mapping of overrides")
    if name == "default":
        return raw
    if error := name_error(name, "profile", PROFILE_USE):
        raise ConfigError(f"{path}: profile: {error}")
    if name not in profiles:
        known = ", ".join(["default", *profiles])
        raise ConfigError(f"{path}: profile: unknown profile {name!r} (known: {known})")
    return deep_merge(raw, profiles[name])


def load(path: str | Path = "params.yaml", profile: str | None = None) -> tuple[Config, dict]:
    """Validated config plus the merged raw mapping (for hashing and logging)."""
    raw = read_raw(path, profile)
    return validate(raw, path), raw


def validate(raw: dict[str, Any], path: str | Path = "params.yaml") -> Config:
    """``raw`` (its profile already merged) as a validated config whose reads are recorded;
    every error at once, each naming ``path`` and the key."""
    path = Path(path)
    rest = {k: v for k, v in raw.items() if k != "objectives"}
    errors: list[str] = []
    if isinstance(raw.get("train"), dict) and "seeds" in raw["train"]:
        errors.append(
            f"{path}: train.seeds: training seeds are the top-level key `train_seeds` (outside "
            "`train:`, so that adding a seed reruns only that seed's jobs)"
        )
        rest["train"] = {k: v for k, v in raw["train"].items() if k != "seeds"}
    if isinstance(raw.get("evaluate"), dict) and "win_reward" in raw["evaluate"]:
        errors.append(
            f"{path}: evaluate.win_reward: renamed `evaluate.judge` (the reward of the verdicts "
            "and win rates; another than labels.reward)"
        )
        ev = dict(raw["evaluate"])  # the old value as the new key's: one error, not two
        rest["evaluate"] = {"judge": ev.pop("win_reward"), **ev}
    cfg = None
    try:
        cfg = Config.model_validate(rest)
    except ValidationError as e:
        errors += _errors(path, "", e)
    objectives = raw.get("objectives") or {}
    if not isinstance(objectives, dict):
        errors.append(f"{path}: objectives: must be a mapping name -> {{loss: ..., ...}}")
        objectives = {}
    parsed = {}
    folded: dict[str, str] = {}
    for name, entry in objectives.items():
        if isinstance(name, str) and (other := folded.setdefault(name.lower(), name)) != name:
            errors.append(
                f"{path}: objectives.{name}: same folder as objectives.{other} on a "
                "case-insensitive file system; rename one"
            )
            continue
        try:
            parsed[name] = _objective(name, entry)
        except ValidationError as e:
            errors += _errors(path, f"objectives.{name}", e)
        except ConfigError as e:
            errors.append(f"{path}: objectives.{name}: {e}")
    if cfg is not None:
        cfg.objectives = parsed
        errors += _share_errors(cfg, path)
        errors += _online_errors(cfg, path)
        errors += _results_errors(cfg, path)
    if errors:
        raise ConfigError("\n".join(errors))
    assert cfg is not None
    bind(cfg)
    return cfg


def _share_errors(cfg: Config, path: Path) -> list[str]:
    """Every training process takes an equal share of each global batch: ``batch_size`` must
    be a multiple of ``num_processes`` (reported where the objective's values come from)."""
    found = {}
    for name, objective in cfg.objectives.items():
        tp = cfg.train_for(name)
        if tp.batch_size % tp.num_processes:
            over = objective.train.batch_size or objective.train.num_processes
            where = f"objectives.{name}.train" if over else "train"
            found[where] = (
                f"{path}: {where}: batch_size {tp.batch_size} is not a multiple of "
                f"num_processes {tp.num_processes} (train.batch_size is the global batch, "
                "split evenly over the train.num_processes processes)"
            )
    return list(found.values())


def online_error(objective: Objective) -> str | None:
    """Why ``objective`` cannot take part in online rounds, or None. A round continues the
    previous round's LoRA with it as the frozen reference: soft tokens have no LoRA policy
    (the backbone stays frozen), and Rethinking-DPO's moving reference already replaces the
    reference during training, its divergence measured against the base."""
    if objective.labels == "captions":
        return (
            f"loss {objective.loss!r} trains soft tokens on a frozen backbone: there is no LoRA "
            "policy for a round to continue"
        )
    if getattr(objective.params, "rethinking", None) is not None:
        return (
            "its rethinking: moving reference already replaces the reference during training "
            "(measured against the base model); online rounds fix it to the previous round"
        )
    return None


def _online_errors(cfg: Config, path: Path) -> list[str]:
    """Online objectives exist, once each, and can continue a LoRA policy."""
    errors = []
    names = cfg.online.objectives
    if len(set(names)) != len(names):
        errors.append(f"{path}: online.objectives: repeated names in {names}")
    for name in dict.fromkeys(names):
        if name not in cfg.objectives:
            known = ", ".join(cfg.objectives) or "none"
            errors.append(f"{path}: online.objectives: {name!r} is not an objective ({known})")
        elif why := online_error(cfg.objectives[name]):
            errors.append(f"{path}: online.objectives: {name!r} cannot take online rounds: {why}")
    return errors


def project_roots(path: str | Path) -> list[Path]:
    """The project, resolved: the params file's folder and the working directory (relative
    paths in params are read from there); one folder when the stage runs where its params are,
    as under Snakemake and DVC."""
    return list(dict.fromkeys([Path(path).resolve().parent, Path.cwd().resolve()]))


def results_outside(cfg: Config, path: str | Path) -> Path | None:
    """The results root, resolved (``..`` and symbolic links followed), if it lies outside
    the project (:func:`project_roots`), else None."""
    root = Path(cfg.results).resolve()
    inside = any(root.is_relative_to(p) and root != p for p in project_roots(path))
    return None if inside else root


def _results_errors(cfg: Config, path: Path) -> list[str]:
    """Stages replace folders named like their outputs under ``results``: outside the project
    that could be any folder of that name, so it takes ``results_outside_project: true``; the
    project folder itself is never a results root."""
    root = results_outside(cfg, path)
    if root is None:
        return []
    roots = project_roots(path)
    if root in roots:
        return [
            f"{path}: results: {cfg.results!r} is the project folder itself; stages write "
            "folders named like their outputs (prompts, report, ...) there: use a folder inside "
            "it, such as results"
        ]
    if cfg.results_outside_project:
        return []
    link = "" if Path(cfg.results).absolute() == root else " (resolved, links followed)"
    where = " or ".join(map(str, roots))
    return [
        f"{path}: results: {cfg.results!r} is {root}{link}, outside the project ({where}): "
        "stages replace folders named like their outputs there; use a folder inside the "
        "project, or set results_outside_project: true to allow it"
    ]
