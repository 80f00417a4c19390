"""heron.engine: training loops, hooks, the default trainer and the multi-process launcher
(Detectron2's ``detectron2.engine``)."""

from heron.engine import hooks
from heron.engine.defaults import (
    DefaultTrainer,
    create_ddp_model,
    default_argument_parser,
    default_setup,
    default_writers,
)
from heron.engine.ema import EMAHook, ModelEMA
from heron.engine.hooks import (
    BestCheckpointer,
    CallbackHook,
    EarlyStopping,
    EvalHook,
    IterationTimer,
    LRScheduler,
    PeriodicCheckpointer,
    PeriodicWriter,
    PreciseBN,
    TorchMemoryStats,
    TorchProfiler,
    ValidationLoss,
)
from heron.engine.launch import launch
from heron.engine.predictor import BatchPredictor, DefaultPredictor
from heron.engine.train_loop import AMPTrainer, HookBase, SimpleTrainer, TrainerBase

__all__ = [
    "AMPTrainer",
    "BatchPredictor",
    "BestCheckpointer",
    "CallbackHook",
    "DefaultPredictor",
    "DefaultTrainer",
    "EMAHook",
    "EarlyStopping",
    "EvalHook",
    "HookBase",
    "IterationTimer",
    "LRScheduler",
    "ModelEMA",
    "PeriodicCheckpointer",
    "PeriodicWriter",
    "PreciseBN",
    "SimpleTrainer",
    "TorchMemoryStats",
    "TorchProfiler",
    "TrainerBase",
    "ValidationLoss",
    "create_ddp_model",
    "default_argument_parser",
    "default_setup",
    "default_writers",
    "hooks",
    "launch",
]
