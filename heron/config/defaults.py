"""The default config, ``_C``: every key of Detectron2's ``config/defaults.py`` and its value.

``get_cfg()`` returns a copy of it. YAML configs and ``merge_from_list`` may only change keys
defined here. Keys whose meaning differs between training and testing end in ``_TRAIN`` or
``_TEST``. Values that Detectron2 writes as tuples are tuples here too (a merged list is
converted to a tuple), so dumps and comparisons behave as in Detectron2.
"""

from __future__ import annotations

from heron.config.config import CfgNode as CN

__all__ = ["HERON_EXTENSION_KEYS", "_C"]

_C = CN()

# Bumped only on backward-incompatible renames; see heron.config.compat.
_C.VERSION = 2

# ---------------------------------------------------------------------------- model
_C.MODEL = CN()
_C.MODEL.LOAD_PROPOSALS = False  # read precomputed proposals instead of running an RPN
_C.MODEL.MASK_ON = False
_C.MODEL.KEYPOINT_ON = False
_C.MODEL.DEVICE = "cuda"
_C.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"  # name in META_ARCH_REGISTRY
# Checkpoint to load: a local path or a URL (detectron2://..., https://...).
_C.MODEL.WEIGHTS = ""
# Per-channel normalization in INPUT.FORMAT order (BGR): ImageNet mean, and a std of 1
# for MSRA/Detectron1 weights, whose first conv absorbed the std. Use
# [57.375, 57.120, 58.395] for models trained on std-normalized inputs.
_C.MODEL.PIXEL_MEAN = [103.530, 116.280, 123.675]
_C.MODEL.PIXEL_STD = [1.0, 1.0, 1.0]

# ---------------------------------------------------------------------------- input
_C.INPUT = CN()
# Training resize: the short side is drawn from MIN_SIZE_TRAIN ("choice") or from the
# range it spans ("range"), and the long side is capped at MAX_SIZE_TRAIN.
_C.INPUT.MIN_SIZE_TRAIN = (800,)
_C.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
_C.INPUT.MAX_SIZE_TRAIN = 1333
# Test resize; MIN_SIZE_TEST = 0 disables resizing.
_C.INPUT.MIN_SIZE_TEST = 800
_C.INPUT.MAX_SIZE_TEST = 1333
_C.INPUT.RANDOM_FLIP = "horizontal"  # "horizontal", "vertical" or "none"
# Random crop during training; TYPE as in data.transforms.RandomCrop. SIZE is a fraction
# in (0, 1] for the "relative*" types and pixels for "absolute*".
_C.INPUT.CROP = CN({"ENABLED": False})
_C.INPUT.CROP.TYPE = "relative_range"
_C.INPUT.CROP.SIZE = [0.9, 0.9]
# Channel order / PIL mode the model expects ("BGR", "RGB", ...).
_C.INPUT.FORMAT = "BGR"
_C.INPUT.MASK_FORMAT = "polygon"  # or "bitmask"

# ---------------------------------------------------------------------------- datasets
_C.DATASETS = CN()
# Names registered in DatasetCatalog; training datasets are concatenated.
_C.DATASETS.TRAIN = ()
# Precomputed proposal files, one per dataset in TRAIN / TEST, and how many to keep.
_C.DATASETS.PROPOSAL_FILES_TRAIN = ()
_C.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN = 2000
_C.DATASETS.TEST = ()
_C.DATASETS.PROPOSAL_FILES_TEST = ()
_C.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST = 1000
# Heron: held-out datasets for the validation-loss hook (TEST.VAL_PERIOD).
_C.DATASETS.VAL = ()

# ---------------------------------------------------------------------------- data loader
_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 4
# Batch portrait and landscape images separately.
_C.DATALOADER.ASPECT_RATIO_GROUPING = True
_C.DATALOADER.SAMPLER_TRAIN = "TrainingSampler"  # or "RepeatFactorTrainingSampler"
# RepeatFactorTrainingSampler: category frequency threshold, and whether the repeat
# factor uses the square root of threshold / frequency.
_C.DATALOADER.REPEAT_THRESHOLD = 0.0
_C.DATALOADER.REPEAT_SQRT = True
# Drop training images without instance annotations.
_C.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True

