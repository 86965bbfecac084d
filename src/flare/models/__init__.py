"""Neural PDE surrogates, all ``x [B, N, c_in] -> [B, N, c_out]``, built by name from a registry."""
from flare.models.flare import FLARE
from flare.models.gnot import GNOT
from flare.models.lno import LNO
from flare.models.mesh_gnn import MeshGNN
from flare.models.perceiver import PerceiverIO
from flare.models.registry import MODELS, PAPER_DATASET_CHANNELS, build, paper_model, register
from flare.models.transformer import Transformer
from flare.models.transolver import Transolver, TransolverConv

register("flare")(FLARE)
register("transformer")(Transformer)
register("perceiver")(PerceiverIO)
register("gnot")(GNOT)
register("lno")(LNO)
register("transolver")(Transolver)
register("transolver_conv")(TransolverConv)
register("mesh_gnn")(MeshGNN)

__all__ = [
    "FLARE", "GNOT", "LNO", "MeshGNN", "PerceiverIO", "Transformer", "Transolver", "TransolverConv",
    "MODELS", "PAPER_DATASET_CHANNELS", "build", "paper_model", "register",
]
