"""Keypoint R-CNN on R50-FPN: person detection with 17 COCO keypoints, no masks."""

from heron.config import LazyCall as L
from heron.layers import ShapeSpec
from heron.modeling.poolers import ROIPooler
from heron.modeling.roi_heads import KRCNNConvDeconvUpsampleHead

from .mask_rcnn_fpn import model

for key in ("mask_in_features", "mask_pooler", "mask_head"):
    model.roi_heads.pop(key)

model.roi_heads.update(
    num_classes=1,  # person
    keypoint_in_features=["p2", "p3", "p4", "p5"],
    keypoint_pooler=L(ROIPooler)(
        output_size=14,
        scales=(1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32),
        sampling_ratio=0,
        pooler_type="ROIAlignV2",
    ),
    keypoint_head=L(KRCNNConvDeconvUpsampleHead)(
        input_shape=ShapeSpec(channels=256, width=14, height=14),
        num_keypoints=17,
        conv_dims=[512] * 8,
        loss_normalizer="visible",
    ),
)

# Detectron1 kept 2000 proposals per batch; here the count is per image, and 1000 per image
# costs box AP, so training keeps 1500.
model.proposal_generator.post_nms_topk = (1500, 1000)

# with a plain L1 box loss the box AP rises but the keypoint AP falls
model.roi_heads.box_predictor.smooth_l1_beta = 0.5
