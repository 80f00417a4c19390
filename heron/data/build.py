"""Dataset dicts from registered names, and the train/test data loaders built on them.

A train loader yields lists of mapped dicts (one list per batch, per rank) forever; a test
loader yields each item of a dataset exactly once over all ranks.
"""

from __future__ import annotations

import itertools
import logging
import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.utils.data as torchdata
from tabulate import tabulate

from heron.config.config import CfgNode, configurable
from heron.data.catalog import DatasetCatalog, MetadataCatalog
from heron.data.common import (
    AspectRatioGroupedDataset,
    DatasetFromList,
    MapDataset,
    ToIterableDataset,
)
from heron.data.dataset_mapper import DatasetMapper
from heron.data.detection_utils import check_metadata_consistency
from heron.data.samplers import (
    InferenceSampler,
    RandomSubsetTrainingSampler,
    RepeatFactorTrainingSampler,
    TrainingSampler,
)
from heron.structures.boxes import BoxMode
from heron.utils.comm import get_world_size
from heron.utils.env import seed_all_rng
from heron.utils.safe_pickle import load_pickle

__all__ = [
    "build_batch_data_loader",
    "build_detection_test_loader",
    "build_detection_train_loader",
    "filter_images_with_few_keypoints",
    "filter_images_with_only_crowd_annotations",
    "get_detection_dataset_dicts",
    "load_proposals_into_dataset",
    "print_instances_class_histogram",
    "trivial_batch_collator",
    "worker_init_reset_seed",
]

logger = logging.getLogger(__name__)


def filter_images_with_only_crowd_annotations(dataset_dicts: list[dict]) -> list[dict]:
    """Drop images with no non-crowd annotation (they give no training signal); logs the
    number removed."""
    kept = [d for d in dataset_dicts if any(a.get("iscrowd", 0) == 0 for a in d["annotations"])]
    logger.info(
        "Removed %d images with no usable annotations. %d images left.",
        len(dataset_dicts) - len(kept),
        len(kept),
    )
    return kept


def filter_images_with_few_keypoints(
    dataset_dicts: list[dict], min_keypoints_per_image: int
) -> list[dict]:
    """Drop images with fewer than this many visible keypoints; logs the number removed."""

    def visible(d: dict) -> int:
        return sum(
            int((np.asarray(a["keypoints"][2::3]) > 0).sum())
            for a in d["annotations"]
            if "keypoints" in a
        )

    kept = [d for d in dataset_dicts if visible(d) >= min_keypoints_per_image]
    logger.info(
        "Removed %d images with fewer than %d keypoints.",
        len(dataset_dicts) - len(kept),
        min_keypoints_per_image,
    )
    return kept


def print_instances_class_histogram(dataset_dicts: list[dict], class_names: Sequence[str]) -> None:
    """Log a table of instance counts per class (crowd annotations excluded)."""
    num_classes = len(class_names)
    counts = np.zeros(num_classes, dtype=np.int64)
    for d in dataset_dicts:
        classes = [a["category_id"] for a in d["annotations"] if not a.get("iscrowd", 0)]
        if classes:
            if min(classes) < 0 or max(classes) >= num_classes:
                raise ValueError(
                    f"category ids {sorted(set(classes))} of {d.get('file_name')} are outside "
                    f"[0, {num_classes}) (thing_classes has {num_classes} names)"
                )
            counts += np.bincount(classes, minlength=num_classes)
    rows = [(name[:20], int(n)) for name, n in zip(class_names, counts)]
    columns = min(6, len(rows) * 2) // 2 or 1
    flat = list(itertools.chain(*rows))
    flat += [None] * (-len(flat) % (2 * columns))
    table = tabulate(
        [flat[i : i + 2 * columns] for i in range(0, len(flat), 2 * columns)]
        + [["total", int(counts.sum())] + [None] * (2 * columns - 2)],
        headers=["category", "#instances"] * columns,
        tablefmt="pipe",
        numalign="left",
        stralign="center",
    )
    logger.info("Distribution of instances among all %d categories:\n%s", num_classes, table)


