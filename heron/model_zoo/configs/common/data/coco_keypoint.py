"""COCO 2017 person-keypoint data loaders: the COCO loaders with keypoints instead of masks."""

from heron.data.detection_utils import create_keypoint_hflip_indices

from .coco import dataloader

# drop training people without any labelled keypoint
dataloader.train.dataset.min_keypoints = 1
dataloader.train.dataset.names = "keypoints_coco_2017_train"
dataloader.test.dataset.names = "keypoints_coco_2017_val"

# A horizontal flip swaps left and right keypoints; the permutation comes from the
# dataset's metadata (keypoint_names, keypoint_flip_map), read when this file is loaded.
dataloader.train.mapper.update(
    use_instance_mask=False,
    use_keypoint=True,
    keypoint_hflip_indices=create_keypoint_hflip_indices(dataloader.train.dataset.names),
)
