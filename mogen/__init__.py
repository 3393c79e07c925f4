"""mogen: align flow-matching text-to-image models with Flow-DPPO against a mixture of rewards."""

from reward_zoo.registry import register

__version__ = "0.1.0.dev0"

# The toy world's verifier is mogen's scorer (reward_zoo never imports mogen). pyproject.toml declares it as a
# `mogen.rewards` entry point; registering it here too makes every mogen path (recipes, probes, `mogen rewards`)
# find it even when the installed metadata predates that entry point (an editable install not reinstalled).
register("toy_verifier", "mogen.toyworld.scorer:ToyVerifier")