# ---------------------------------------------------------------------------- backbone
_C.MODEL.BACKBONE = CN()
_C.MODEL.BACKBONE.NAME = "build_resnet_backbone"  # name in BACKBONE_REGISTRY
# Stages frozen during training: 1 = stem, 2 = stem and res2, ... (0: none).
_C.MODEL.BACKBONE.FREEZE_AT = 2

# ---------------------------------------------------------------------------- FPN
_C.MODEL.FPN = CN()
# Backbone features FPN consumes, with strides increasing by powers of 2.
_C.MODEL.FPN.IN_FEATURES = []
_C.MODEL.FPN.OUT_CHANNELS = 256
_C.MODEL.FPN.NORM = ""  # "" or "GN"
_C.MODEL.FPN.FUSE_TYPE = "sum"  # top-down + lateral: "sum" or "avg"

# ---------------------------------------------------------------------------- proposals
_C.MODEL.PROPOSAL_GENERATOR = CN()
_C.MODEL.PROPOSAL_GENERATOR.NAME = "RPN"  # "RPN", "RRPN" or "PrecomputedProposals"
# Proposals whose height or width is not above MIN_SIZE (input pixels) are dropped.
_C.MODEL.PROPOSAL_GENERATOR.MIN_SIZE = 0

# ---------------------------------------------------------------------------- anchors
_C.MODEL.ANCHOR_GENERATOR = CN()
_C.MODEL.ANCHOR_GENERATOR.NAME = "DefaultAnchorGenerator"
# list[list[float]]: sizes (sqrt of area, input pixels), aspect ratios (H / W) and angles
# (degrees, rotated anchors only), one inner list per feature map or one list for all.
_C.MODEL.ANCHOR_GENERATOR.SIZES = [[32, 64, 128, 256, 512]]
_C.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
_C.MODEL.ANCHOR_GENERATOR.ANGLES = [[-90, 0, 90]]
# Anchor centers sit at (i + OFFSET) * stride; OFFSET in [0, 1).
_C.MODEL.ANCHOR_GENERATOR.OFFSET = 0.0

# ---------------------------------------------------------------------------- RPN
_C.MODEL.RPN = CN()
_C.MODEL.RPN.HEAD_NAME = "StandardRPNHead"  # name in RPN_HEAD_REGISTRY
_C.MODEL.RPN.IN_FEATURES = ["res4"]
# Anchors reaching more than this many pixels outside the image are ignored (-1: keep all).
_C.MODEL.RPN.BOUNDARY_THRESH = -1
# Anchor labels from IoU with ground truth: < 0.3 negative (0), >= 0.7 positive (1),
# in between ignored (-1).
_C.MODEL.RPN.IOU_THRESHOLDS = [0.3, 0.7]
_C.MODEL.RPN.IOU_LABELS = [0, -1, 1]
# Anchors sampled per image for the loss, and the foreground share of them.
_C.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 256
_C.MODEL.RPN.POSITIVE_FRACTION = 0.5
_C.MODEL.RPN.BBOX_REG_LOSS_TYPE = "smooth_l1"  # or "giou"
_C.MODEL.RPN.BBOX_REG_LOSS_WEIGHT = 1.0
# Weights on (dx, dy, dw, dh) of the box coding.
_C.MODEL.RPN.BBOX_REG_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
_C.MODEL.RPN.SMOOTH_L1_BETA = 0.0  # 0: plain L1
_C.MODEL.RPN.LOSS_WEIGHT = 1.0
# Top-k before NMS (per feature level with FPN) and after NMS (per image).
_C.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 12000
_C.MODEL.RPN.PRE_NMS_TOPK_TEST = 6000
_C.MODEL.RPN.POST_NMS_TOPK_TRAIN = 2000
_C.MODEL.RPN.POST_NMS_TOPK_TEST = 1000
_C.MODEL.RPN.NMS_THRESH = 0.7
# Channels of the head's hidden convs; -1 keeps the input channel count.
_C.MODEL.RPN.CONV_DIMS = [-1]