def get_detection_dataset_dicts(
    names: str | Sequence[str],
    filter_empty: bool = True,
    min_keypoints: int = 0,
    proposal_files: Sequence[str] | None = None,
    check_consistency: bool = True,
) -> list[dict] | torchdata.Dataset:
    """Concatenate the dataset dicts of registered datasets, with Detectron2's filters.

    Args:
        names: registered dataset name(s).
        filter_empty: drop images without non-crowd annotations.
        min_keypoints: drop images with fewer visible keypoints.
        proposal_files: precomputed proposal files, one per dataset; see
            :func:`load_proposals_into_dataset`.
        check_consistency: require equal thing_classes and log a class histogram.
    """
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ValueError("get_detection_dataset_dicts needs at least one dataset name")
    if proposal_files and len(proposal_files) != len(names):
        raise ValueError(
            f"{len(proposal_files)} proposal files given for {len(names)} datasets "
            f"{list(names)}; give one per dataset"
        )
    per_dataset = [DatasetCatalog.get(name) for name in names]
    if isinstance(per_dataset[0], torchdata.Dataset):
        if len(per_dataset) > 1:
            return torchdata.ConcatDataset(per_dataset)
        return per_dataset[0]
    for name, dicts in zip(names, per_dataset):
        if not len(dicts):
            raise ValueError(f"Dataset '{name}' is empty!")
    if proposal_files:
        per_dataset = [
            load_proposals_into_dataset(dicts, f) for dicts, f in zip(per_dataset, proposal_files)
        ]
    dataset_dicts = list(itertools.chain.from_iterable(per_dataset))
    has_instances = "annotations" in dataset_dicts[0]
    if filter_empty and has_instances:
        dataset_dicts = filter_images_with_only_crowd_annotations(dataset_dicts)
    if min_keypoints > 0 and has_instances:
        dataset_dicts = filter_images_with_few_keypoints(dataset_dicts, min_keypoints)
    if check_consistency and has_instances:
        class_names = MetadataCatalog.get(names[0]).get("thing_classes", None)
        if class_names is not None:
            check_metadata_consistency("thing_classes", list(names))
            print_instances_class_histogram(dataset_dicts, class_names)
    if not dataset_dicts:
        raise ValueError(f"No valid data found in {','.join(names)}.")
    return dataset_dicts


def load_proposals_into_dataset(dataset_dicts: list[dict], proposal_file: str) -> list[dict]:
    """Attach precomputed proposals to each record, matched by ``image_id``.

    The file is a pickle (read with Heron's restricted unpickler) of a dict with "ids" (or
    the legacy "indexes"), "boxes" (per image an (N, 4) array), "objectness_logits" (per
    image (N,)) and optionally "bbox_mode" (default XYXY_ABS). Each record gains
    "proposal_boxes", "proposal_objectness_logits" (sorted by decreasing logit) and
    "proposal_bbox_mode", which the mapper turns into a "proposals" Instances.

    Raises:
        ValueError: the file lacks a key, or an image's boxes and logits disagree in length.
        KeyError: a record's image_id has no proposals in the file.
    """
    logger.info("Loading proposals from: %s", proposal_file)
    proposals = load_pickle(proposal_file)
    if not isinstance(proposals, dict):
        raise ValueError(
            f"proposal file {proposal_file}: expected a dict, got {type(proposals).__name__}"
        )
    proposals = dict(proposals)
    if "indexes" in proposals and "ids" not in proposals:
        proposals["ids"] = proposals.pop("indexes")
    missing = [k for k in ("ids", "boxes", "objectness_logits") if k not in proposals]
    if missing:
        raise ValueError(
            f"proposal file {proposal_file}: missing keys {missing}; it has {sorted(proposals)}"
        )
    wanted = {str(record["image_id"]) for record in dataset_dicts}
    id_to_index = {str(i): n for n, i in enumerate(proposals["ids"]) if str(i) in wanted}
    bbox_mode = BoxMode(proposals.get("bbox_mode", BoxMode.XYXY_ABS))
    for record in dataset_dicts:
        image_id = str(record["image_id"])
        if image_id not in id_to_index:
            raise KeyError(
                f"proposal file {proposal_file} has no proposals for image_id {image_id}"
            )
        n = id_to_index[image_id]
        boxes = np.asarray(proposals["boxes"][n], dtype=np.float32).reshape(-1, 4)
        logits = np.asarray(proposals["objectness_logits"][n], dtype=np.float32).reshape(-1)
        if len(boxes) != len(logits):
            raise ValueError(
                f"proposal file {proposal_file}, image_id {image_id}: {len(boxes)} boxes but "
                f"{len(logits)} objectness logits"
            )
        order = np.argsort(-logits, kind="stable")
        record["proposal_boxes"] = boxes[order]
        record["proposal_objectness_logits"] = logits[order]
        record["proposal_bbox_mode"] = bbox_mode
    return dataset_dicts


