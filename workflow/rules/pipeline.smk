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
        directory("results/adapters/{objective}/seed{seed}/round1"),
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
        "results/adapters/{objective}/seed{seed}/round1",
        "results/eval/base",
    output:
        directory("results/eval/{objective}/seed{seed}/round1"),
    params:
        *params_of("evaluate"),
    threads: res("evaluate").cpus
    resources:
        **res("evaluate").scheduler,
    shell:
        cmd("evaluate")


# online rounds (online.rounds) of the online objectives: round r samples round r-1's policy,
# trains from it with it as the reference; each also gets its compute-matched offline control


rule candidates_round:
    input:
        code_of("candidates_round"),
        "results/world",
        "results/prompts",
        after("candidates_round"),
    output:
        directory("results/online/{objective}/seed{seed}/round{round}/candidates"),
    params:
        *params_of("candidates_round"),
    threads: res("candidates_round").cpus
    resources:
        **res("candidates_round").scheduler,
    shell:
        cmd("candidates_round")


rule rewards_round:
    input:
        code_of("rewards_round"),
        "results/world",
        "results/online/{objective}/seed{seed}/round{round}/candidates",
    output:
        directory("results/online/{objective}/seed{seed}/round{round}/rewards"),
    params:
        *params_of("rewards_round"),
    threads: res("rewards_round").cpus
    resources:
        **res("rewards_round").scheduler,
    shell:
        cmd("rewards_round")


rule labels_round:
    input:
        code_of("labels_round"),
        "results/online/{objective}/seed{seed}/round{round}/rewards",
    output:
        directory("results/online/{objective}/seed{seed}/round{round}/labels"),
    params:
        *params_of("labels_round"),
    threads: res("labels_round").cpus
    resources:
        **res("labels_round").scheduler,
    shell:
        cmd("labels_round")


rule train_round:
    input:
        code_of("train_round"),
        "results/world",
        "results/online/{objective}/seed{seed}/round{round}/candidates",
        "results/online/{objective}/seed{seed}/round{round}/labels",
        after("train_round"),
    output:
        directory("results/adapters/{objective}/seed{seed}/round{round}"),
    params:
        *params_of("train_round"),
    threads: res("train_round").cpus
    resources:
        **res("train_round").scheduler,
    shell:
        cmd("train_round")


rule evaluate_round:
    input:
        code_of("evaluate_round"),
        "results/world",
        "results/prompts",
        "results/adapters/{objective}/seed{seed}/round{round}",
        "results/eval/base",
    output:
        directory("results/eval/{objective}/seed{seed}/round{round}"),
    params:
        *params_of("evaluate_round"),
    threads: res("evaluate_round").cpus
    resources:
        **res("evaluate_round").scheduler,
    shell:
        cmd("evaluate_round")


rule train_matched:
    input:
        code_of("train_matched"),
        "results/world",
        "results/candidates",
        "results/labels",
        "results/adapters/{objective}/seed{seed}/round1",
    output:
        directory("results/adapters/{objective}/seed{seed}/matched{round}"),
    params:
        *params_of("train_matched"),
    threads: res("train_matched").cpus
    resources:
        **res("train_matched").scheduler,
    shell:
        cmd("train_matched")


rule evaluate_matched:
    input:
        code_of("evaluate_matched"),
        "results/world",
        "results/prompts",
        "results/adapters/{objective}/seed{seed}/matched{round}",
        "results/eval/base",
    output:
        directory("results/eval/{objective}/seed{seed}/matched{round}"),
    params:
        *params_of("evaluate_matched"),
    threads: res("evaluate_matched").cpus
    resources:
        **res("evaluate_matched").scheduler,
    shell:
        cmd("evaluate_matched")


def models(kind):
    """Every model folder of ``kind`` the report reads: round 1's, later rounds', controls'."""
    out = expand(f"results/{kind}/{{o}}/seed{{s}}/round1", o=OBJECTIVES, s=SEEDS)
    for v in ("round", "matched"):
        out += expand(f"results/{kind}/{{o}}/seed{{s}}/{v}{{r}}", o=ONLINE, s=SEEDS, r=ROUNDS)
    return out


rule report:
    input:
        code_of("report"),
        "results/world",
        "results/prompts",
        models("adapters"),
        "results/eval/base",
        models("eval"),
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
