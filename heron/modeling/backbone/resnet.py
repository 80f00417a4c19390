"""ResNet and ResNeXt backbones (Detectron2's `ResNet`, `make_stage`, `build_resnet_backbone`).

Stages are named ``res2`` .. ``res5`` (strides 4 .. 32); the stem is ``stem``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor, nn

from heron.config.config import CfgNode
from heron.layers.blocks import CNNBlockBase
from heron.layers.shape_spec import ShapeSpec
from heron.modeling.backbone.backbone import Backbone
from heron.modeling.backbone.build import BACKBONE_REGISTRY
from heron.modeling.backbone.resnet_blocks import (
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    DeformBottleneckBlock,
)

__all__ = [
    "BasicBlock",
    "BasicStem",
    "BottleneckBlock",
    "DeformBottleneckBlock",
    "ResNet",
    "build_resnet_backbone",
    "make_stage",
]

# Blocks per stage (res2..res5) for each supported depth.
_BLOCKS_PER_STAGE = {
    18: [2, 2, 2, 2],
    34: [3, 4, 6, 3],
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
    152: [3, 8, 36, 3],
}
_STAGE_INDEX = {"stem": 0, "res2": 1, "res3": 2, "res4": 3, "res5": 4}


class ResNet(Backbone):
    """A stem followed by stages of blocks, returning the features named in out_features.

    Stages after the last requested output are not built, so a C4 backbone (out_features
    ``["res4"]``) holds no res5 parameters.
    """

    def __init__(
        self,
        stem: CNNBlockBase,
        stages: list[list[CNNBlockBase]],
        num_classes: int | None = None,
        out_features: list[str] | tuple[str, ...] | None = None,
        freeze_at: int = 0,
    ) -> None:
        super().__init__()
        self.stem = stem
        self.num_classes = num_classes
        stage_names = ["res" + str(i + 2) for i in range(len(stages))]
        if out_features is not None:
            known = ["stem", *stage_names] + (["linear"] if num_classes else [])
            unknown = [f for f in out_features if f not in known]
            if unknown:
                raise ValueError(f"ResNet out_features {unknown} not among {known}")
            deepest = max(_STAGE_INDEX.get(f, len(stages)) for f in out_features)
            stages = stages[:deepest]

        current_stride = self.stem.stride
        self._out_feature_strides = {"stem": current_stride}
        self._out_feature_channels = {"stem": self.stem.out_channels}
        self.stage_names, self.stages = [], []
        for name, blocks in zip(stage_names, stages):
            if not blocks:
                raise ValueError(f"ResNet stage {name} has no blocks")
            stage = nn.Sequential(*blocks)
            self.add_module(name, stage)
            self.stage_names.append(name)
            self.stages.append(stage)
            current_stride = int(current_stride * np.prod([b.stride for b in blocks]))
            self._out_feature_strides[name] = current_stride
            self._out_feature_channels[name] = blocks[-1].out_channels
        self.stage_names = tuple(self.stage_names)

        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.linear = nn.Linear(self._out_feature_channels[self.stage_names[-1]], num_classes)
            # Same init as Caffe2's classification head.
            nn.init.normal_(self.linear.weight, std=0.01)
        self._out_features = (
            list(out_features) if out_features is not None else ["linear" if num_classes else name]
        )
        self.freeze(freeze_at)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """(N, C, H, W) images -> the requested feature maps."""
        if x.dim() != 4:
            raise ValueError(f"ResNet takes an (N, C, H, W) input, got shape {tuple(x.shape)}")
        outputs = {}
        x = self.stem(x)
        if "stem" in self._out_features:
            outputs["stem"] = x
        for name, stage in zip(self.stage_names, self.stages):
            x = stage(x)
            if name in self._out_features:
                outputs[name] = x
        if self.num_classes is not None:
            x = self.linear(self.avgpool(x).flatten(1))
            if "linear" in self._out_features:
                outputs["linear"] = x
        return outputs

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
            if name != "linear"
        }

    def freeze(self, freeze_at: int = 0) -> ResNet:
        """Freeze the stem (freeze_at >= 1) and the first freeze_at - 1 stages.

        Frozen blocks stop requiring gradients and their BatchNorms become
        FrozenBatchNorm2d. freeze_at=0 freezes nothing. Returns self.
        """
        if freeze_at >= 1:
            self.stem.freeze()
        for idx, stage in enumerate(self.stages, start=2):
            if freeze_at >= idx:
                for block in stage.children():
                    block.freeze()
        return self

    @staticmethod
    def make_stage(
        block_class: type[CNNBlockBase],
        num_blocks: int,
        *,
        in_channels: int,
        out_channels: int,
        **kwargs: Any,
    ) -> list[CNNBlockBase]:
        """Build ``num_blocks`` blocks of one class; see `make_stage`."""
        blocks = []
        for i in range(num_blocks):
            block_kwargs = {}
            for key, value in kwargs.items():
                if key.endswith("_per_block"):
                    if len(value) != num_blocks:
                        raise ValueError(
                            f"make_stage: {key} has {len(value)} values for {num_blocks} blocks"
                        )
                    block_kwargs[key[: -len("_per_block")]] = value[i]
                else:
                    block_kwargs[key] = value
            blocks.append(block_class(in_channels, out_channels, **block_kwargs))
            in_channels = out_channels
        return blocks

    @staticmethod
    def make_default_stages(
        depth: int, block_class: type[CNNBlockBase] | None = None, **kwargs: Any
    ) -> list[list[CNNBlockBase]]:
        """The four stages of a standard ResNet of the given depth (torchvision layout).

        ``kwargs`` go to every block (e.g. ``norm``, ``stride_in_1x1``).
        """
        if depth not in _BLOCKS_PER_STAGE:
            raise ValueError(
                f"ResNet depth must be one of {sorted(_BLOCKS_PER_STAGE)}, got {depth}"
            )
        if block_class is None:
            block_class = BasicBlock if depth < 50 else BottleneckBlock
        if depth < 50:
            in_channels, out_channels = [64, 64, 128, 256], [64, 128, 256, 512]
        else:
            in_channels, out_channels = [64, 256, 512, 1024], [256, 512, 1024, 2048]
        stages = []
        for n, stride, cin, cout in zip(
            _BLOCKS_PER_STAGE[depth], [1, 2, 2, 2], in_channels, out_channels
        ):
            if depth >= 50:
                kwargs["bottleneck_channels"] = cout // 4
            stages.append(
                ResNet.make_stage(
                    block_class,
                    n,
                    stride_per_block=[stride] + [1] * (n - 1),
                    in_channels=cin,
                    out_channels=cout,
                    **kwargs,
                )
            )
        return stages


def make_stage(*args: Any, **kwargs: Any) -> list[CNNBlockBase]:
    """Blocks of one stage: ``block_class(in_channels, out_channels, **kw)`` each.

    A keyword named ``xx_per_block`` is a list with one value per block, passed as ``xx``;
    other keywords go to every block. The first block takes ``in_channels``, the others
    ``out_channels``.
    """
    return ResNet.make_stage(*args, **kwargs)


@BACKBONE_REGISTRY.register()
def build_resnet_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> ResNet:
    """A ResNet/ResNeXt from ``cfg.MODEL.RESNETS`` and ``cfg.MODEL.BACKBONE.FREEZE_AT``."""
    r = cfg.MODEL.RESNETS
    norm = r.NORM
    depth = r.DEPTH
    num_groups = r.NUM_GROUPS
    width_per_group = r.WIDTH_PER_GROUP
    in_channels = r.STEM_OUT_CHANNELS
    out_channels = r.RES2_OUT_CHANNELS
    stride_in_1x1 = r.STRIDE_IN_1X1
    res5_dilation = r.RES5_DILATION
    deform_on_per_stage = r.DEFORM_ON_PER_STAGE
    deform_modulated = r.DEFORM_MODULATED
    deform_num_groups = r.DEFORM_NUM_GROUPS
    bottleneck_channels = num_groups * width_per_group

    if depth not in _BLOCKS_PER_STAGE:
        raise ValueError(
            f"MODEL.RESNETS.DEPTH must be one of {sorted(_BLOCKS_PER_STAGE)}, got {depth}"
        )
    if res5_dilation not in (1, 2):
        raise ValueError(f"MODEL.RESNETS.RES5_DILATION must be 1 or 2, got {res5_dilation}")
    if depth in (18, 34):
        if out_channels != 64:
            raise ValueError("Must set MODEL.RESNETS.RES2_OUT_CHANNELS = 64 for R18/R34")
        if any(deform_on_per_stage):
            raise ValueError("MODEL.RESNETS.DEFORM_ON_PER_STAGE unsupported for R18/R34")
        if res5_dilation != 1:
            raise ValueError("Must set MODEL.RESNETS.RES5_DILATION = 1 for R18/R34")
        if num_groups != 1:
            raise ValueError("Must set MODEL.RESNETS.NUM_GROUPS = 1 for R18/R34")

    stem = BasicStem(in_channels=input_shape.channels, out_channels=in_channels, norm=norm)
    stages = []
    for idx, num_blocks in enumerate(_BLOCKS_PER_STAGE[depth]):
        stage_idx = idx + 2
        dilation = res5_dilation if stage_idx == 5 else 1
        # res2 keeps the stem's stride; a dilated res5 keeps res4's.
        first_stride = 1 if idx == 0 or (stage_idx == 5 and dilation == 2) else 2
        stage_kwargs: dict[str, Any] = {
            "num_blocks": num_blocks,
            "stride_per_block": [first_stride] + [1] * (num_blocks - 1),
            "in_channels": in_channels,
            "out_channels": out_channels,
            "norm": norm,
        }
        if depth in (18, 34):
            stage_kwargs["block_class"] = BasicBlock
        else:
            stage_kwargs["bottleneck_channels"] = bottleneck_channels
            stage_kwargs["stride_in_1x1"] = stride_in_1x1
            stage_kwargs["dilation"] = dilation
            stage_kwargs["num_groups"] = num_groups
            if deform_on_per_stage[idx]:
                stage_kwargs["block_class"] = DeformBottleneckBlock
                stage_kwargs["deform_modulated"] = deform_modulated
                stage_kwargs["deform_num_groups"] = deform_num_groups
            else:
                stage_kwargs["block_class"] = BottleneckBlock
        stages.append(ResNet.make_stage(**stage_kwargs))
        in_channels = out_channels
        out_channels *= 2
        bottleneck_channels *= 2
    return ResNet(stem, stages, out_features=r.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)
