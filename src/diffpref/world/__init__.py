"""The embedded world: a miniature GenEval-style text-to-image world on Fashion-MNIST."""

from diffpref.world.base import WorldBase
from diffpref.world.build import (
    PACKAGED_DIR,
    build_world,
    evaluate_world,
    install_packaged_world,
    load_rewards,
)
from diffpref.world.captions import parse_prompt
from diffpref.world.prompts import generate_prompts
from diffpref.world.sampling import make_sampler, sample
from diffpref.world.settings import WorldParams
from diffpref.world.spec import CATEGORIES, Spec
from diffpref.world.text import MiniLMEncoder

__all__ = [
    "CATEGORIES",
    "PACKAGED_DIR",
    "MiniLMEncoder",
    "Spec",
    "WorldBase",
    "WorldParams",
    "build_world",
    "evaluate_world",
    "generate_prompts",
    "install_packaged_world",
    "load_rewards",
    "make_sampler",
    "parse_prompt",
    "sample",
]