def trivial_batch_collator(batch: list[Any]) -> list[Any]:
    """Keep a batch as a list (models take list[dict])."""
    return batch


def worker_init_reset_seed(worker_id: int) -> None:
    """Give every data-loader worker its own seed for python, numpy and torch."""
    initial_seed = torch.initial_seed() % 2**31
    seed_all_rng(initial_seed + worker_id)


def build_batch_data_loader(
    dataset: torchdata.Dataset,
    sampler: torchdata.Sampler | None,
    total_batch_size: int,
    *,
    aspect_ratio_grouping: bool = False,
    num_workers: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    drop_last: bool = True,
    seed: int | None = None,
) -> torchdata.DataLoader | torchdata.IterableDataset:
    """Batches of ``total_batch_size // world_size`` items for this rank.

    With aspect_ratio_grouping, a batch holds only landscape or only portrait images
    (Detectron2's grouping, which saves padding).
    """
    world_size = get_world_size()
    if total_batch_size <= 0 or total_batch_size % world_size != 0:
        raise ValueError(
            f"Total batch size ({total_batch_size}) must be divisible by the number of "
            f"processes ({world_size})"
        )
    batch_size = total_batch_size // world_size
    if isinstance(dataset, torchdata.IterableDataset):
        if sampler is not None:
            raise ValueError("an iterable dataset takes no sampler")
    else:
        dataset = ToIterableDataset(dataset, sampler, shard_chunk_size=batch_size)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    if aspect_ratio_grouping:
        loader = torchdata.DataLoader(
            dataset,
            num_workers=num_workers,
            collate_fn=operator.itemgetter(0),  # unbatched: one dict per step
            worker_init_fn=worker_init_reset_seed,
            generator=generator,
        )
        grouped = AspectRatioGroupedDataset(loader, batch_size)
        return grouped if collate_fn is None else MapDataset(grouped, collate_fn)
    return torchdata.DataLoader(
        dataset,
        batch_size=batch_size,
        drop_last=drop_last,
        num_workers=num_workers,
        collate_fn=trivial_batch_collator if collate_fn is None else collate_fn,
        worker_init_fn=worker_init_reset_seed,
        generator=generator,
    )


def _mapped_dataset_and_sampler(
    dataset: list[dict] | torchdata.Dataset,
    mapper: Callable | None,
    sampler: torchdata.Sampler | None,
    default_sampler: Callable[[int], torchdata.Sampler],
) -> tuple[torchdata.Dataset, torchdata.Sampler | None]:
    """Wrap a list in DatasetFromList, apply the mapper, and pick the sampler (none for an
    iterable dataset, ``default_sampler(len)`` when not given)."""
    if isinstance(dataset, list):
        dataset = DatasetFromList(dataset, copy=False)
    if mapper is not None:
        dataset = MapDataset(dataset, mapper)
    if isinstance(dataset, torchdata.IterableDataset):
        if sampler is not None:
            raise ValueError("an iterable dataset takes no sampler")
    elif sampler is None:
        sampler = default_sampler(len(dataset))
    return dataset, sampler


def _train_sampler_from_config(cfg: CfgNode, dataset: list[dict]) -> torchdata.Sampler:
    name = cfg.DATALOADER.SAMPLER_TRAIN
    logger.info("Using training sampler %s", name)
    if name == "TrainingSampler":
        return TrainingSampler(len(dataset))
    if name == "RepeatFactorTrainingSampler":
        factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
            dataset, cfg.DATALOADER.REPEAT_THRESHOLD, sqrt=cfg.DATALOADER.REPEAT_SQRT
        )
        return RepeatFactorTrainingSampler(factors)
    if name == "RandomSubsetTrainingSampler":
        ratio = cfg.DATALOADER.get("RANDOM_SUBSET_RATIO")
        if ratio is None:
            raise KeyError(
                "DATALOADER.SAMPLER_TRAIN=RandomSubsetTrainingSampler needs "
                "DATALOADER.RANDOM_SUBSET_RATIO in the config"
            )
        return RandomSubsetTrainingSampler(len(dataset), ratio)
    raise ValueError(
        f"Unknown DATALOADER.SAMPLER_TRAIN {name!r}; known: TrainingSampler, "
        "RepeatFactorTrainingSampler, RandomSubsetTrainingSampler"
    )


