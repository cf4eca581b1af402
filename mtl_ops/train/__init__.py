"""Training: the trainer, methods by name, losses and weighting (torchjd aggregators too), optimisers and
learning-rate schedules, checkpoints, paper presets, AdaShare phases, PDF schedule, Medusa's UFL protocol, the demo
and its report."""
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .epoch import NonFiniteLossError
from .loading import build_datasets
from .loop import Trainer
from .methods import (MethodSpec, available_methods, build_model, count_learnable_parameters, get_method,
                      register_method)
from .presets import PRESETS, preset_config
from .resume import RESUME_MAY_CHANGE, resume_config
from .seeding import derive_seed
from .tasks import KNOWN_TASKS, task_channels, task_loss, task_losses
from .weighting import DynamicWeightAverage, FixedWeighting, UncertaintyWeighting, make_weighting

__all__ = ["TrainConfig", "Trainer", "build_datasets", "register_method", "get_method", "available_methods",
           "build_model", "count_learnable_parameters", "MethodSpec", "task_channels", "task_loss",
           "task_losses", "KNOWN_TASKS", "FixedWeighting", "UncertaintyWeighting", "DynamicWeightAverage",
           "make_weighting", "PRESETS", "preset_config",
           "save_checkpoint", "load_checkpoint", "NonFiniteLossError", "derive_seed", "resume_config",
           "RESUME_MAY_CHANGE"]
