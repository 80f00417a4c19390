from types import SimpleNamespace

import numpy as np
import pytest
import torch

from heron.structures.boxes import Boxes
from heron.structures.instances import Instances
from heron.utils.colormap import random_color
from heron.utils.video_visualizer import VideoVisualizer
from heron.utils.visualizer import ColorMode

META = SimpleNamespace(thing_classes=["a", "b"])


def frame():
    return np.zeros((100, 100, 3), dtype=np.uint8)


def preds(boxes, classes):
    inst = Instances((100, 100))
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
    return inst


def tracked_colors(vv):
    return [tuple(np.round(o.color, 6)) for o in vv._old_instances]


def test_same_object_keeps_its_color_and_a_new_object_gets_a_new_draw():
    np.random.seed(0)
    first = random_color(rgb=True, maximum=1)
    second = random_color(rgb=True, maximum=1)
    assert not np.allclose(first, second)  # seed 0 gives two different table colors
    np.random.seed(0)
    vv = VideoVisualizer(META)
    out1 = vv.draw_instance_predictions(frame(), preds([[10, 10, 50, 50]], [0])).get_image()
    # moved by 2 px: IoU = 38 * 40 / (2 * 1600 - 1520) = 0.905 > 0.6
    out2 = vv.draw_instance_predictions(
        frame(), preds([[12, 10, 52, 50], [60, 60, 90, 90]], [0, 1])
    ).get_image()
    np.testing.assert_allclose(vv._old_instances[0].color, first)
    np.testing.assert_allclose(vv._old_instances[1].color, second)
    # the bottom edge (y = 50) of the tracked box is drawn in the same color in both frames
    np.testing.assert_array_equal(out1[50, 30], out2[50, 32])
    assert out1[50, 30].any()


def test_different_class_does_not_inherit_a_color():
    np.random.seed(1)
    expected = [random_color(rgb=True, maximum=1) for _ in range(2)]
    np.random.seed(1)
    vv = VideoVisualizer(META)
    vv.draw_instance_predictions(frame(), preds([[10, 10, 50, 50]], [0]))
    vv.draw_instance_predictions(frame(), preds([[10, 10, 50, 50]], [1]))
    np.testing.assert_allclose(vv._old_instances[0].color, expected[1])


def test_low_iou_does_not_inherit_a_color():
    vv = VideoVisualizer(META)
    vv.draw_instance_predictions(frame(), preds([[10, 10, 50, 50]], [0]))
    old = vv._old_instances[0]
    # shifted by 20 px: IoU = 20 * 40 / (3200 - 800) = 1/3 < 0.6
    vv.draw_instance_predictions(frame(), preds([[30, 10, 70, 50]], [0]))
    assert vv._old_instances[0] is not old
    assert vv._old_instances[1] is old and old.ttl == 7  # kept, one frame used up


@pytest.mark.parametrize(("missed", "kept"), [(7, True), (8, False)])
def test_missed_object_keeps_its_color_for_ttl_frames(missed, kept):
    vv = VideoVisualizer(META)
    vv.draw_instance_predictions(frame(), preds([[10, 10, 50, 50]], [0]))
    color = vv._old_instances[0].color
    for _ in range(missed):  # frames with only a far-away object of the other class
        vv._assign_colors(vv._detect(np.array([1]), np.array([[80.0, 80, 95, 95]]), None, 1))
    np.random.seed(123)
    colors = vv._assign_colors(vv._detect(np.array([0]), np.array([[10.0, 10, 50, 50]]), None, 1))
    np.random.seed(123)
    fresh = random_color(rgb=True, maximum=1)
    np.testing.assert_allclose(colors[0], color if kept else fresh)


def test_empty_predictions_return_the_frame_unchanged():
    vv = VideoVisualizer(META)
    out = vv.draw_instance_predictions(frame(), preds(np.zeros((0, 4)), []))
    assert (out.get_image() == 0).all() and vv._old_instances == []


def test_panoptic_things_keep_colors_by_mask_iou():
    meta = SimpleNamespace(thing_classes=["a"], stuff_classes=["s"], stuff_colors=[[0, 0, 0]])
    info = [{"id": 1, "category_id": 0, "isthing": True}]
    vv = VideoVisualizer(meta)
    pan = torch.zeros(100, 100, dtype=torch.int64)
    pan[20:70, 20:70] = 1
    out1 = vv.draw_panoptic_seg_predictions(frame(), pan, info).get_image()
    pan2 = torch.zeros(100, 100, dtype=torch.int64)
    pan2[22:72, 20:70] = 1  # mask IoU = 48 / 52 = 0.92 > 0.5
    out2 = vv.draw_panoptic_seg_predictions(frame(), pan2, info).get_image()
    assert len(vv._old_instances) == 1
    np.testing.assert_array_equal(out1[30, 30], out2[32, 30])  # same fill color
    assert out1[30, 30].any()


def test_draw_sem_seg_on_a_frame_uses_stuff_colors():
    meta = SimpleNamespace(stuff_classes=["s"], stuff_colors=[[255, 0, 0]])
    out = VideoVisualizer(meta).draw_sem_seg(frame(), np.zeros((100, 100), int)).get_image()
    assert abs(int(out[5, 5, 0]) - 204) <= 1  # alpha 0.8: 0.8 * 255 = 204


def test_video_visualizer_rejects_segmentation_mode():
    with pytest.raises(ValueError, match="instance_mode"):
        VideoVisualizer(META, instance_mode=ColorMode.SEGMENTATION)


def test_masks_without_boxes_match_by_mask_iou_and_image_bw_greys_the_rest():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)
    vv = VideoVisualizer(SimpleNamespace(), instance_mode=ColorMode.IMAGE_BW)
    colors = []
    for shift in (0, 3):  # mask IoU = 37 / 43 = 0.86 > 0.5
        inst = Instances((100, 100))
        masks = torch.zeros(1, 100, 100, dtype=torch.bool)
        masks[0, 10 + shift : 50 + shift, 10:50] = True
        inst.pred_masks = masks
        out = vv.draw_instance_predictions(img, inst).get_image()
        colors.append(vv._old_instances[0].color)
        far = out[70:, 70:]
        assert (far[..., 0] == far[..., 1]).all() and (far[..., 1] == far[..., 2]).all()
    assert len(vv._old_instances) == 1
    np.testing.assert_allclose(colors[0], colors[1])


def test_color_field_from_a_tracker_overrides_matching():
    inst = preds([[10, 10, 50, 50]], [0])
    inst.COLOR = [(0.0, 1.0, 0.0)]
    vv = VideoVisualizer(META)
    out = vv.draw_instance_predictions(frame(), inst).get_image()
    assert abs(int(out[50, 30, 1]) - 127.5) <= 1  # box edge at alpha 0.5
    assert out[50, 30, 0] == 0 and out[50, 30, 2] == 0
    assert vv._old_instances == []  # no matching state was touched