# ---------------------------------------------------------------------------- ROI heads
_C.MODEL.ROI_HEADS = CN()
_C.MODEL.ROI_HEADS.NAME = "Res5ROIHeads"  # name in ROI_HEADS_REGISTRY
_C.MODEL.ROI_HEADS.NUM_CLASSES = 80  # foreground classes
_C.MODEL.ROI_HEADS.IN_FEATURES = ["res4"]  # shared by the box, mask and keypoint heads
# Proposal labels: IoU < 0.5 background, >= 0.5 foreground.
_C.MODEL.ROI_HEADS.IOU_THRESHOLDS = [0.5]
_C.MODEL.ROI_HEADS.IOU_LABELS = [0, 1]
# Proposals sampled per image for training, and the foreground share of them.
_C.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512
_C.MODEL.ROI_HEADS.POSITIVE_FRACTION = 0.25
# Inference: minimum score, and the IoU above which NMS suppresses a box.
_C.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.05
_C.MODEL.ROI_HEADS.NMS_THRESH_TEST = 0.5
# Add the ground-truth boxes to the proposals before sampling.
_C.MODEL.ROI_HEADS.PROPOSAL_APPEND_GT = True

# ---------------------------------------------------------------------------- box head
_C.MODEL.ROI_BOX_HEAD = CN()
_C.MODEL.ROI_BOX_HEAD.NAME = ""  # e.g. "FastRCNNConvFCHead"; unused by C4 models
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE = "smooth_l1"  # or "giou"
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT = 1.0
# Weights on (dx, dy, dw, dh), chosen so that regression targets have about unit variance.
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
_C.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA = 0.0  # 0: plain L1
_C.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 14
_C.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 0
_C.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
# Convs then fully connected layers of FastRCNNConvFCHead.
_C.MODEL.ROI_BOX_HEAD.NUM_FC = 0
_C.MODEL.ROI_BOX_HEAD.FC_DIM = 1024
_C.MODEL.ROI_BOX_HEAD.NUM_CONV = 0
_C.MODEL.ROI_BOX_HEAD.CONV_DIM = 256
_C.MODEL.ROI_BOX_HEAD.NORM = ""  # "", "GN" or "SyncBN"
_C.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = False
# Feed the box head's own predictions, not the proposals, to the later heads in training.
_C.MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES = False
# Federated loss (LVIS) and sigmoid cross-entropy classification.
_C.MODEL.ROI_BOX_HEAD.USE_FED_LOSS = False
_C.MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE = False
_C.MODEL.ROI_BOX_HEAD.FED_LOSS_FREQ_WEIGHT_POWER = 0.5
_C.MODEL.ROI_BOX_HEAD.FED_LOSS_NUM_CLASSES = 50

# ---------------------------------------------------------------------------- cascade
_C.MODEL.ROI_BOX_CASCADE_HEAD = CN()
# One entry per stage; the number of stages is the length of these lists.
_C.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS = (
    (10.0, 10.0, 5.0, 5.0),
    (20.0, 20.0, 10.0, 10.0),
    (30.0, 30.0, 15.0, 15.0),
)
_C.MODEL.ROI_BOX_CASCADE_HEAD.IOUS = (0.5, 0.6, 0.7)

# ---------------------------------------------------------------------------- mask head
_C.MODEL.ROI_MASK_HEAD = CN()
_C.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
_C.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = 14
_C.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO = 0
_C.MODEL.ROI_MASK_HEAD.NUM_CONV = 0
_C.MODEL.ROI_MASK_HEAD.CONV_DIM = 256
_C.MODEL.ROI_MASK_HEAD.NORM = ""  # "", "GN" or "SyncBN"
_C.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK = False
_C.MODEL.ROI_MASK_HEAD.POOLER_TYPE = "ROIAlignV2"

