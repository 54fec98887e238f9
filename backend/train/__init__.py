"""Avatar creation: skeleton-guided score distillation into the hybrid Gaussian avatar.

`run_training(config, out_dir, progress_cb, should_cancel, resume)` is the whole job; the CLI
(`python -m backend train`) and the server's `train` job kind (backend/train/job.py) wrap it.
"""

from .checkpoint import CheckpointError
from .config import PRESETS, TrainConfig, parse_duration
from .trainer import PhaseTimer, Trainer, TrainingCancelled, TrainingError, load_run_config, run_training

__all__ = ["CheckpointError", "PRESETS", "TrainConfig", "parse_duration", "PhaseTimer", "Trainer",
           "TrainingCancelled", "TrainingError", "load_run_config", "run_training"]
