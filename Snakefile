# The diffpref DAG for Snakemake: `snakemake --cores all` (or `--config profile=smoke`).
# Wiring only; the rules live in workflow/rules/ and mirror dvc.yaml stage for stage.
# No `configfile:`: workflow/rules/common.smk reads params.yaml with diffpref's own reader.


include: "workflow/rules/common.smk"
include: "workflow/rules/pipeline.smk"


rule all:
    input:
        "results/report",
