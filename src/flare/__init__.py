"""FLARE: Fast Low-rank Attention Routing Engine, and the neural-PDE-surrogate benchmark around it."""
__version__ = "0.1.0"
