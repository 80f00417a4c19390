"""The default mapper from a dataset dict to the inputs a detection model takes."""

from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np
import torch

from heron.config.config import configurable
from heron.data import detection_utils as utils
from heron.data.transforms.augmentation import AugInput, Augmentation, AugmentationList
from heron.data.transforms.augmentation_impl import RandomCrop
from heron.data.transforms.transform import Transform, TransformList
from heron.structures.boxes import BoxMode

__all__ = ["DatasetMapper"]

logger = logging.getLogger(__name__)


class DatasetMapper:
    """Map one dataset dict (Detectron2's standard format) to model inputs.

    Reads the image (and "sem_seg_file_name"), applies the augmentations, and produces:

    - "image": (C, H, W) uint8 tensor in ``image_format``;
    - "sem_seg": (H, W) int64 tensor, when the record has "sem_seg_file_name";
    - "proposals": Instances, with precomputed proposals;
    - "instances": Instances with gt_boxes, gt_classes and optional gt_masks/gt_keypoints,
      in training only (annotations are dropped in inference).
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: list[Augmentation | Transform],
        image_format: str,
        use_instance_mask: bool = False,
        use_keypoint: bool = False,
        instance_mask_format: str = "polygon",
        keypoint_hflip_indices: np.ndarray | list[int] | None = None,
        precomputed_proposal_topk: int | None = None,
        recompute_boxes: bool = False,
        skip_bad: bool = False,
        albumentations: Any = None,
    ) -> None:
        """
        Args:
            is_train: training mode keeps and transforms annotations.
            augmentations: applied in order to the image, sem_seg and annotations.
            image_format: format passed to :func:`read_image` ("BGR", "RGB", ...).
            use_instance_mask: keep "segmentation" and produce gt_masks.
            use_keypoint: keep "keypoints" and produce gt_keypoints.
            instance_mask_format: "polygon" or "bitmask".
            keypoint_hflip_indices: see :func:`create_keypoint_hflip_indices`.
            precomputed_proposal_topk: when set, keep this many precomputed proposals.
            recompute_boxes: replace gt_boxes by the masks' bounding boxes (after a crop).
            skip_bad: when True, a record whose image cannot be read maps to None (so
                ``MapDataset`` picks another) and is counted in the log; when False it raises.
            albumentations: in training, an Albumentations pipeline (or an
                :class:`AlbumentationsAdapter`) run on the image, annotations and sem_seg
                right after reading, before ``augmentations`` (optional extra). It sees RGB
                when ``image_format`` is "BGR".
        """
        if recompute_boxes and not use_instance_mask:
            raise ValueError("recompute_boxes=True requires use_instance_mask=True")
        if instance_mask_format not in ("polygon", "bitmask"):
            raise ValueError(
                f"instance_mask_format must be 'polygon' or 'bitmask', got {instance_mask_format!r}"
            )
        self.is_train = is_train
        self.augmentations = AugmentationList(augmentations)
        self.image_format = image_format
        self.use_instance_mask = use_instance_mask
        self.instance_mask_format = instance_mask_format
        self.use_keypoint = use_keypoint
        self.keypoint_hflip_indices = keypoint_hflip_indices
        self.proposal_topk = precomputed_proposal_topk
        self.recompute_boxes = recompute_boxes
        self.skip_bad = skip_bad
        self.num_skipped = 0
        self.albumentations = None
        if albumentations is not None:
            if precomputed_proposal_topk is not None:
                raise ValueError(
                    "albumentations cannot move precomputed proposals; use Heron "
                    "augmentations with precomputed_proposal_topk"
                )
            from heron.data.transforms.albumentations_adapter import AlbumentationsAdapter

            if not isinstance(albumentations, AlbumentationsAdapter):
                albumentations = AlbumentationsAdapter(
                    albumentations, keypoint_hflip_indices=keypoint_hflip_indices
                )
            self.albumentations = albumentations
        mode = "training" if is_train else "inference"
        logger.info("[DatasetMapper] Augmentations used in %s: %s", mode, augmentations)

    @classmethod
    def from_config(cls, cfg: Any, is_train: bool = True) -> dict[str, Any]:
        """Constructor arguments from cfg.INPUT, cfg.MODEL and cfg.DATASETS."""
        augs: list[Augmentation | Transform] = list(utils.build_augmentation(cfg, is_train))
        recompute_boxes = False
        if cfg.INPUT.CROP.ENABLED and is_train:
            augs.insert(0, RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
            # A crop cuts through masks; their boxes are tighter than the cropped annotation box.
            recompute_boxes = cfg.MODEL.MASK_ON
        ret: dict[str, Any] = {
            "is_train": is_train,
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "use_instance_mask": cfg.MODEL.MASK_ON,
            "instance_mask_format": cfg.INPUT.MASK_FORMAT,
            "use_keypoint": cfg.MODEL.KEYPOINT_ON,
            "recompute_boxes": recompute_boxes,
        }
        if cfg.MODEL.KEYPOINT_ON:
            ret["keypoint_hflip_indices"] = utils.create_keypoint_hflip_indices(cfg.DATASETS.TRAIN)
        if cfg.MODEL.LOAD_PROPOSALS:
            ret["precomputed_proposal_topk"] = (
                cfg.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN
                if is_train
                else cfg.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST
            )
        return ret

    def _transform_annotations(
        self, dataset_dict: dict, transforms: TransformList, image_shape: tuple[int, int]
    ) -> None:
        modes = {anno.get("bbox_mode") for anno in dataset_dict["annotations"]}
        if BoxMode.XYWHA_ABS in modes:
            self._transform_rotated_annotations(dataset_dict, transforms, image_shape, modes)
            return
        for anno in dataset_dict["annotations"]:
            if not self.use_instance_mask:
                anno.pop("segmentation", None)
            if not self.use_keypoint:
                anno.pop("keypoints", None)
        annos = [
            utils.transform_instance_annotations(
                obj, transforms, image_shape, keypoint_hflip_indices=self.keypoint_hflip_indices
            )
            for obj in dataset_dict.pop("annotations")
            if obj.get("iscrowd", 0) == 0
        ]
        instances = utils.annotations_to_instances(
            annos, image_shape, mask_format=self.instance_mask_format
        )
        if self.recompute_boxes:
            instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        dataset_dict["instances"] = utils.filter_empty_instances(instances)

    @staticmethod
    def _transform_rotated_annotations(
        dataset_dict: dict, transforms: TransformList, image_shape: tuple[int, int], modes: set
    ) -> None:
        """Rotated boxes (BoxMode.XYWHA_ABS): transform them with ``apply_rotated_box`` and
        build ``Instances`` with ``RotatedBoxes``; masks and keypoints are not kept (as in
        Detectron2's rotated examples)."""
        if modes != {BoxMode.XYWHA_ABS}:
            raise ValueError(
                f"image {dataset_dict.get('file_name')!r} mixes rotated (XYWHA_ABS) and other "
                f"box modes: {sorted(int(m) for m in modes)}"
            )
        annos = []
        for anno in dataset_dict.pop("annotations"):
            if anno.get("iscrowd", 0):
                continue
            box = np.asarray([anno["bbox"]], dtype=np.float64)
            annos.append(
                {
                    "bbox": transforms.apply_rotated_box(box)[0],
                    "bbox_mode": BoxMode.XYWHA_ABS,
                    "category_id": anno["category_id"],
                }
            )
        instances = utils.annotations_to_instances_rotated(annos, image_shape)
        dataset_dict["instances"] = utils.filter_empty_instances(instances)

    def _read(self, dataset_dict: dict) -> tuple[np.ndarray, np.ndarray | None] | None:
        """Read the image and sem_seg; None (skip) or a raise naming the record on failure."""
        file_name = dataset_dict["file_name"]
        try:
            image = utils.read_image(file_name, format=self.image_format)
            utils.check_image_size(dataset_dict, image)
            sem_seg = None
            if "sem_seg_file_name" in dataset_dict:
                sem_seg = utils.read_image(dataset_dict.pop("sem_seg_file_name"), "L").squeeze(2)
        except (OSError, ValueError) as e:
            record = f"image_id={dataset_dict.get('image_id')!r}, file_name={file_name!r}"
            if not self.skip_bad:
                message = f"DatasetMapper: cannot load record ({record}): {e}"
                try:
                    wrapped = type(e)(message)
                except TypeError:  # an exception class whose constructor needs more arguments
                    wrapped = OSError(message) if isinstance(e, OSError) else ValueError(message)
                raise wrapped from e
            self.num_skipped += 1
            logger.warning(
                "DatasetMapper: skipping record (%s): %s [%d skipped so far]",
                record,
                e,
                self.num_skipped,
            )
            return None
        return image, sem_seg

    def _run_albumentations(
        self, dataset_dict: dict, image: np.ndarray, sem_seg: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        bgr = self.image_format == "BGR"
        annos = dataset_dict.get("annotations", [])
        try:
            image, annos, sem_seg = self.albumentations(
                np.ascontiguousarray(image[..., ::-1]) if bgr else image, annos, sem_seg
            )
        except ValueError as e:
            raise ValueError(
                f"albumentations on image_id={dataset_dict.get('image_id')!r}, "
                f"file_name={dataset_dict['file_name']!r}: {e}"
            ) from e
        if "annotations" in dataset_dict:
            dataset_dict["annotations"] = annos
        # the image's size changed: the record's height/width now describe the new image
        dataset_dict["height"], dataset_dict["width"] = image.shape[:2]
        return (np.ascontiguousarray(image[..., ::-1]) if bgr else image), sem_seg

    def __call__(self, dataset_dict: dict) -> dict | None:
        """Map one record; the input dict is not modified.

        Returns:
            The mapped dict, or None when ``skip_bad`` and the image cannot be read.
        """
        dataset_dict = copy.deepcopy(dataset_dict)
        loaded = self._read(dataset_dict)
        if loaded is None:
            return None
        image, sem_seg_gt = loaded
        if self.albumentations is not None and self.is_train:
            image, sem_seg_gt = self._run_albumentations(dataset_dict, image, sem_seg_gt)

        aug_input = AugInput(image, sem_seg=sem_seg_gt)
        transforms = self.augmentations(aug_input)
        image, sem_seg_gt = aug_input.image, aug_input.sem_seg
        image_shape = image.shape[:2]  # (h, w)
        # (H, W, C) -> (C, H, W); contiguous since BGR reading leaves a negative stride.
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg_gt is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(sem_seg_gt.astype("long"))

        if self.proposal_topk is not None:
            utils.transform_proposals(
                dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk
            )

        if not self.is_train:
            dataset_dict.pop("annotations", None)
            dataset_dict.pop("sem_seg_file_name", None)
            return dataset_dict

        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict
