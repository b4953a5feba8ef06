"""What ``params.yaml`` picks by name: each loss, reward model and backbone kind, and the
module (and class) that implements it.

The packages import their implementations by these names only when asked, so a job's code
dependencies hold the modules its config picks and no alternative
(:func:`diffpref.config.dag.plugins`). Import-free on purpose: the Snakefile reads it on every
parse without loading torch, pandas or diffusers.
"""

LOSSES = ("dpo", "mapo", "smpo", "lair", "kto", "sft", "softrepa", "agsm")  # objectives/<loss>.py

# the embedded world's own reward models (trained by its `world` stage): `judge` shares no
# weights or training items with `fidelity`, for verdicts on models trained on fidelity labels;
# then the real reward models
WORLD_REWARDS = {
    "fidelity": ("diffpref.world.fidelity", "FidelityReward"),
    "quality": ("diffpref.world.quality", "QualityReward"),
    "judge": ("diffpref.world.judge", "JudgeReward"),
}
REWARDS = WORLD_REWARDS | {
    "pickscore": ("diffpref.rewards.pickscore", "PickScore"),
    "clip_score": ("diffpref.rewards.clip_score", "ClipScore"),
    "aesthetic": ("diffpref.rewards.aesthetic", "Aesthetic"),
    "hpsv2": ("diffpref.rewards.hpsv2", "HPSv2"),
    "imagereward": ("diffpref.rewards.imagereward", "ImageReward"),
}

# Where the user's data files go. dvc.yaml cannot depend on a file named in params.yaml, so the
# stages that read one depend on its folder; Snakemake lists the file itself.
DATA_DIRS = {"prompts": "data/prompts", "candidates": "data/preferences"}

HUMAN = "human"  # labels.reward naming imported human preferences (candidates.source: pickapic)

BACKBONES = {  # backbone.kind
    "embedded": ("diffpref.backbones.embedded", "EmbeddedBackbone"),
    "sd15": ("diffpref.backbones.sd", "SD15Backbone"),
    "sdxl": ("diffpref.backbones.sd", "SDXLBackbone"),
}


def loss_module(loss: str) -> str:
    """The module of the registered loss ``loss``; ``KeyError`` naming the known ones."""
    if loss not in LOSSES:
        raise KeyError(f"unknown loss {loss!r}; known losses: {', '.join(sorted(LOSSES))}")
    return f"diffpref.objectives.{loss}"