# ---------------------------------------------------------------------------- keypoint head
_C.MODEL.ROI_KEYPOINT_HEAD = CN()
_C.MODEL.ROI_KEYPOINT_HEAD.NAME = "KRCNNConvDeconvUpsampleHead"
_C.MODEL.ROI_KEYPOINT_HEAD.POOLER_RESOLUTION = 14
_C.MODEL.ROI_KEYPOINT_HEAD.POOLER_SAMPLING_RATIO = 0
_C.MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS = (512,) * 8
_C.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS = 17  # COCO
# Training images with fewer visible keypoints than this are dropped.
_C.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE = 1
# Divide the loss by the visible keypoints in the batch (True) or by all possible ones
# (False); LOSS_WEIGHT is usually 1.0 with True and 4.0 with False.
_C.MODEL.ROI_KEYPOINT_HEAD.NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS = True
_C.MODEL.ROI_KEYPOINT_HEAD.LOSS_WEIGHT = 1.0
_C.MODEL.ROI_KEYPOINT_HEAD.POOLER_TYPE = "ROIAlignV2"

# ---------------------------------------------------------------------------- semantic seg
_C.MODEL.SEM_SEG_HEAD = CN()
_C.MODEL.SEM_SEG_HEAD.NAME = "SemSegFPNHead"
_C.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["p2", "p3", "p4", "p5"]
_C.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 255  # label that contributes no loss
_C.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 54
_C.MODEL.SEM_SEG_HEAD.CONVS_DIM = 128
# Every level is upsampled to this stride before the sum.
_C.MODEL.SEM_SEG_HEAD.COMMON_STRIDE = 4
_C.MODEL.SEM_SEG_HEAD.NORM = "GN"  # "" or "GN"
_C.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT = 1.0

# ---------------------------------------------------------------------------- panoptic FPN
_C.MODEL.PANOPTIC_FPN = CN()
_C.MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT = 1.0  # scales the instance branch's losses
# Merging instance and semantic outputs into a panoptic map (ENABLED is kept but unused).
_C.MODEL.PANOPTIC_FPN.COMBINE = CN({"ENABLED": True})
_C.MODEL.PANOPTIC_FPN.COMBINE.OVERLAP_THRESH = 0.5
_C.MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT = 4096
_C.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = 0.5

# ---------------------------------------------------------------------------- RetinaNet
_C.MODEL.RETINANET = CN()
_C.MODEL.RETINANET.NUM_CLASSES = 80  # foreground classes
_C.MODEL.RETINANET.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
# Convs in each of the class and box towers, not counting the output conv.
_C.MODEL.RETINANET.NUM_CONVS = 4
# Anchor labels: IoU < 0.4 negative, >= 0.5 positive, in between ignored.
_C.MODEL.RETINANET.IOU_THRESHOLDS = [0.4, 0.5]
_C.MODEL.RETINANET.IOU_LABELS = [0, -1, 1]
# Initial foreground probability; sets the classifier's bias for stable early training.
_C.MODEL.RETINANET.PRIOR_PROB = 0.01
# Inference: score threshold, top-k per level before NMS, NMS IoU.
_C.MODEL.RETINANET.SCORE_THRESH_TEST = 0.05
_C.MODEL.RETINANET.TOPK_CANDIDATES_TEST = 1000
_C.MODEL.RETINANET.NMS_THRESH_TEST = 0.5
_C.MODEL.RETINANET.BBOX_REG_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
# Focal loss and box loss parameters.
_C.MODEL.RETINANET.FOCAL_LOSS_GAMMA = 2.0
_C.MODEL.RETINANET.FOCAL_LOSS_ALPHA = 0.25
_C.MODEL.RETINANET.SMOOTH_L1_LOSS_BETA = 0.1
_C.MODEL.RETINANET.BBOX_REG_LOSS_TYPE = "smooth_l1"  # or "giou"
_C.MODEL.RETINANET.NORM = ""  # norm in the towers: "", "BN", "SyncBN", "FrozenBN" or "GN"

