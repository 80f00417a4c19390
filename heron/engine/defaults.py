"""The standard training setup: command-line arguments, logging/seeding setup, writers, and
``DefaultTrainer`` (Detectron2's names and semantics), with Heron's additions wired from the
config: AdamW, gradient accumulation, bf16 AMP, EMA weights, a validation loss, the best
checkpoint, early stopping and training by epochs.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import weakref
from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from heron.checkpoint import DetectionCheckpointer
from heron.config import CfgNode, LazyConfig
from heron.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from heron.data.detection_utils import build_augmentation
from heron.engine import hooks
from heron.engine.ema import EMAHook, ModelEMA
from heron.engine.precise_bn import get_bn_modules
from heron.engine.train_loop import AMPTrainer, SimpleTrainer, TrainerBase
from heron.evaluation import (
    DatasetEvaluator,
    build_evaluator,
    inference_on_dataset,
    print_csv_format,
    verify_results,
)
from heron.modeling import build_model
from heron.solver import build_lr_scheduler, build_optimizer
from heron.utils import comm
from heron.utils.arguments import add_training_arguments
from heron.utils.env import collect_env_info, seed_all_rng
from heron.utils.events import CommonMetricPrinter, EventWriter, JSONWriter
from heron.utils.file_io import PathManager
from heron.utils.logger import setup_logger

__all__ = [
    "DefaultTrainer",
    "add_training_arguments",
    "create_ddp_model",
    "default_argument_parser",
    "default_setup",
    "default_writers",
]

logger = logging.getLogger(__name__)


def create_ddp_model(
    model: nn.Module, *, fp16_compression: bool = False, **kwargs: Any
) -> nn.Module:
    """Wrap ``model`` in DistributedDataParallel when there is more than one process.

    Args:
        fp16_compression: compress gradients to float16 for the all-reduce.
        kwargs: passed to DistributedDataParallel (``device_ids`` defaults to the local
            rank on CUDA).
    """
    if comm.get_world_size() == 1:
        return model
    if "device_ids" not in kwargs and next(model.parameters()).is_cuda:
        kwargs["device_ids"] = [comm.get_local_rank()]
    ddp = DistributedDataParallel(model, **kwargs)
    if fp16_compression:
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        ddp.register_comm_hook(state=None, hook=comm_hooks.fp16_compress_hook)
    return ddp


def default_argument_parser(epilog: str | None = None) -> argparse.ArgumentParser:
    """The arguments of a training script: config file, resume, eval-only, processes, opts."""
    parser = argparse.ArgumentParser(
        epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_training_arguments(parser)
    return parser


def _try_get_key(cfg: Any, *keys: str, default: Any = None) -> Any:
    """The first of ``keys`` (dotted paths) present in ``cfg`` (CfgNode or LazyConfig)."""
    for key in keys:
        node = cfg
        try:
            for part in key.split("."):
                node = node[part]
        except (KeyError, AttributeError, TypeError):
            continue
        return node
    return default


def default_setup(cfg: Any, args: argparse.Namespace | None) -> None:
    """Create the output folder, set up logging, log the environment and config, save the
    config, seed the random generators and set the cuDNN/float32 flags, in every process.

    Works with a CfgNode (OUTPUT_DIR, SEED, CUDNN_BENCHMARK, FLOAT32_PRECISION) and with a
    lazy config (train.output_dir, train.seed, train.cudnn_benchmark).
    """
    output_dir = _try_get_key(cfg, "OUTPUT_DIR", "output_dir", "train.output_dir")
    if comm.is_main_process() and output_dir:
        PathManager.mkdirs(output_dir)
    rank = comm.get_rank()
    setup_logger(output_dir or None, distributed_rank=rank)
    logger.info("Rank of current process: %d. World size: %d", rank, comm.get_world_size())
    logger.info("Environment info:\n%s", collect_env_info())
    if args is not None:
        logger.info("Command line arguments: %s", args)
        config_file = getattr(args, "config_file", "")
        if config_file:
            with PathManager.open(config_file, "r") as f:
                logger.info("Contents of args.config_file=%s:\n%s", config_file, f.read())
    if comm.is_main_process() and output_dir:
        if isinstance(cfg, CfgNode):
            path = os.path.join(output_dir, "config.yaml")
            with PathManager.open(path, "w") as f:
                f.write(cfg.dump())
        else:
            path = os.path.join(output_dir, "config.yaml")
            LazyConfig.save(cfg, path)
        logger.info("Full config saved to %s", path)
    seed = _try_get_key(cfg, "SEED", "train.seed", default=-1)
    seed_all_rng(None if seed is None or seed < 0 else seed + rank)
    if not (args is not None and getattr(args, "eval_only", False)):
        benchmark = _try_get_key(cfg, "CUDNN_BENCHMARK", "train.cudnn_benchmark", default=False)
        torch.backends.cudnn.benchmark = bool(benchmark)
    precision = _try_get_key(cfg, "FLOAT32_PRECISION", "train.float32_precision", default="")
    if precision:
        torch.set_float32_matmul_precision(precision)


def default_writers(output_dir: str, max_iter: int | None = None) -> list[EventWriter]:
    """The console printer, ``metrics.json`` and, when tensorboard is installed, TensorBoard."""
    PathManager.mkdirs(output_dir)
    writers: list[EventWriter] = [
        CommonMetricPrinter(max_iter),
        JSONWriter(os.path.join(output_dir, "metrics.json")),
    ]
    try:
        from heron.utils.events import TensorboardXWriter

        writers.append(TensorboardXWriter(output_dir))
    except ImportError as e:
        logger.info("TensorBoard logging is off: %s", e)
    return writers


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


class DefaultTrainer(TrainerBase):
    """A trainer with Detectron2's standard behaviour, built from a config.

    It builds the model, optimizer, LR scheduler, data loader and checkpointer from ``cfg``,
    and registers the default hooks (see :meth:`build_hooks`). Override the ``build_*``
    methods to change a part. ``resume_or_load`` then ``train`` runs it.
    """

    def __init__(self, cfg: CfgNode) -> None:
        super().__init__()
        if not logging.getLogger("heron").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        cfg = self.apply_epochs(cfg, self.train_dataset_size(cfg) if cfg.SOLVER.MAX_EPOCHS else 0)
        self.cfg = cfg

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        common = {"accumulation_steps": cfg.SOLVER.ACCUMULATION_STEPS}
        if cfg.SOLVER.AMP.ENABLED:
            self._trainer: SimpleTrainer = AMPTrainer(
                model, data_loader, optimizer, precision=cfg.SOLVER.AMP.PRECISION, **common
            )
        else:
            self._trainer = SimpleTrainer(model, data_loader, optimizer, **common)
        # The inner trainer runs the outer hooks' after_backward (Detectron2's does not).
        self._trainer._hooks = self._hooks

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.ema: ModelEMA | None = None
        if cfg.MODEL_EMA.ENABLED:
            self.ema = ModelEMA(
                _unwrap(model), decay=cfg.MODEL_EMA.DECAY, device=cfg.MODEL_EMA.DEVICE or None
            )
        extra = {"ema": self.ema} if self.ema is not None else {}
        self.checkpointer = DetectionCheckpointer(
            model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self), **extra
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.register_hooks(self.build_hooks())

    # ------------------------------------------------------------------ delegation
    @property
    def model(self) -> nn.Module:
        return self._trainer.model

    @property
    def data_loader(self) -> Any:
        return self._trainer.data_loader

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._trainer.optimizer

    def run_step(self) -> None:
        self._trainer.iter = self.iter
        self._trainer.run_step()

    def state_dict(self) -> dict[str, Any]:
        ret = super().state_dict()
        inner = self._trainer.state_dict()
        inner.pop("hooks", None)  # the hooks are shared and saved once, above
        ret["_trainer"] = inner
        return ret

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])

    # ------------------------------------------------------------------ running
    def resume_or_load(self, resume: bool = True) -> None:
        """Resume from OUTPUT_DIR's last checkpoint when ``resume`` and one exists (model,
        optimizer, scheduler, iteration, hooks, EMA); otherwise load MODEL.WEIGHTS only."""
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            # the checkpoint holds the iteration that had finished
            self.start_iter = self.iter + 1

    def train(self) -> dict[str, Any] | None:  # type: ignore[override]
        """Train from ``start_iter`` to MAX_ITER; return the last evaluation's results."""
        super().train(self.start_iter, self.max_iter)
        if len(self.cfg.TEST.EXPECTED_RESULTS) and comm.is_main_process():
            if not hasattr(self, "_last_eval_results"):
                raise RuntimeError("TEST.EXPECTED_RESULTS is set but no evaluation ran")
            verify_results(self.cfg, self._last_eval_results)
        return getattr(self, "_last_eval_results", None)

    def build_hooks(self) -> list[hooks.HookBase | None]:
        """The default hooks, in order: timer, LR scheduler, EMA, PreciseBN, checkpointer,
        validation loss, evaluation, best checkpoint, early stopping, writers."""
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.DATALOADER.NUM_WORKERS = 0  # PreciseBN's loader needs no workers

        ret: list[hooks.HookBase | None] = [
            hooks.IterationTimer(),
            hooks.LRScheduler(),
        ]
        if self.ema is not None:
            ret.append(EMAHook(_unwrap(self.model), self.ema, save_state=False))
        if cfg.TEST.PRECISE_BN.ENABLED and get_bn_modules(self.model):
            ret.append(
                hooks.PreciseBN(
                    cfg.TEST.EVAL_PERIOD,
                    self.model,
                    self.build_train_loader(cfg),
                    cfg.TEST.PRECISE_BN.NUM_ITER,
                )
            )
        if comm.is_main_process():
            max_keep = cfg.SOLVER.CHECKPOINT_MAX_TO_KEEP or None
            ret.append(
                hooks.PeriodicCheckpointer(
                    self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD, max_to_keep=max_keep
                )
            )
        if cfg.TEST.VAL_PERIOD > 0 and len(cfg.DATASETS.VAL):
            ret.append(
                hooks.ValidationLoss(cfg.TEST.VAL_PERIOD, self.model, self.build_val_loader(cfg))
            )

        def test_and_save_results() -> dict[str, Any]:
            if self.ema is not None:
                with self.ema.apply_to(_unwrap(self.model)):
                    self._last_eval_results = self.test(self.cfg, self.model)
            else:
                self._last_eval_results = self.test(self.cfg, self.model)
            return self._last_eval_results

        ret.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, test_and_save_results))
        for key in ("BEST_CHECKPOINT", "EARLY_STOPPING"):
            if cfg.TEST[key].ENABLED and cfg.TEST.EVAL_PERIOD <= 0:
                raise ValueError(
                    f"TEST.{key}.ENABLED needs periodic evaluation: set TEST.EVAL_PERIOD > 0 "
                    f"(it is {cfg.TEST.EVAL_PERIOD})"
                )
        if cfg.TEST.BEST_CHECKPOINT.ENABLED and comm.is_main_process():
            ret.append(
                hooks.BestCheckpointer(
                    cfg.TEST.EVAL_PERIOD,
                    self.checkpointer,
                    cfg.TEST.BEST_CHECKPOINT.METRIC,
                    mode=cfg.TEST.BEST_CHECKPOINT.MODE,
                )
            )
        if cfg.TEST.EARLY_STOPPING.ENABLED:
            ret.append(
                hooks.EarlyStopping(
                    cfg.TEST.EVAL_PERIOD,
                    cfg.TEST.EARLY_STOPPING.METRIC,
                    mode=cfg.TEST.EARLY_STOPPING.MODE,
                    patience=cfg.TEST.EARLY_STOPPING.PATIENCE,
                    min_delta=cfg.TEST.EARLY_STOPPING.MIN_DELTA,
                )
            )
        if comm.is_main_process():
            # after the evaluation so that its metrics are written in the same iteration
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=20))
        return ret

    def build_writers(self) -> list[EventWriter]:
        """The writers of :func:`default_writers` in OUTPUT_DIR."""
        return default_writers(self.cfg.OUTPUT_DIR, self.max_iter)

    # ------------------------------------------------------------------ builders
    @classmethod
    def build_model(cls, cfg: CfgNode) -> nn.Module:
        """``heron.modeling.build_model(cfg)``; override to use another model."""
        model = build_model(cfg)
        logger.info("Model:\n%s", model)
        return model

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
        """``heron.solver.build_optimizer(cfg, model)``."""
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer: torch.optim.Optimizer) -> Any:
        """``heron.solver.build_lr_scheduler(cfg, optimizer)``."""
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode) -> Any:
        """``build_detection_train_loader(cfg)``."""
        return build_detection_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str) -> Any:
        """``build_detection_test_loader(cfg, dataset_name)``."""
        return build_detection_test_loader(cfg, dataset_name)

    @classmethod
    def build_val_loader(cls, cfg: CfgNode) -> Any:
        """One pass over DATASETS.VAL with annotations, at test-time size and without
        random augmentation, for the validation-loss hook."""
        dicts = get_detection_dataset_dicts(cfg.DATASETS.VAL, filter_empty=False)
        mapper = DatasetMapper(cfg, is_train=True, augmentations=build_augmentation(cfg, False))
        batch = max(cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size(), 1)
        return build_detection_test_loader(
            dicts, mapper=mapper, batch_size=batch, num_workers=cfg.DATALOADER.NUM_WORKERS
        )

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str) -> DatasetEvaluator:
        """The evaluator of ``dataset_name`` chosen by its metadata's ``evaluator_type``
        (:func:`heron.evaluation.build_evaluator`; Detectron2's DefaultTrainer leaves this to
        subclasses). Results go under OUTPUT_DIR/inference. A dataset without a known type
        raises NotImplementedError, which :meth:`test` reports and skips."""
        return build_evaluator(cfg, dataset_name, os.path.join(cfg.OUTPUT_DIR, "inference"))

    @classmethod
    def test(
        cls,
        cfg: CfgNode,
        model: nn.Module,
        evaluators: DatasetEvaluator | list[DatasetEvaluator] | None = None,
    ) -> dict[str, Any]:
        """Evaluate ``model`` on every dataset of DATASETS.TEST.

        Returns:
            ``{dataset: results}``, or the one dataset's results when there is one.
        """
        if isinstance(evaluators, DatasetEvaluator):
            evaluators = [evaluators]
        if evaluators is not None and len(cfg.DATASETS.TEST) != len(evaluators):
            raise ValueError(
                f"{len(evaluators)} evaluators given for {len(cfg.DATASETS.TEST)} test "
                f"datasets {list(cfg.DATASETS.TEST)}"
            )
        results: dict[str, Any] = OrderedDict()
        for idx, dataset_name in enumerate(cfg.DATASETS.TEST):
            data_loader = cls.build_test_loader(cfg, dataset_name)
            if evaluators is not None:
                evaluator = evaluators[idx]
            else:
                try:
                    evaluator = cls.build_evaluator(cfg, dataset_name)
                except NotImplementedError:
                    logger.warning(
                        "No evaluator found for %s. Use `DefaultTrainer.test(evaluators=)`, "
                        "or implement its `build_evaluator` method.",
                        dataset_name,
                    )
                    results[dataset_name] = {}
                    continue
            results_i = inference_on_dataset(model, data_loader, evaluator)
            results[dataset_name] = results_i
            if comm.is_main_process():
                if not isinstance(results_i, dict):
                    raise TypeError(
                        f"the evaluator of {dataset_name} must return a dict, got {results_i!r}"
                    )
                logger.info("Evaluation results for %s in csv format:", dataset_name)
                print_csv_format(results_i)
        if len(results) == 1:
            return next(iter(results.values()))
        return results

    # ------------------------------------------------------------------ config rewriting
    @classmethod
    def train_dataset_size(cls, cfg: CfgNode) -> int:
        """Number of training images after the loader's filters (for training by epochs)."""
        dicts = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=(
                cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0
            ),
        )
        return len(dicts)

    @staticmethod
    def apply_epochs(cfg: CfgNode, num_images: int) -> CfgNode:
        """Turn an epoch-based schedule into iterations (Heron extension).

        With SOLVER.MAX_EPOCHS > 0, one epoch is ``ceil(num_images / IMS_PER_BATCH)``
        iterations; MAX_ITER becomes MAX_EPOCHS epochs, and SOLVER.STEPS,
        SOLVER.CHECKPOINT_PERIOD, TEST.EVAL_PERIOD and TEST.VAL_PERIOD are read in epochs
        and converted. WARMUP_ITERS stays in iterations. Returns ``cfg`` unchanged when
        MAX_EPOCHS is 0.
        """
        epochs = cfg.SOLVER.MAX_EPOCHS
        if not epochs:
            return cfg
        if epochs < 0 or num_images <= 0:
            raise ValueError(
                f"SOLVER.MAX_EPOCHS={epochs} needs a positive epoch count and a non-empty "
                f"training set (got {num_images} images)"
            )
        per_epoch = math.ceil(num_images / cfg.SOLVER.IMS_PER_BATCH)
        cfg = cfg.clone()
        frozen = cfg.is_frozen()
        cfg.defrost()
        cfg.SOLVER.MAX_ITER = round(epochs * per_epoch)
        cfg.SOLVER.STEPS = tuple(round(s * per_epoch) for s in cfg.SOLVER.STEPS)
        cfg.SOLVER.CHECKPOINT_PERIOD = max(round(cfg.SOLVER.CHECKPOINT_PERIOD * per_epoch), 1)
        cfg.TEST.EVAL_PERIOD = round(cfg.TEST.EVAL_PERIOD * per_epoch)
        cfg.TEST.VAL_PERIOD = round(cfg.TEST.VAL_PERIOD * per_epoch)
        logger.info(
            "Training by epochs: %d images, %d iterations per epoch, MAX_ITER=%d, STEPS=%s",
            num_images,
            per_epoch,
            cfg.SOLVER.MAX_ITER,
            cfg.SOLVER.STEPS,
        )
        if frozen:
            cfg.freeze()
        return cfg

    @staticmethod
    def auto_scale_workers(cfg: CfgNode, num_workers: int) -> CfgNode:
        """Rescale batch size, LR and schedule from SOLVER.REFERENCE_WORLD_SIZE workers to
        ``num_workers`` (linear scaling rule); unchanged when the reference is 0 or equal.

        Raises:
            ValueError: IMS_PER_BATCH is not divisible by REFERENCE_WORLD_SIZE.
        """
        old_world_size = cfg.SOLVER.REFERENCE_WORLD_SIZE
        if old_world_size == 0 or old_world_size == num_workers:
            return cfg
        cfg = cfg.clone()
        frozen = cfg.is_frozen()
        cfg.defrost()
        if cfg.SOLVER.IMS_PER_BATCH % old_world_size != 0:
            raise ValueError(
                f"Invalid REFERENCE_WORLD_SIZE in config: IMS_PER_BATCH "
                f"{cfg.SOLVER.IMS_PER_BATCH} is not divisible by {old_world_size}"
            )
        scale = num_workers / old_world_size
        bs = cfg.SOLVER.IMS_PER_BATCH = round(cfg.SOLVER.IMS_PER_BATCH * scale)
        lr = cfg.SOLVER.BASE_LR = cfg.SOLVER.BASE_LR * scale
        max_iter = cfg.SOLVER.MAX_ITER = round(cfg.SOLVER.MAX_ITER / scale)
        warmup_iter = cfg.SOLVER.WARMUP_ITERS = round(cfg.SOLVER.WARMUP_ITERS / scale)
        cfg.SOLVER.STEPS = tuple(round(s / scale) for s in cfg.SOLVER.STEPS)
        cfg.TEST.EVAL_PERIOD = round(cfg.TEST.EVAL_PERIOD / scale)
        cfg.SOLVER.CHECKPOINT_PERIOD = round(cfg.SOLVER.CHECKPOINT_PERIOD / scale)
        cfg.SOLVER.REFERENCE_WORLD_SIZE = num_workers
        logger.info(
            "Auto-scaling the config to batch_size=%d, learning_rate=%s, max_iter=%d, warmup=%d.",
            bs,
            lr,
            max_iter,
            warmup_iter,
        )
        if frozen:
            cfg.freeze()
        return cfg
