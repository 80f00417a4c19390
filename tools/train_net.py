#!/usr/bin/env python
"""Train or evaluate a model from a YAML config: Detectron2's tools/train_net.py arguments,
run through Heron (the same as `heron train`).

    python tools/train_net.py --config-file configs/my.yaml --num-gpus 2 SOLVER.BASE_LR 0.01
"""

import sys

from heron.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