def _train_loader_from_config(
    cfg: CfgNode, mapper: Callable | None = None, *, dataset: Any = None, sampler: Any = None
) -> dict[str, Any]:
    if dataset is None:
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=(
                cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0
            ),
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
    if mapper is None:
        mapper = DatasetMapper(cfg, True)
    if sampler is None:
        sampler = _train_sampler_from_config(cfg, dataset)
    return {
        "dataset": dataset,
        "sampler": sampler,
        "mapper": mapper,
        "total_batch_size": cfg.SOLVER.IMS_PER_BATCH,
        "aspect_ratio_grouping": cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        "num_workers": cfg.DATALOADER.NUM_WORKERS,
    }


@configurable(from_config=_train_loader_from_config)
def build_detection_train_loader(
    dataset: list[dict] | torchdata.Dataset,
    *,
    mapper: Callable | None,
    sampler: torchdata.Sampler | None = None,
    total_batch_size: int,
    aspect_ratio_grouping: bool = True,
    num_workers: int = 0,
    collate_fn: Callable | None = None,
    **kwargs: Any,
) -> Any:
    """An infinite loader of training batches (lists of mapped dicts) for this rank.

    Args:
        dataset: dataset dicts or a torch dataset.
        mapper: maps a dataset dict to the model's input dict (e.g. `DatasetMapper`);
            returning None skips the item.
        sampler: index sampler (default: `TrainingSampler`); none for iterable datasets.
        total_batch_size: batch size over all ranks.
        aspect_ratio_grouping: batch landscape and portrait images separately.
        num_workers: data-loading worker processes.
        collate_fn: batch collation (default: keep the list).
    """
    dataset, sampler = _mapped_dataset_and_sampler(dataset, mapper, sampler, TrainingSampler)
    return build_batch_data_loader(
        dataset,
        sampler,
        total_batch_size,
        aspect_ratio_grouping=aspect_ratio_grouping,
        num_workers=num_workers,
        collate_fn=collate_fn,
        **kwargs,
    )


def _test_loader_from_config(
    cfg: CfgNode, dataset_name: str | Sequence[str], mapper: Callable | None = None
) -> dict[str, Any]:
    names = [dataset_name] if isinstance(dataset_name, str) else list(dataset_name)
    dataset = get_detection_dataset_dicts(
        names,
        filter_empty=False,
        proposal_files=(
            [cfg.DATASETS.PROPOSAL_FILES_TEST[list(cfg.DATASETS.TEST).index(n)] for n in names]
            if cfg.MODEL.LOAD_PROPOSALS
            else None
        ),
    )
    return {
        "dataset": dataset,
        "mapper": DatasetMapper(cfg, False) if mapper is None else mapper,
        "num_workers": cfg.DATALOADER.NUM_WORKERS,
        "sampler": None
        if isinstance(dataset, torchdata.IterableDataset)
        else InferenceSampler(len(dataset)),
    }


@configurable(from_config=_test_loader_from_config)
def build_detection_test_loader(
    dataset: list[dict] | torchdata.Dataset,
    *,
    mapper: Callable | None,
    sampler: torchdata.Sampler | None = None,
    batch_size: int = 1,
    num_workers: int = 0,
    collate_fn: Callable | None = None,
) -> torchdata.DataLoader:
    """A loader that yields every item once over all ranks (an `InferenceSampler` shard
    per rank), in batches of ``batch_size`` lists."""
    dataset, sampler = _mapped_dataset_and_sampler(dataset, mapper, sampler, InferenceSampler)
    return torchdata.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=False,
        num_workers=num_workers,
        collate_fn=trivial_batch_collator if collate_fn is None else collate_fn,
    )
