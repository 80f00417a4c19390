"""Training-loop settings for lazy configs (read by a lazy-config training script such as
Detectron2's ``tools/lazyconfig_train_net.py``); Detectron2's ``common/train.py``."""

train = dict(
    output_dir="./output",
    # ImageNet-pretrained ResNet-50 in MSRA's (Caffe2) layout; resolved by the checkpointer
    init_checkpoint="detectron2://ImageNetPretrained/MSRA/R-50.pkl",
    max_iter=90000,
    amp=dict(enabled=False),  # torch.autocast mixed precision
    ddp=dict(  # keyword arguments of DistributedDataParallel and its gradient hooks
        broadcast_buffers=False,
        find_unused_parameters=False,
        fp16_compression=False,
    ),
    checkpointer=dict(period=5000, max_to_keep=100),  # PeriodicCheckpointer
    eval_period=5000,
    log_period=20,
    device="cuda",
)
