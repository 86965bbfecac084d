"""Neural PDE surrogates, all ``x [B, N, c_in] -> [B, N, c_out]``, built by name from a registry."""
from flare.models.flare import FLARE
from flare.models.registry import MODELS, PAPER_DATASET_CHANNELS, build, paper_model, register

register("flare")(FLARE)

__all__ = ["FLARE", "MODELS", "PAPER_DATASET_CHANNELS", "build", "paper_model", "register"]
