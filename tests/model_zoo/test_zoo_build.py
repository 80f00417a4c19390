"""Every shipped zoo config builds its model on the CPU, and the model runs one inference on
a small image (random weights) and returns the outputs its meta-architecture promises."""

from __future__ import annotations

import pytest
import torch

from heron.model_zoo import get_config, list_config_files
from heron.modeling import build_model
from heron.structures import Boxes, Instances

YAML_CONFIGS = [n for n in list_config_files() if n.endswith(".yaml")]
HEIGHT, WIDTH = 64, 96

# meta-architecture -> the keys of each per-image output
OUTPUT_KEYS = {
    "GeneralizedRCNN": {"instances"},
    "RetinaNet": {"instances"},
    "FCOS": {"instances"},
    "ProposalNetwork": {"proposals"},
    "SemanticSegmentor": {"sem_seg"},
    "PanopticFPN": {"instances", "sem_seg", "panoptic_seg"},
}


def _input(cfg) -> dict:
    g = torch.Generator().manual_seed(0)
    record = {"image": torch.rand(3, HEIGHT, WIDTH, generator=g) * 255, "height": 48, "width": 72}
    if cfg.MODEL.PROPOSAL_GENERATOR.NAME == "PrecomputedProposals":
        proposals = Instances((HEIGHT, WIDTH))
        proposals.proposal_boxes = Boxes(torch.tensor([[4.0, 4, 40, 30], [20, 10, 90, 60]]))
        proposals.objectness_logits = torch.tensor([1.0, 0.5])
        record["proposals"] = proposals
    return record


@pytest.mark.parametrize("name", YAML_CONFIGS)
def test_every_shipped_config_builds_and_runs(name):
    cfg = get_config(name)
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        (output,) = model([_input(cfg)])
    assert set(output) == OUTPUT_KEYS[cfg.MODEL.META_ARCHITECTURE]
    if "instances" in output:
        assert output["instances"].image_size == (48, 72)  # rescaled to height x width
    if "proposals" in output:
        assert output["proposals"].image_size == (48, 72)
    if "sem_seg" in output:
        assert output["sem_seg"].shape == (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 48, 72)
    if "panoptic_seg" in output:
        panoptic, segments = output["panoptic_seg"]
        assert panoptic.shape == (48, 72) and isinstance(segments, list)
