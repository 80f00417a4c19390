"""Pixel statistics shared by lazy configs (0-255 scale, per channel)."""

constants = dict(
    imagenet_rgb256_mean=[123.675, 116.28, 103.53],
    imagenet_rgb256_std=[58.395, 57.12, 57.375],
    imagenet_bgr256_mean=[103.530, 116.280, 123.675],
    # MSRA and Detectron1 checkpoints fold the ImageNet std into conv1's weights, so their
    # inputs are only mean-subtracted; use [57.375, 57.120, 58.395] for other BGR weights.
    imagenet_bgr256_std=[1.0, 1.0, 1.0],
)
