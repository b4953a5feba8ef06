# One rule per stage; inputs are the stage's source files and upstream artifacts (as in dvc.yaml).
# Threads and resources (memory, wall time, GPUs) come from params.yaml `resources:`.
SRC = "src/diffpref"


# small CPU stages run where Snakemake runs, not as cluster jobs (no effect on one machine)
localrules:
    prompts,
    labels,
    report,


rule world:
    input:
        f"{SRC}/stages/world.py",
        py(f"{SRC}/world"),
    output:
        directory("results/world"),
    params:
        p=params_of("world"),
    threads: res("world").cpus
    resources:
        **res("world").scheduler,
    shell:
        cmd("world")


rule prompts:
    input:
        f"{SRC}/stages/prompts.py",
        f"{SRC}/world/prompts.py",
        data_of("prompts"),
    output:
        directory("results/prompts"),
    params:
        p=params_of("prompts"),
    threads: res("prompts").cpus
    resources:
        **res("prompts").scheduler,
    shell:
        cmd("prompts")


rule candidates:
    input:
        f"{SRC}/stages/candidates.py",
        py(f"{SRC}/backbones"),
        "results/world",
        "results/prompts",
        data_of("candidates"),
    output:
        directory("results/candidates"),
    params:
        p=params_of("candidates"),
    threads: res("candidates").cpus
    resources:
        **res("candidates").scheduler,
    shell:
        cmd("candidates")


rule rewards:
    input:
        f"{SRC}/stages/rewards.py",
        py(f"{SRC}/rewards"),
        "results/world",
        "results/candidates",
    output:
        directory("results/rewards"),
    params:
        p=params_of("rewards"),
    threads: res("rewards").cpus
    resources:
        **res("rewards").scheduler,
    shell:
        cmd("rewards")


rule labels:
    input:
        f"{SRC}/stages/labels.py",
        f"{SRC}/labels.py",
        "results/rewards",
    output:
        directory("results/labels"),
    params:
        p=params_of("labels"),
    threads: res("labels").cpus
    resources:
        **res("labels").scheduler,
    shell:
        cmd("labels")


rule train:
    input:
        f"{SRC}/stages/train.py",
        py(f"{SRC}/training"),
        f"{SRC}/distributed.py",
        py(f"{SRC}/objectives"),
        py(f"{SRC}/backbones"),
        "results/world",
        "results/candidates",
        "results/labels",
    output:
        directory("results/adapters/{objective}/seed{seed}"),
    params:
        p=lambda w: params_of("train", w.objective),
    threads: res("train").cpus
    resources:
        **res("train").scheduler,
    shell:
        cmd("train", "{wildcards.objective}", "{wildcards.seed}")


rule evaluate_base:
    input:
        f"{SRC}/stages/evaluate.py",
        f"{SRC}/evaluation.py",
        py(f"{SRC}/backbones"),
        py(f"{SRC}/rewards"),
        "results/world",
        "results/prompts",
    output:
        directory("results/eval/base"),
    params:
        p=params_of("evaluate"),
    threads: res("evaluate").cpus
    resources:
        **res("evaluate").scheduler,
    shell:
        cmd("evaluate", "base")


rule evaluate:
    input:
        f"{SRC}/stages/evaluate.py",
        f"{SRC}/evaluation.py",
        py(f"{SRC}/backbones"),
        py(f"{SRC}/rewards"),
        "results/world",
        "results/prompts",
        "results/adapters/{objective}/seed{seed}",
        "results/eval/base",
    output:
        directory("results/eval/{objective}/seed{seed}"),
    params:
        p=params_of("evaluate"),
    threads: res("evaluate").cpus
    resources:
        **res("evaluate").scheduler,
    shell:
        cmd("evaluate", "{wildcards.objective}", "{wildcards.seed}")


rule report:
    input:
        f"{SRC}/stages/report.py",
        f"{SRC}/report.py",
        f"{SRC}/plots.py",
        f"{SRC}/comparison.py",
        f"{SRC}/statistics.py",
        f"{SRC}/evaluation.py",
        "results/world",
        expand("results/adapters/{objective}/seed{seed}", objective=OBJECTIVES, seed=SEEDS),
        "results/eval/base",
        expand("results/eval/{objective}/seed{seed}", objective=OBJECTIVES, seed=SEEDS),
    output:
        directory("results/report"),
        directory("results/metrics"),
        "results/plots/win_vs_base.png",
        "results/plots/training_loss.png",
    params:
        p=params_of("report"),
    threads: res("report").cpus
    resources:
        **res("report").scheduler,
    shell:
        cmd("report")