# ---------------------------------------------------------------------------- ResNe(X)t
# Shared by the backbone and by heads built from ResNet stages (Res5ROIHeads).
_C.MODEL.RESNETS = CN()
_C.MODEL.RESNETS.DEPTH = 50
_C.MODEL.RESNETS.OUT_FEATURES = ["res4"]  # ["res4"] for C4, res2..res5 for FPN
_C.MODEL.RESNETS.NUM_GROUPS = 1  # > 1: ResNeXt
_C.MODEL.RESNETS.NORM = "FrozenBN"  # "FrozenBN", "GN", "SyncBN" or "BN"
_C.MODEL.RESNETS.WIDTH_PER_GROUP = 64  # scales every bottleneck's width
# Stride 2 on the first 1x1 conv of a block (MSRA models) rather than the 3x3 (C2/Torch).
_C.MODEL.RESNETS.STRIDE_IN_1X1 = True
_C.MODEL.RESNETS.RES5_DILATION = 1  # 2 for DC5 models
# Output channels of res2 (doubled per stage); 64 for R18/R34.
_C.MODEL.RESNETS.RES2_OUT_CHANNELS = 256
_C.MODEL.RESNETS.STEM_OUT_CHANNELS = 64
# Deformable convolution per stage (res2..res5); MODULATED selects DCNv2 over DCNv1.
_C.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, False, False, False]
_C.MODEL.RESNETS.DEFORM_MODULATED = False
_C.MODEL.RESNETS.DEFORM_NUM_GROUPS = 1

# ---------------------------------------------------------------------------- solver
_C.SOLVER = CN()
_C.SOLVER.LR_SCHEDULER_NAME = "WarmupMultiStepLR"  # or "WarmupCosineLR", ...
_C.SOLVER.MAX_ITER = 40000
_C.SOLVER.BASE_LR = 0.001
_C.SOLVER.BASE_LR_END = 0.0  # final LR of WarmupCosineLR
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.NESTEROV = False
_C.SOLVER.WEIGHT_DECAY = 0.0001
_C.SOLVER.WEIGHT_DECAY_NORM = 0.0  # for the affine parameters of norm layers
# Multi-step schedule: multiply the LR by GAMMA at each of STEPS.
_C.SOLVER.GAMMA = 0.1
_C.SOLVER.STEPS = (30000,)
_C.SOLVER.NUM_DECAYS = 3  # decays of WarmupStepWithFixedGammaLR
_C.SOLVER.WARMUP_FACTOR = 1.0 / 1000
_C.SOLVER.WARMUP_ITERS = 1000
_C.SOLVER.WARMUP_METHOD = "linear"
_C.SOLVER.RESCALE_INTERVAL = False  # rescale the schedule's interval after warmup
_C.SOLVER.CHECKPOINT_PERIOD = 5000  # iterations between checkpoints
# Images per iteration over all workers.
_C.SOLVER.IMS_PER_BATCH = 16
# Workers the config was written for; when non-zero, the trainer rescales batch size, LR
# and schedule to the actual number of workers (0: off).
_C.SOLVER.REFERENCE_WORLD_SIZE = 0
# Detectron1 conventions for biases; None means WEIGHT_DECAY.
_C.SOLVER.BIAS_LR_FACTOR = 1.0
_C.SOLVER.WEIGHT_DECAY_BIAS = None
# Gradient clipping: by "value" (each element) or by "norm" (per parameter, L-NORM_TYPE;
# .inf for the max norm).
_C.SOLVER.CLIP_GRADIENTS = CN({"ENABLED": False})
_C.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"
_C.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
_C.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0
# Mixed precision in training (inference is unaffected).
_C.SOLVER.AMP = CN({"ENABLED": False})
# Heron: autocast dtype of AMP training, "float16" (with a GradScaler on CUDA) or "bfloat16".
_C.SOLVER.AMP.PRECISION = "float16"
# Heron: the optimizer, "SGD" (MOMENTUM, NESTEROV) or "AdamW" (BETAS, EPS).
_C.SOLVER.OPTIMIZER = "SGD"
_C.SOLVER.BETAS = (0.9, 0.999)
_C.SOLVER.EPS = 1e-8
# Heron: sum the gradients of this many batches before each optimizer step.
_C.SOLVER.ACCUMULATION_STEPS = 1
# Heron: when > 0, train for this many passes over the training set; MAX_ITER, STEPS and
# CHECKPOINT_PERIOD are then derived from the dataset size (see DefaultTrainer).
_C.SOLVER.MAX_EPOCHS = 0
# Heron: keep only the newest N periodic checkpoints (0: keep all).
_C.SOLVER.CHECKPOINT_MAX_TO_KEEP = 0

