"""CPU training of Mask R-CNN R50-FPN: Heron against torchvision, same run, same batches.

Heron trains the zoo config COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml (random
init, 5 classes) on the synthetic shapes dataset (512x512 JPEGs written to a temp dir),
512 px, batch 2, one `SimpleTrainer.run_step()` per iteration inside an `EventStorage`;
its "data_time" (reading and mapping the batch) is part of the step and reported as a
share. torchvision's Mask R-CNN R50-FPN is built as `maskrcnn_resnet50_fpn` builds it for
pretrained weights (`resnet_fpn_backbone` with FrozenBatchNorm2d and trainable_layers=3,
which freezes the stem and res2 like FREEZE_AT=2, then `MaskRCNN`): with weights=None that
builder switches to trainable nn.BatchNorm2d and trains every layer. It has num_classes=6,
min/max size 512 and rpn_post_nms_top_n_train=1000 proposals per image like the Heron
config (torchvision's default is 2000). It gets the very batch Heron just trained on,
converted to its format (float RGB in [0, 1], boxes, labels + 1, polygon masks rasterized
to bitmasks); that conversion is timed on its own and not counted in torchvision's step,
which is forward + backward + SGD step. One difference is left as each library has it:
Heron's poolers use ROIAlignV2 with sampling_ratio 0 (adaptive, Detectron2's default),
torchvision's MultiScaleRoIAlign uses sampling_ratio 2, so Heron's ROI-align backward
does more work on large boxes.

Both models are in train mode with frozen batch norm in the backbone (Heron: RESNETS.NORM
"FrozenBN", the config default; torchvision: FrozenBatchNorm2d, its default for pretrained
backbones). The parameters each optimizer steps are counted and printed. Random weights
with identity frozen statistics make ResNet activations explode, so before timing one
backbone pass sets each frozen norm's statistics to the batch statistics it sees (the same
for both models). Both use SGD with the config's momentum and weight decay at the first
warm-up learning rate, BASE_LR * WARMUP_FACTOR (what the 1x schedule uses at iteration 0),
so random-init training stays finite. Timings alternate between the two models (median of
--runs after --warmup); each --workers value (DATALOADER.NUM_WORKERS) is one such run.

    nice .venv/bin/python benchmarks/bench_train_cpu.py [--runs 10] [--threads 2] [--workers 0 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator

import torch

SIZE = 512
BATCH = 2
NUM_CLASSES = 5


def calibrate_backbone_norms(backbone: torch.nn.Module, images: torch.Tensor) -> None:
    """Set every frozen batch-norm's statistics in `backbone` to the per-channel mean and
    variance of its input in one pass over `images` (B, 3, H, W), already normalized."""
    from torchvision.ops import FrozenBatchNorm2d as TVFrozenBN

    from heron.layers import FrozenBatchNorm2d

    def set_stats(module, inputs):
        x = inputs[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)))

    norms = (FrozenBatchNorm2d, TVFrozenBN)
    hooks = [
        m.register_forward_pre_hook(set_stats) for m in backbone.modules() if isinstance(m, norms)
    ]
    assert hooks, "no frozen batch-norm found to calibrate"
    with torch.no_grad():
        backbone(images)
    for h in hooks:
        h.remove()


def make_cfg(dataset: str, workers: int):
    from heron.config import get_cfg
    from heron.model_zoo import get_config_file

    cfg = get_cfg()
    cfg.merge_from_file(get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = NUM_CLASSES
    cfg.INPUT.MIN_SIZE_TRAIN = (SIZE,)
    cfg.INPUT.MAX_SIZE_TRAIN = SIZE
    cfg.SOLVER.IMS_PER_BATCH = BATCH
    cfg.DATALOADER.NUM_WORKERS = workers
    cfg.DATASETS.TRAIN = (dataset,)
    cfg.freeze()
    return cfg


def first_lr(cfg) -> float:
    """The learning rate of the 1x schedule at iteration 0 (linear warm-up start)."""
    return cfg.SOLVER.BASE_LR * cfg.SOLVER.WARMUP_FACTOR


def count_trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class Recorder:
    """Wrap an iterable and keep the last item it yielded."""

    def __init__(self, iterable) -> None:
        self.iterable = iterable
        self.last = None

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            self.last = item
            yield item


def build_heron(cfg):
    """Return (step, recorder, storage): `step()` runs one training iteration and returns
    (seconds, data_time); `recorder.last` is the batch it read."""
    from heron.data import build_detection_train_loader
    from heron.engine.train_loop import SimpleTrainer
    from heron.modeling import build_model
    from heron.solver import build_optimizer
    from heron.utils.events import EventStorage

    model = build_model(cfg)
    recorder = Recorder(build_detection_train_loader(cfg))
    batch = next(iter(build_detection_train_loader(cfg)))
    calibrate_backbone_norms(model.backbone, model.preprocess_image(batch).tensor)
    optimizer = build_optimizer(cfg, model)
    for group in optimizer.param_groups:
        group["lr"] = first_lr(cfg)
    trainer = SimpleTrainer(model, recorder, optimizer)
    print(f"  heron: {count_trainable(model) / 1e6:.2f} M trainable parameters")
    storage = EventStorage(0)

    def step() -> tuple[float, float]:
        with storage:
            storage.iter = trainer.iter
            start = time.perf_counter()
            trainer.run_step()
            elapsed = time.perf_counter() - start
            data_time = storage.history("data_time").latest()
        trainer.iter += 1
        return elapsed, data_time

    return step, recorder


def to_torchvision(batch: list[dict]) -> tuple[list[torch.Tensor], list[dict]]:
    """Convert Heron's mapped dicts to torchvision's images (float RGB in [0, 1]) and
    targets (boxes (N, 4) XYXY, labels (N,) int64 starting at 1, masks (N, H, W) uint8)."""
    from heron.structures.masks import BitMasks, PolygonMasks

    images, targets = [], []
    for d in batch:
        image = d["image"]  # (3, H, W) uint8 BGR
        images.append(image.flip(0).float() / 255.0)
        inst = d["instances"]
        h, w = image.shape[1:]
        masks = inst.gt_masks
        if isinstance(masks, PolygonMasks):
            masks = BitMasks.from_polygon_masks(masks, h, w)
        targets.append(
            {
                "boxes": inst.gt_boxes.tensor.clone(),
                "labels": inst.gt_classes.long() + 1,
                "masks": masks.tensor.to(torch.uint8),
            }
        )
    return images, targets


def build_torchvision(cfg, recorder: Recorder):
    """Return `step()`, which trains on the batch Heron last read and returns
    (step seconds, conversion seconds)."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops import FrozenBatchNorm2d

    # What maskrcnn_resnet50_fpn builds when given pretrained weights. Without weights it
    # switches to trainable nn.BatchNorm2d and ignores trainable_backbone_layers.
    backbone = resnet_fpn_backbone(
        backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=3
    )
    model = MaskRCNN(
        backbone,
        num_classes=NUM_CLASSES + 1,
        min_size=SIZE,
        max_size=SIZE,
        rpn_post_nms_top_n_train=cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN,
    )
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    print(f"  torchvision: {count_trainable(model) / 1e6:.2f} M trainable parameters")
    optimizer = torch.optim.SGD(
        params,
        lr=first_lr(cfg),
        momentum=cfg.SOLVER.MOMENTUM,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
    )
    calibrated = False

    def step() -> tuple[float, float]:
        nonlocal calibrated
        start = time.perf_counter()
        images, targets = to_torchvision(recorder.last)
        convert = time.perf_counter() - start
        if not calibrated:
            with torch.no_grad():
                normalized = model.transform(images)[0].tensors
            calibrate_backbone_norms(model.backbone.body, normalized)
            calibrated = True
        start = time.perf_counter()
        losses = sum(model(images, targets).values())
        optimizer.zero_grad()
        losses.backward()
        optimizer.step()
        elapsed = time.perf_counter() - start
        if not torch.isfinite(losses):
            raise FloatingPointError(f"torchvision loss became {losses.item()}")
        return elapsed, convert

    return step


