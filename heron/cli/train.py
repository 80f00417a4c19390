"""`heron train` (YAML/CfgNode configs, Detectron2's tools/train_net.py) and `heron
train-lazy` (Python lazy configs, Detectron2's tools/lazyconfig_train_net.py).

Both take Detectron2's arguments: --config-file, --resume, --eval-only, --num-gpus,
--num-machines, --machine-rank, --dist-url and trailing config overrides.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

__all__ = ["add_train_parsers", "do_test_lazy", "do_train_lazy", "train_lazy_main", "train_main"]

logger = logging.getLogger("heron.cli.train")


# ---------------------------------------------------------------------- CfgNode configs


def setup(args: argparse.Namespace) -> Any:
    """The frozen config from --config-file and the overrides, after ``default_setup``."""
    from heron.config import get_cfg
    from heron.engine.defaults import default_setup

    cfg = get_cfg()
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts or [])
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def train_main(args: argparse.Namespace) -> dict[str, Any] | None:
    """Train (or with --eval-only, evaluate) the model of a YAML config in this process."""
    from heron.checkpoint import DetectionCheckpointer
    from heron.engine.defaults import DefaultTrainer
    from heron.evaluation import verify_results
    from heron.utils import comm

    cfg = setup(args)
    if args.eval_only:
        model = DefaultTrainer.build_model(cfg)
        leftover = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        if cfg.MODEL_EMA.ENABLED and "ema" in leftover:
            logger.info("Evaluating with the checkpoint's EMA weights")
            model.load_state_dict(leftover["ema"])
        results = DefaultTrainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


# ---------------------------------------------------------------------- lazy configs


def do_test_lazy(cfg: Any, model: Any) -> dict[str, Any]:
    """Evaluate ``model`` with ``cfg.dataloader.test`` and ``cfg.dataloader.evaluator``."""
    from heron.config import instantiate
    from heron.evaluation import inference_on_dataset, print_csv_format

    if "evaluator" not in cfg.dataloader:
        logger.warning("The config has no dataloader.evaluator: nothing to evaluate")
        return {}
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    print_csv_format(results)
    return results


def do_train_lazy(args: argparse.Namespace, cfg: Any) -> None:
    """Train with a lazy config's ``model``, ``optimizer``, ``dataloader.train``,
    ``lr_multiplier`` and ``train`` sections (Detectron2's keys)."""
    from heron.checkpoint import DetectionCheckpointer
    from heron.config import instantiate
    from heron.engine import hooks
    from heron.engine.defaults import create_ddp_model, default_writers
    from heron.engine.train_loop import AMPTrainer, SimpleTrainer
    from heron.utils import comm

    train = cfg.train
    model = instantiate(cfg.model)
    logger.info("Model:\n%s", model)
    model.to(train.get("device", "cpu"))
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    data_loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model(model, **train.get("ddp", {}))
    amp = train.get("amp", {})
    trainer = (AMPTrainer if amp.get("enabled", False) else SimpleTrainer)(
        model, data_loader, optimizer
    )
    checkpointer = DetectionCheckpointer(model, train.output_dir, trainer=trainer)
    checkpoint_args = dict(train.get("checkpointer", {"period": 5000}))
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **checkpoint_args)
            if comm.is_main_process()
            else None,
            hooks.EvalHook(train.get("eval_period", 0), lambda: do_test_lazy(cfg, model)),
            hooks.PeriodicWriter(
                default_writers(train.output_dir, train.max_iter),
                period=train.get("log_period", 20),
            )
            if comm.is_main_process()
            else None,
        ]
    )
    checkpointer.resume_or_load(train.get("init_checkpoint", ""), resume=args.resume)
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, train.max_iter)


def train_lazy_main(args: argparse.Namespace) -> dict[str, Any] | None:
    """Train (or evaluate) the model of a lazy config in this process."""
    from heron.checkpoint import DetectionCheckpointer
    from heron.config import LazyConfig, instantiate
    from heron.engine.defaults import create_ddp_model, default_setup

    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts or [])
    default_setup(cfg, args)
    if args.eval_only:
        model = instantiate(cfg.model)
        model.to(cfg.train.get("device", "cpu"))
        model = create_ddp_model(model)
        DetectionCheckpointer(model).load(cfg.train.get("init_checkpoint", ""))
        return do_test_lazy(cfg, model)
    do_train_lazy(args, cfg)
    return None


# ---------------------------------------------------------------------- the verbs


def _launch(main_func: Any, args: argparse.Namespace) -> int:
    from heron.engine.launch import launch

    if not args.config_file:
        raise SystemExit("heron: --config-file is required")
    launch(
        main_func,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    return _launch(train_main, args)


def _cmd_train_lazy(args: argparse.Namespace) -> int:
    return _launch(train_lazy_main, args)


def add_train_parsers(verbs: Any) -> None:
    """Register the `train` and `train-lazy` sub-commands on ``verbs``."""
    from heron.utils.arguments import add_training_arguments

    train = verbs.add_parser(
        "train",
        help="train or evaluate a model from a YAML config (Detectron2's train_net.py)",
        description="Train a model from a Detectron2-style YAML config, or evaluate it with "
        "--eval-only. Overrides go at the end as KEY VALUE pairs, e.g. SOLVER.BASE_LR 0.01. "
        "Output (checkpoints, metrics.json, TensorBoard events) goes to OUTPUT_DIR.",
    )
    add_training_arguments(train)
    train.set_defaults(handler=_cmd_train)
    lazy = verbs.add_parser(
        "train-lazy",
        help="train or evaluate a model from a Python lazy config",
        description="Train a model from a Python (lazy) config with model, optimizer, "
        "dataloader, lr_multiplier and train sections, or evaluate it with --eval-only. "
        "Overrides go at the end as key=value, e.g. train.max_iter=100.",
    )
    add_training_arguments(lazy, lazy=True)
    lazy.set_defaults(handler=_cmd_train_lazy)
