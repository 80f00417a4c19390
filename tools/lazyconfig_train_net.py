#!/usr/bin/env python
"""Train or evaluate a model from a Python lazy config: Detectron2's
tools/lazyconfig_train_net.py arguments, run through Heron (the same as `heron train-lazy`).

    python tools/lazyconfig_train_net.py --config-file configs/my.py train.max_iter=100
"""

import sys

from heron.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["train-lazy", *sys.argv[1:]]))
