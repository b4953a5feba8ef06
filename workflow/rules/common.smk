# Shared wiring: the validated config of the active profile, and per DAG row what the job
# reads (diffpref.config.dag): its code (the stage module's import closure plus the modules the
# config picks), its params (each resolved key as its own "key=value" param, so that a rerun's
# reason names the keys that changed), the user's data files and the job's resources.
import functools
import json
import os
import re
import uuid

from diffpref import env
from diffpref.config import ConfigError, read_raw, validate
from diffpref.config import dag

# one id per `snakemake` invocation: every stage's MLflow run nests under that execution's run
os.environ.setdefault(env.PIPELINE_ID, f"snakemake-{uuid.uuid4().hex[:12]}")
try:
    env.check()
except env.EnvError as e:
    raise WorkflowError(str(e)) from None
# params.yaml itself, through diffpref's reader (size, encoding, nesting, alias budget,
# duplicate keys), not Snakemake's `configfile:` loader, which checks none of them; of
# `--config` only `profile=NAME` counts (it reaches every stage as --profile)
if other := sorted(set(config) - {"profile"}):
    raise WorkflowError(
        f"--config {', '.join(map(str, other))}: only --config profile=NAME is read; set other "
        "values in params.yaml (every stage reads the file, not Snakemake's config)"
    )
try:
    CFG = validate(read_raw("params.yaml", config.get("profile")))
except ConfigError as e:
    raise WorkflowError(f"params.yaml is not valid:\n{e}") from None
PROFILE = CFG.profile
OBJECTIVES = list(CFG.objectives)
SEEDS = CFG.train_seeds  # the active profile's (DVC, which cannot see profiles, expands the top level)
ONLINE = CFG.online.objectives  # objectives with later rounds, and their rounds (2, 3, ...)
ROUNDS = [r.round for r in CFG.online.rounds]


def cmd(row):
    """The job's shell command, every value quoted (dag.snakemake_shell)."""
    return dag.snakemake_shell(row, PROFILE)


@functools.cache  # one evaluation per job, however many param slots read it
def _key_values(row, objective=None):
    params = dag.params(row, CFG, objective)
    return [f"{k}={json.dumps(v, sort_keys=True)}" for k, v in params.items()]


def params_of(row):
    """The job's resolved params, one Snakemake param per key: Snakemake reruns a job whose
    params changed and its reason lists the changed "key=value" pairs. A row with one job per
    objective gets as many slots as its widest job (the others pad with ""). Each slot is a
    function: Snakemake fills "{...}" in a plain string param as a wildcard (a profile name or
    a path holding braces would break the DAG), never in what a function returns."""
    per_model = dag.STAGES[row].per_model
    names = (ONLINE if dag.STAGES[row].per_round else OBJECTIVES) if per_model else [None]
    n = max((len(_key_values(row, o)) for o in names), default=0)

    def slot(w, i):
        kv = _key_values(row, w.objective if per_model else None)
        return kv[i] if i < len(kv) else ""

    return [lambda w, i=i: slot(w, i) for i in range(n)]


def code_of(row):
    """The job's source files (an edit reruns it)."""
    if dag.STAGES[row].per_model:
        return lambda w: dag.code(row, CFG, w.objective)
    return dag.code(row, CFG)


def data_of(row):
    """The user's data files the stage reads (a prompt file, a Pick-a-Pic shard): an edit
    reruns it. dvc.yaml depends on their folders instead (registry.DATA_DIRS)."""
    try:
        return dag.user_data(CFG, row)
    except ConfigError as e:
        raise WorkflowError(f"params.yaml: {e}") from None


def res(row):
    """The stage's job resources from params.yaml, by backbone kind: ``.cpus`` for threads,
    ``.scheduler`` for the rule's resources (what SLURM is asked for)."""
    return dag.job_resources(CFG, dag.stage_of(row))


def after(row):
    """The adapter of the round before (``{after}`` in the DAG table: no wildcard of its own)."""
    template = next(d for d in dag.STAGES[row].deps if "{after}" in d)
    return lambda w: template.format(
        objective=w.objective, seed=w.seed, round=w.round, after=int(w.round) - 1
    )


# only the configured objectives, training seeds and later rounds (names validated by the schema)
wildcard_constraints:
    objective="|".join(map(re.escape, OBJECTIVES)) or "(?!)",
    seed="|".join(map(str, SEEDS)),
    round="|".join(map(str, ROUNDS)) or "(?!)",


onstart:
    # the MLflow store, created once before parallel jobs (or the run stops if it is unusable)
    shell("diffpref tracking-init")
