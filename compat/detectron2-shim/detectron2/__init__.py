"""`detectron2`, provided by Heron: importing it makes every `detectron2.<sub>` resolve to
`heron.<sub>` (see heron/compat.py), then replaces itself with the `heron` package."""

import sys

import heron
import heron.compat

__heron_shim__ = True
heron.compat.alias_detectron2()
sys.modules[__name__] = heron