# Heron: exponential moving average of the weights, used for evaluation and saved in
# checkpoints when enabled.
_C.MODEL_EMA = CN({"ENABLED": False})
_C.MODEL_EMA.DECAY = 0.999
# Device of the averaged copy ("" = the model's device).
_C.MODEL_EMA.DEVICE = ""

# ---------------------------------------------------------------------------- test
_C.TEST = CN()
# Accuracy checks for end-to-end tests: [[task, metric, value, tolerance], ...].
_C.TEST.EXPECTED_RESULTS = []
_C.TEST.EVAL_PERIOD = 0  # iterations between evaluations in training (0: off)
# Keypoint OKS sigmas, one per keypoint; empty means COCO's.
_C.TEST.KEYPOINT_OKS_SIGMAS = []
_C.TEST.DETECTIONS_PER_IMAGE = 100
# Test-time augmentation: several short-side sizes, optionally flipped.
_C.TEST.AUG = CN({"ENABLED": False})
_C.TEST.AUG.MIN_SIZES = (400, 500, 600, 700, 800, 900, 1000, 1100, 1200)
_C.TEST.AUG.MAX_SIZE = 4000
_C.TEST.AUG.FLIP = True
# Heron: loss dict on the DATASETS.VAL loader every VAL_PERIOD iterations (0: off).
_C.TEST.VAL_PERIOD = 0
# Heron: keep the best checkpoint ("model_best.pth") by an evaluation metric.
_C.TEST.BEST_CHECKPOINT = CN({"ENABLED": False})
_C.TEST.BEST_CHECKPOINT.METRIC = "bbox/AP"
_C.TEST.BEST_CHECKPOINT.MODE = "max"  # or "min"
# Heron: stop training when METRIC has not improved by MIN_DELTA for PATIENCE evaluations.
_C.TEST.EARLY_STOPPING = CN({"ENABLED": False})
_C.TEST.EARLY_STOPPING.METRIC = "bbox/AP"
_C.TEST.EARLY_STOPPING.MODE = "max"
_C.TEST.EARLY_STOPPING.PATIENCE = 5
_C.TEST.EARLY_STOPPING.MIN_DELTA = 0.0
# Recompute BatchNorm statistics before evaluation.
_C.TEST.PRECISE_BN = CN({"ENABLED": False})
_C.TEST.PRECISE_BN.NUM_ITER = 200

# ---------------------------------------------------------------------------- misc
_C.OUTPUT_DIR = "./output"
# Negative: a different random seed every run; otherwise a fixed seed (which alone does
# not make training deterministic).
_C.SEED = -1
_C.CUDNN_BENCHMARK = False
# Float32 matmul/cuDNN precision: "" (leave as is), "highest", "high" or "medium".
_C.FLOAT32_PRECISION = ""
_C.VIS_PERIOD = 0  # iterations between training visualizations (0: off)
# Scratch space for quick experiments, read through global_cfg; keep it out of configs
# that are shared.
_C.GLOBAL = CN()
_C.GLOBAL.HACK = 1.0

# Keys Heron adds to Detectron2's set (marked "Heron:" above). A config that uses none of
# them at non-default values means the same thing to Detectron2.
HERON_EXTENSION_KEYS = frozenset(
    {
        "SOLVER.AMP.PRECISION",
        "SOLVER.OPTIMIZER",
        "SOLVER.BETAS",
        "SOLVER.EPS",
        "SOLVER.ACCUMULATION_STEPS",
        "SOLVER.MAX_EPOCHS",
        "SOLVER.CHECKPOINT_MAX_TO_KEEP",
        "MODEL_EMA.ENABLED",
        "MODEL_EMA.DECAY",
        "MODEL_EMA.DEVICE",
        "DATASETS.VAL",
        "TEST.VAL_PERIOD",
        "TEST.BEST_CHECKPOINT.ENABLED",
        "TEST.BEST_CHECKPOINT.METRIC",
        "TEST.BEST_CHECKPOINT.MODE",
        "TEST.EARLY_STOPPING.ENABLED",
        "TEST.EARLY_STOPPING.METRIC",
        "TEST.EARLY_STOPPING.MODE",
        "TEST.EARLY_STOPPING.PATIENCE",
        "TEST.EARLY_STOPPING.MIN_DELTA",
    }
)
