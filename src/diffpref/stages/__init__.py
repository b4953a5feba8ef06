"""One module per stage: thin glue from validated params to library calls to artifacts."""

STAGES = ["world", "prompts", "candidates", "rewards", "labels", "train", "evaluate", "report"]
