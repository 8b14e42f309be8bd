"""Training: the recipe (setup -> train -> save), checkpoints, schedules, early stopping."""

from tuneforge.train.recipe import TrainResult, evaluate_loss, train

__all__ = ["TrainResult", "evaluate_loss", "train"]
