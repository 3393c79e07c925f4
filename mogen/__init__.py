"""mogen: align flow-matching text-to-image models with Flow-DPPO against a mixture of rewards."""

__version__ = "0.1.0.dev0"
