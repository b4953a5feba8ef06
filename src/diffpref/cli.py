"""``diffpref <stage> --params params.yaml``: one entry point, one sub-command per stage.

The CLI validates params before importing anything heavy, opens the stage's MLflow record,
and runs the stage module's ``run(ctx)``. Bad params exit with code 2 and nothing computed.
``train`` with ``train.num_processes > 1`` re-executes itself under ``accelerate launch``
(:mod:`diffpref.launch`); rank 0 alone then logs and keeps the MLflow record.
"""

from __future__ import annotations

import os
import time

_T0 = time.perf_counter()  # the process start, as far as a stage's start-up cost goes

# Parallel jobs share few cores: OpenMP's default busy-wait makes a 2-thread torch 3-15x slower
# next to another busy process. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import functools
import importlib
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from diffpref import config as config_mod
from diffpref import env, launch, settings
from diffpref.config import dag
from diffpref.stages import STAGES

log = logging.getLogger("diffpref")


# stages with one job per model (train, evaluate) or, in a later online round, per
# (objective, seed, round) (candidates, rewards, labels too)
MODEL_STAGES = ("candidates", "rewards", "labels", "train", "evaluate")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffpref", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name in STAGES:
        s = sub.add_parser(name, help=f"run the {name} stage")
        s.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
        s.add_argument("--profile", default=None, help="override the file's `profile`")
        s.add_argument("--threads", type=_threads, default=None, help="torch CPU threads")
        if name in MODEL_STAGES:
            s.add_argument(
                "--objective",
                help="objective name (evaluate also takes 'base'; candidates, rewards, labels: "
                "an online objective's later round); or --job",
            )
            s.add_argument(
                "--job",
                help=f"the job as DVC names it ({name}@dpo-0: objective and seed; "
                f"{name}_round@dpo-0-round0: the first online round); dvc.yaml passes "
                '"$DVC_STAGE", so no params value is ever part of its shell command',
            )
            s.add_argument(
                "--seed",
                type=int,
                default=None,
                help="training seed, one of train_seeds "
                "(required except for evaluate --objective base)",
            )
            s.add_argument(
                "--round",
                dest="rnd",
                type=int,
                default=1,
                help="online round (default 1: the offline run; 2 and later: online.rounds)",
            )
        if name in ("train", "evaluate"):
            s.add_argument(
                "--matched",
                action="store_true",
                help="the compute-matched offline control of --round (round 1's data, "
                "round x train.steps)",
            )
    c = sub.add_parser("check", help="validate params.yaml and exit")
    c.add_argument("--params", default="params.yaml")
    c.add_argument("--profile", default=None)
    r = sub.add_parser(
        "resolve",
        help="write each job's resolved params to results/resolved/ (DVC's first stage: what "
        "the other stages depend on)",
    )
    r.add_argument("--params", default="params.yaml")
    r.add_argument("--profile", default=None)
    w = sub.add_parser(
        "why",
        help="say why a job would rerun: the params values, code files and inputs that changed "
        "since it ran (jobs named as DVC names them: train@dpo-0, evaluate_base, report)",
    )
    w.add_argument("job")
    w.add_argument("--params", default="params.yaml")
    w.add_argument("--profile", default=None)
    d = sub.add_parser(
        "dvc-yaml", help="write dvc.yaml from the DAG table (run in the project root)"
    )
    d.add_argument(
        "--check", action="store_true", help="only say whether dvc.yaml is current (exit 1 if not)"
    )
    f = sub.add_parser(
        "dvc-params",
        help="write a profile's values into the top level of the params file (profile: "
        "default), so that `dvc repro` runs what the profile runs: DVC cannot see profiles",
    )
    f.add_argument("profile")
    f.add_argument("--params", default="params.yaml")
    sub.add_parser(
        "tracking-init",
        help="create (or check) the MLflow store and experiment before parallel jobs start, "
        "and write any records kept while it was unreachable",
    )
    sub.add_parser(
        "tracking-replay",
        help="write the MLflow records kept in .mlflow-pending/ while the store was unreachable",
    )
    return p


def _threads(text: str) -> int:
    """``--threads``: 1 to 1024 (argparse reports anything else as a usage error, exit 2)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= env.MAX_THREADS:
        raise argparse.ArgumentTypeError(f"{text!r}: use a whole number from 1 to 1,024")
    return n


def _clean_errors(main: Callable[..., int]) -> Callable[..., int]:
    """Bad input found by a stage or by ``check`` (:class:`diffpref.io.InputError`: a prompt
    file, a shard, a damaged artifact) ends like bad params: the message, no traceback, exit
    code 2. An output that did not fit on the disk (:class:`diffpref.io.DiskFull`) ends the
    same way with exit code 1. Outputs are atomic, so the previous ones are untouched; the
    stage's MLflow run, if one was opened, is FAILED."""

    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None) -> int:
        from diffpref.io import DiskFull, InputError

        try:
            return main(argv)
        except (InputError, env.EnvError, DiskFull) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1 if isinstance(e, DiskFull) else 2

    return wrapped


