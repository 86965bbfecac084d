"""Training: settings, optimiser and schedule, checkpoints and the loop."""
from flare.train.config import TrainConfig
from flare.train.trainer import Trainer, resolve_config, train

__all__ = ["TrainConfig", "Trainer", "resolve_config", "train"]