def make_dataset(root: str) -> str:
    """Write 40 shapes images under `root`, register them, return the dataset name."""
    from heron.data.datasets import generate_shapes_dataset, register_coco_instances

    info = generate_shapes_dataset(root, num_images=40, image_size=(SIZE, SIZE), split="train")
    name = f"bench_train_shapes_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, info["json_file"], info["image_root"])
    return name


def bench(dataset: str, workers: int, args) -> None:
    cfg = make_cfg(dataset, workers)
    torch.manual_seed(0)
    heron_step, recorder = build_heron(cfg)
    tv_step = build_torchvision(cfg, recorder)
    runs: dict[str, Callable[[], tuple[float, float]]] = {
        "heron": heron_step,
        "torchvision": tv_step,
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    extra: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(args.warmup + args.runs):
        for name, run in runs.items():
            seconds, other = run()
            if i >= args.warmup:
                times[name].append(seconds)
                extra[name].append(other)
    med = {name: statistics.median(t) for name, t in times.items()}
    if args.verbose:
        print({name: [round(x, 3) for x in t] for name, t in times.items()})
        print({name: [round(x, 4) for x in t] for name, t in extra.items()})
    share = statistics.median(d / t for d, t in zip(extra["heron"], times["heron"]))
    convert = statistics.median(extra["torchvision"])
    print(
        f"Mask R-CNN R50-FPN training, CPU, shapes {SIZE}x{SIZE}, batch {BATCH}, "
        f"{args.threads} threads, NUM_WORKERS {workers}, {args.runs} runs"
    )
    print(
        f"  heron        median {med['heron']:6.3f} s/iter  {1 / med['heron']:6.3f} iters/s  "
        f"data_time {statistics.median(extra['heron']) * 1000:6.1f} ms ({share:.1%} of step)"
    )
    print(
        f"  torchvision  median {med['torchvision']:6.3f} s/iter  "
        f"{1 / med['torchvision']:6.3f} iters/s  "
        f"batch conversion {convert * 1000:6.1f} ms (not in step)"
    )
    print(f"  step-time ratio heron / torchvision: {med['heron'] / med['torchvision']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0])
    parser.add_argument("--verbose", action="store_true", help="print every timing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as root:
        dataset = make_dataset(root)
        for workers in args.workers:
            bench(dataset, workers, args)


if __name__ == "__main__":
    main()