@_clean_errors
def main(argv: list[str] | None = None) -> int:
    env.check()  # a bad environment variable: one line, exit 2, before anything else
    launch.die_with_launcher()
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    level = logging.INFO if launch.is_main() else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s")
    if args.stage in ("tracking-init", "tracking-replay"):
        return tracking_init(replay_only=args.stage == "tracking-replay")
    if args.stage == "dvc-yaml":
        return dvc_yaml(args.check)
    if args.stage == "dvc-params":
        return dvc_params(args.params, args.profile)
    try:
        cfg, raw = config_mod.load(args.params, args.profile)
    except config_mod.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if error := _job_error(args, cfg):
        print(f"error: {args.params}: {error}", file=sys.stderr)
        return 2
    objective = getattr(args, "objective", None)
    rnd, matched = getattr(args, "rnd", 1), getattr(args, "matched", False)
    if error := _round_error(args.stage, cfg, objective, rnd, matched):
        print(f"error: {args.params}: {error}", file=sys.stderr)
        return 2
    if (
        objective is not None
        and objective not in cfg.objectives
        and not (args.stage == "evaluate" and objective == "base")
    ):
        known = ", ".join(cfg.objectives) or "none"
        print(
            f"error: {args.params}: objectives.{objective}: not defined (known: {known})",
            file=sys.stderr,
        )
        return 2
    seed = getattr(args, "seed", None)
    if error := _seed_error(args, cfg, objective, seed):
        print(f"error: {args.params}: train_seeds: {error}", file=sys.stderr)
        return 2
    if error := _dvc_matrix_error(args.params, cfg):
        print(f"error: {args.params}: {error}", file=sys.stderr)
        return 2
    if args.stage == "why":
        from diffpref.config.why import explain

        try:
            lines = explain(args.job, cfg)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print("\n".join(lines) if lines else f"{args.job}: up to date (nothing it reads changed)")
        return 0
    if args.stage == "resolve":
        from diffpref.config.dvc import RESOLVED, write_resolved

        names = write_resolved(cfg, Path(RESOLVED))
        log.info(
            "resolved params of %d jobs in %s/ (profile %s)", len(names), RESOLVED, cfg.profile
        )
        return 0
    if args.stage == "check":
        from diffpref.datasources import check_inputs

        check_inputs(cfg)
        if cfg.evaluate.judge == cfg.labels.reward:
            log.warning(
                "%s: evaluate.judge is labels.reward (%s): verdicts then partly measure how "
                "well an objective fit the label model (over-optimisation); judge with another "
                "reward model",
                args.params,
                cfg.labels.reward,
            )
        if (outside := config_mod.results_outside(cfg, args.params)) is not None:
            print(f"{args.params}: results: {outside} is outside the project (allowed by "
                  "results_outside_project: true)")  # fmt: skip
        if errors := _in_the_way(cfg):
            print("\n".join(f"error: {e}" for e in errors), file=sys.stderr)
            return 2
        for name in sorted(set(raw.get("profiles") or {}) - {cfg.profile}):
            try:  # a typo in another profile, found before the run that uses it
                config_mod.load(args.params, name)
            except config_mod.ConfigError as e:
                print(f"error: profile {name}: {e}", file=sys.stderr)
                return 2
        print(
            f"{args.params}: ok (profile {cfg.profile}, {len(cfg.objectives)} objectives, "
            f"train seeds {cfg.train_seeds})"
        )
        return 0
    n = cfg.train_for(objective).num_processes if args.stage == "train" else 1
    if n > 1 and not launch.is_launched():
        launch.relaunch(argv, n)
    return run_stage(args.stage, cfg, raw, objective, args.threads, seed, rnd, matched)


def dvc_yaml(check: bool) -> int:
    """``dvc.yaml`` as the DAG table says (:mod:`diffpref.config.dvc`)."""
    from diffpref.config.dvc import dvc_yaml as generate

    want, path = generate(), Path("dvc.yaml")
    if check:
        if path.is_file() and path.read_text() == want:
            print("dvc.yaml: current")
            return 0
        print(
            "error: dvc.yaml differs from the DAG table: run `diffpref dvc-yaml`", file=sys.stderr
        )
        return 1
    path.write_text(want)
    print("dvc.yaml: written")
    return 0


