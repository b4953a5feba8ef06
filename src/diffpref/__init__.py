"""diffpref: a reproducible benchmark workflow for preference alignment of text-to-image
diffusion models (prompts -> candidates -> rewards -> labels -> train -> evaluate -> report)."""

__version__ = "0.1.0"
