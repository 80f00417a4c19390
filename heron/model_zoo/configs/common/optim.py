"""Optimizers for lazy configs: Detectron2's ``common/optim.py``.

``params.model`` is left unset on purpose: the training script assigns the built model to
it (``cfg.optimizer.params.model = model``) before instantiating the optimizer, so that the
parameter groups come from :func:`get_default_optimizer_params`.
"""

import torch

from heron.config import LazyCall as L
from heron.solver.build import get_default_optimizer_params

# Momentum SGD at lr 0.02 for a batch of 16 images; norm layers get no weight decay.
SGD = L(torch.optim.SGD)(
    params=L(get_default_optimizer_params)(weight_decay_norm=0.0),
    lr=0.02,
    momentum=0.9,
    weight_decay=1e-4,
)

# AdamW, as used by the ViTDet recipes; the groups' base lr follows ``AdamW.lr``.
AdamW = L(torch.optim.AdamW)(
    params=L(get_default_optimizer_params)(base_lr="${..lr}", weight_decay_norm=0.0),
    lr=1e-4,
    betas=(0.9, 0.999),
    weight_decay=0.1,
)