def dvc_params(params: str, profile: str) -> int:
    """The profile on top (:func:`diffpref.config.dvc.with_profile_on_top`), written only when
    the result is valid params."""
    from diffpref.config.dvc import with_profile_on_top
    from diffpref.config.loader import read_text

    path = Path(params)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        config_mod.load(params, profile)  # the file and the profile, checked as a stage would
        tmp.write_text(with_profile_on_top(read_text(path), profile))
        config_mod.load(tmp, None)
        tmp.replace(path)
    except config_mod.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (a full disk) leaves no temp file either
    print(f"{params}: profile {profile}'s values written at the top level (profile: default)")
    return 0


def tracking_init(replay_only: bool = False) -> int:
    """Open the store once, before any job: creates a new one without racing parallel jobs, and
    a store that cannot be used (out-of-date schema, server down) stops the workflow before any
    work rather than leaving each stage's record for later. Then write the records stages
    kept while the store was unreachable (:func:`diffpref.tracking.replay`)."""
    if not env.mlflow_enabled():
        return 0
    from mlflow.exceptions import MlflowException

    from diffpref import tracking

    uri = tracking.tracking_uri()
    try:
        _, exp_id = tracking.open_experiment(uri)
        if not replay_only:
            print(f"MLflow store {uri}: experiment {tracking.EXPERIMENT} (id {exp_id})")
        done = tracking.replay()
    except (MlflowException, OSError) as e:  # OSError: its artifact store (a full disk, say)
        pending = tracking.pending_dir()
        left = len(list(pending.glob("*.json"))) if pending.is_dir() else 0
        kept = f"; {left} records still kept in {pending}" if left else ""
        message = e.message if isinstance(e, MlflowException) else f"{type(e).__name__}: {e}"
        print(f"error: MLflow store {uri}: {message}{kept}", file=sys.stderr)
        return 1
    if done or replay_only:
        names = f": {', '.join(done)}" if done else ""
        print(f"MLflow store {uri}: {len(done)} kept records written{names}")
    return 0


def _in_the_way(cfg: config_mod.Config) -> list[str]:
    """What is in the way of the DAG's outputs (:func:`diffpref.io.check_replaceable`), when
    ``results`` is not the project's ``results/``: there DVC and Snakemake delete their declared
    outputs before a stage runs, and an old unmarked output is theirs to replace."""
    from diffpref.io import OutputInTheWay, check_replaceable

    if Path(cfg.results).resolve() == Path("results").resolve():
        return []
    errors = []
    for folder in dict.fromkeys(dag.written_dirs(cfg)):
        try:
            check_replaceable(folder)
        except OutputInTheWay as e:
            errors.append(str(e))
    return errors


def _job_error(args, cfg: config_mod.Config) -> str:
    """Why a model stage's job is not named right, or ''; ``--job train@dpo-0`` (DVC's stage
    name) sets ``args.objective``, ``args.seed`` and ``args.rnd`` (and ``args.matched``)."""
    if args.stage not in MODEL_STAGES:
        return ""
    if args.job is None:
        round_job = args.stage in ("candidates", "rewards", "labels") and args.rnd > 1
        needed = args.stage in ("train", "evaluate") or round_job
        return "--objective (or --job) is required" if needed and not args.objective else ""
    if args.objective is not None or args.seed is not None or args.rnd != 1:
        return "--job names the objective, the seed and the round: give it alone"
    from diffpref.config.why import parse

    try:
        row, args.objective, args.seed, args.rnd = parse(args.job, cfg)
    except ValueError as e:
        return f"--job: {e}"
    if dag.stage_of(row) != args.stage:
        return f"--job: {args.job!r} is not a {args.stage} job"
    if getattr(args, "matched", False):
        return "--job names the control itself (train_matched@...): leave out --matched"
    args.matched = row.endswith("_matched")
    return ""


def _round_error(
    stage: str, cfg: config_mod.Config, objective: str | None, rnd: int, matched: bool
) -> str:
    """Why this model stage's round is wrong, or '': a later round (and a control) exists for
    the online objectives and rounds only; candidates, rewards and labels take an objective
    only there."""
    if stage not in MODEL_STAGES:
        return ""
    rounds = [r.round for r in cfg.online.rounds]
    if matched and rnd == 1:
        return "--matched needs --round N (the control of round N, N one of online.rounds)"
    if rnd == 1:
        if objective is not None and stage in ("candidates", "rewards", "labels"):
            return f"{stage}: --objective applies to a later online round only (--round N)"
        return ""
    if rnd not in rounds:
        return f"online.rounds: round {rnd} is not one of its rounds {rounds or '(none)'}"
    if objective not in cfg.online.objectives:
        return (
            f"online.objectives: {objective!r} takes no online rounds "
            f"(online objectives: {', '.join(cfg.online.objectives) or 'none'})"
        )
    return ""


