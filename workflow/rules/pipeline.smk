# One rule per stage: inputs are the job's code (computed), the user's data and the upstream
# artifacts (as in dvc.yaml, which is generated from the same table: `diffpref dvc-yaml`).
# Threads and resources (memory, wall time, GPUs) come from params.yaml `resources:`.


# small CPU stages run where Snakemake runs, not as cluster jobs (no effect on one machine)
localrules:
    prompts,
    labels,
    report,


rule world:
    input:
        code_of("world"),
    output:
        directory("results/world"),
    params:
        *params_of("world"),
    threads: res("world").cpus
    resources:
        **res("world").scheduler,
    shell:
        cmd("world")


rule prompts:
    input:
        code_of("prompts"),
        data_of("prompts"),
    output:
        directory("results/prompts"),
    params:
        *params_of("prompts"),
    threads: res("prompts").cpus
    resources:
        **res("prompts").scheduler,
    shell:
        cmd("prompts")


rule candidates:
    input:
        code_of("candidates"),
        "results/world",
        "results/prompts",
        data_of("candidates"),
    output:
        directory("results/candidates"),
    params:
        *params_of("candidates"),
    threads: res("candidates").cpus
    resources:
        **res("candidates").scheduler,
    shell:
        cmd("candidates")


rule rewards:
    input:
        code_of("rewards"),
        "results/world",
        "results/candidates",
    output:
        directory("results/rewards"),
    params:
        *params_of("rewards"),
    threads: res("rewards").cpus
    resources:
        **res("rewards").scheduler,
    shell:
        cmd("rewards")


rule labels:
    input:
        code_of("labels"),
        "results/rewards",
    output:
        directory("results/labels"),
    params:
        *params_of("labels"),
    threads: res("labels").cpus
    resources:
        **res("labels").scheduler,
    shell:
        cmd("labels")


rule train:
    input:
        code_of("train"),
        "results/world",
        "results/candidates",
        "results/labels",
    output:
        directory("results/adapters/{objective}/seed{seed}"),
    params:
        *params_of("train"),
    threads: res("train").cpus
    resources:
        **res("train").scheduler,
    shell:
        cmd("train")


rule evaluate_base:
    input:
        code_of("evaluate_base"),
        "results/world",
        "results/prompts",
    output:
        directory("results/eval/base"),
    params:
        *params_of("evaluate_base"),
    threads: res("evaluate_base").cpus
    resources:
        **res("evaluate_base").scheduler,
    shell:
        cmd("evaluate_base")


rule evaluate:
    input:
        code_of("evaluate"),
        "results/world",
        "results/prompts",
        "results/adapters/{objective}/seed{seed}",
        "results/eval/base",
    output:
        directory("results/eval/{objective}/seed{seed}"),
    params:
        *params_of("evaluate"),
    threads: res("evaluate").cpus
    resources:
        **res("evaluate").scheduler,
    shell:
        cmd("evaluate")


rule report:
    input:
        code_of("report"),
        "results/world",
        "results/prompts",
        expand("results/adapters/{objective}/seed{seed}", objective=OBJECTIVES, seed=SEEDS),
        "results/eval/base",
        expand("results/eval/{objective}/seed{seed}", objective=OBJECTIVES, seed=SEEDS),
    output:
        directory("results/report"),
        directory("results/metrics"),
        "results/plots/win_vs_base.png",
        "results/plots/training_loss.png",
    params:
        *params_of("report"),
    threads: res("report").cpus
    resources:
        **res("report").scheduler,
    shell:
        cmd("report")
