"""heron.engine: training loops, hooks and the default trainer (Detectron2's ``detectron2.engine``)."""

from heron.engine.train_loop import AMPTrainer, HookBase, SimpleTrainer, TrainerBase

__all__ = ["AMPTrainer", "HookBase", "SimpleTrainer", "TrainerBase"]