def _seed_error(args, cfg: config_mod.Config, objective: str | None, seed: int | None) -> str:
    """Why this command's training seed is wrong, or ''."""
    if objective is not None and objective != "base":
        if seed is None:
            return f"--seed is required with --objective {objective} (one of {cfg.train_seeds})"
        if seed not in cfg.train_seeds:
            return f"seed {seed} is not one of {cfg.train_seeds} (profile {cfg.profile})"
    elif seed is not None:
        return "--seed applies only to trained objectives, not to the base model"
    return ""


def _dvc_matrix_error(params: str, cfg: config_mod.Config) -> str:
    """Under DVC, why the profile changes what DVC's matrices expand, or '': DVC reads the
    objectives, ``train_seeds``, ``online.objectives`` and ``online.rounds`` from the file's top
    level (it cannot see profiles), so the run would train models the report ignores, or miss
    some."""
    if not os.environ.get("DVC_ROOT"):
        return ""
    file = config_mod.read_file(params)
    if isinstance(file.get("objectives"), dict) and set(file["objectives"]) != set(cfg.objectives):
        dropped = ", ".join(sorted(set(file["objectives"]) - set(cfg.objectives)))
        return (
            f"profile {cfg.profile} leaves out objectives {dropped}, but DVC expands every "
            "objective of the file's top-level objectives: (it cannot see profiles, and "
            "`dvc exp run -S` cannot remove an entry): run `diffpref dvc-params "
            f"{cfg.profile}` to write the profile's values there, or run it with Snakemake"
        )
    want = {"train_seeds": cfg.train_seeds, **_online_lists(cfg.online.model_dump())}
    have = {"train_seeds": file.get("train_seeds"), **_online_lists(file.get("online"))}
    if differ := [k for k in want if have[k] is not None and have[k] != want[k]]:
        sets = ", ".join(f"{k} {json.dumps(want[k])}" for k in differ)
        tops = ", ".join(f"{json.dumps(have[k])}" for k in differ)
        flags = " ".join(f"-S '{k}={json.dumps(want[k])}'" for k in differ)
        return (
            f"profile {cfg.profile} sets {sets} but DVC expands the top-level {tops}; run "
            f"`dvc exp run -S profile={cfg.profile} {flags}`, or `diffpref dvc-params "
            f"{cfg.profile}` to write the profile's values at the top level"
        )
    return ""


def _online_lists(online: object) -> dict[str, object]:
    """The lists DVC's matrices expand under ``online:`` (None where not a mapping)."""
    online = online if isinstance(online, dict) else {}
    return {f"online.{k}": online.get(k) for k in ("objectives", "rounds")}


def run_stage(
    stage: str,
    cfg: config_mod.Config,
    raw: dict,
    objective: str | None,
    threads: int | None,
    seed: int | None = None,
    rnd: int = 1,
    matched: bool = False,
) -> int:
    from diffpref.io import check_replaceable

    row = dag.row_of(stage, objective, rnd, matched)
    for folder in dag.output_dirs(row, objective, seed, cfg, rnd):
        check_replaceable(folder)  # a user's folder in the way: said before any work
    import torch

    from diffpref import stages, tracking

    threads = threads or env.threads() or torch.get_num_threads()
    params = dag.params(row, cfg, objective)
    loaded = set(sys.modules)  # what the stage imports beyond: recorded (stages.run)
    module = importlib.import_module(f"diffpref.stages.{stage}")
    data_rnd = 1 if matched else rnd  # a control trains on round 1's data
    inputs = {n: cfg.data_path(n, objective, seed, data_rnd) for n in getattr(module, "INPUTS", ())}
    per_model = objective not in (None, "base")
    variant = dag.variant(row, rnd) if per_model else None
    options = {
        "tracking": cfg.tracking.model_dump(),
        "pipeline_params_hash": dag.file_hash(raw),
    }
    phash = dag.file_hash(params)
    shown = variant if rnd > 1 or matched else None  # round 1 keeps its name: train@dpo/seed0
    with tracking.stage_run(
        stage, objective, params, phash, seed, inputs, options, rnd if per_model else None, shown
    ) as run:
        start = time.perf_counter()
        run.log_metric("start_s", start - _T0)  # imports: what every stage pays before work
        ctx = stages.Ctx(cfg, objective, run, threads, seed, phash, rnd, matched)
        reads, imported = stages.run(stage, ctx, loaded)
        if launch.is_main():  # what the stage read, beside its outputs and in its record
            settings.write_reads(dag.output_dir(row, cfg, objective, seed, rnd), reads)
            run.log_dict({"params": reads, "imports": imported}, settings.READS_FILE)
        work = time.perf_counter() - start
    log.info(
        "%s finished: start %.1f s, work %.1f s, MLflow record %.1f s",
        tracking.run_name(stage, objective, seed, shown),
        start - _T0,
        work,
        time.perf_counter() - start - work,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
