"""Pixel checks of the visualizer on small drawings.

Blends are checked to +-1: Agg composites in 8 bits, so a value like 127.5 lands on 127 or
128. Raster overlays (masks with holes, soft masks) are checked to +-2: matplotlib first
stores their alpha in 8 bits (0.5 -> 127/255) and then composites, so 127.5 lands on 126. Opaque and untouched pixels are checked exactly. Interior pixels are taken at least two
pixels from an outline, which is at most ~1.4 px wide for these sizes.
"""

from types import SimpleNamespace

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image

from heron.structures.boxes import Boxes
from heron.structures.instances import Instances
from heron.utils.colormap import random_color
from heron.utils.visualizer import ColorMode, GenericMask, Visualizer
from heron.utils.visualizer_inputs import _create_text_labels, connected_components


def black(h=100, w=100):
    return np.zeros((h, w, 3), dtype=np.uint8)


def grey(value=100, h=100, w=100):
    return np.full((h, w, 3), value, dtype=np.uint8)


def assert_near(actual, expected, tol=1):
    diff = np.abs(np.asarray(actual, dtype=np.int64) - np.asarray(expected, dtype=np.float64))
    assert (diff <= tol).all(), f"{actual} vs {expected}"


def test_get_image_without_drawings_returns_the_input_exactly():
    img = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    out = Visualizer(img).output.get_image()
    assert out.shape == (37, 53, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, img)


def test_scale_multiplies_the_output_size():
    out = Visualizer(black(30, 40), scale=2.0).draw_box((5, 5, 20, 20)).get_image()
    assert out.shape == (60, 80, 3)


def test_visualizer_rejects_a_non_rgb_image():
    with pytest.raises(ValueError, match=r"\(H, W, 3\).*\(10, 10\)"):
        Visualizer(np.zeros((10, 10)))


def test_default_font_size_is_max_of_sqrt_area_over_90_and_10_over_scale():
    assert Visualizer(black(100, 100))._default_font_size == 10  # max(100 // 90, 10)
    assert Visualizer(black(10, 10), scale=0.5)._default_font_size == 20  # 10 // 0.5
    # sqrt(20 * 60000) = 1095.4; 1095.4 // 90 = 12
    assert Visualizer(black(20, 60000))._default_font_size == 12


def test_draw_box_outlines_in_color_at_half_opacity_and_leaves_the_inside():
    out = Visualizer(black()).draw_box((20, 20, 80, 80), edge_color=(1.0, 0, 0)).get_image()
    # line width max(10 / 4, 1) = 2.5 pt = 3.5 px around x = 20; alpha 0.5 of 255 = 127.5
    for row, col in [(50, 20), (20, 50), (50, 80), (80, 50)]:
        assert_near(out[row, col], [127.5, 0, 0])
    assert (out[25:76, 25:76] == 0).all()  # inside
    assert (out[:15] == 0).all() and (out[86:] == 0).all()  # outside


def test_draw_binary_mask_blends_color_with_alpha():
    mask = np.zeros((100, 100), dtype=np.uint8)
    mask[30:60, 20:70] = 1
    out = Visualizer(grey(100)).draw_binary_mask(mask, color=(1.0, 0, 0), alpha=0.8).get_image()
    # 0.2 * 100 + 0.8 * 255 = 224 (red); 0.2 * 100 = 20 (green, blue)
    assert_near(out[32:58, 22:68], np.broadcast_to([224, 20, 20], (26, 46, 3)))
    assert (out[:27] == 100).all() and (out[63:] == 100).all()
    assert (out[:, :17] == 100).all() and (out[:, 73:] == 100).all()


def test_draw_binary_mask_with_a_hole_leaves_the_hole():
    mask = np.zeros((60, 60), dtype=np.uint8)
    mask[10:50, 10:50] = 1
    mask[25:35, 25:35] = 0
    out = Visualizer(black(60, 60)).draw_binary_mask(mask, color=(0, 0, 1.0)).get_image()
    assert_near(out[15, 15], [0, 0, 127.5], tol=2)  # 0.5 * 255, raster path
    assert (out[28:32, 28:32] == 0).all()  # the hole is not painted


def test_draw_binary_mask_skips_components_below_area_threshold():
    mask = np.zeros((40, 40), dtype=np.uint8)
    mask[5:7, 5:7] = 1  # 4 pixels < default threshold 10
    out = Visualizer(black(40, 40)).draw_binary_mask(mask, color=(1.0, 0, 0)).get_image()
    assert (out == 0).all()


def test_draw_soft_mask_scales_opacity_by_mask_value():
    soft = np.zeros((20, 20), dtype=np.float32)
    soft[5:15, 5:15] = 0.5
    out = Visualizer(black(20, 20)).draw_soft_mask(soft, color=(0, 1.0, 0), alpha=1.0).get_image()
    assert_near(out[5:15, 5:15, 1], np.full((10, 10), 127.5), tol=2)  # 0.5 * 1.0 * 255
    assert (out[:5] == 0).all() and (out[15:] == 0).all()


def test_draw_text_marks_pixels_below_its_anchor_only():
    out = Visualizer(grey(128)).draw_text("Hello", (50, 30), color=(1.0, 1.0, 1.0)).get_image()
    changed = (out != 128).any(axis=2)
    assert changed[30:45, 35:65].sum() > 50  # text and its dark box hang below y = 30
    assert not changed[:25].any() and not changed[55:].any()
    assert changed.any(axis=0)[40:60].all()  # centered on x = 50


def test_draw_circle_fills_radius_3():
    out = Visualizer(black(30, 30)).draw_circle((15, 15), color=(0, 0, 1.0)).get_image()
    np.testing.assert_array_equal(out[14:16, 14:16], np.broadcast_to([0, 0, 255], (2, 2, 3)))
    assert (out[:, :10] == 0).all() and (out[:, 20:] == 0).all()


def test_draw_line_paints_between_its_points():
    out = Visualizer(black(40, 40)).draw_line([5, 35], [20, 20], color=(1.0, 0, 0)).get_image()
    np.testing.assert_array_equal(out[20, 10:30], np.broadcast_to([255, 0, 0], (20, 3)))
    assert (out[:15] == 0).all() and (out[26:] == 0).all()


def test_draw_rotated_box_at_90_degrees_is_upright():
    vis = Visualizer(black())
    # (cx, cy, w, h, angle) = (50, 50, 40, 20, 90): x in [40, 60], y in [30, 70]
    out = vis.draw_rotated_box_with_label((50, 50, 40, 20, 90), edge_color=(0, 1.0, 0)).get_image()
    assert out[50, 60, 1] == 255  # right edge, solid, opaque
    assert out[30, 50, 1] == 255 and out[70, 50, 1] == 255  # top and bottom edges
    assert (out[35:66, 44:57] == 0).all()  # inside
    assert (out[:, 65:] == 0).all() and (out[:25] == 0).all()


def test_overlay_instances_routes_five_column_boxes_to_rotated_drawing():
    boxes = np.array([[50.0, 50.0, 40.0, 20.0, 0.0]])  # x in [30, 70], y in [40, 60]
    out = Visualizer(black()).overlay_instances(boxes=boxes, assigned_colors=[(1.0, 0, 0)])
    img = out.get_image()
    assert img[60, 50, 0] == 255 and img[50, 30, 0] == 255
    assert (img[45:56, 35:66] == 0).all()


def test_keypoints_circles_and_connection_lines_follow_metadata():
    meta = SimpleNamespace(
        keypoint_names=["a", "b", "c", "d"],
        keypoint_connection_rules=[("a", "b", (0, 255, 0)), ("a", "d", (0, 0, 255))],
    )
    kpts = np.array([[20, 50, 1.0], [80, 50, 0.9], [50, 85, 1.0], [20, 15, 0.01]])
    out = Visualizer(black(), meta).draw_and_connect_keypoints(kpts).get_image()
    np.testing.assert_array_equal(out[50, 30:70], np.broadcast_to([0, 255, 0], (40, 3)))  # a-b
    np.testing.assert_array_equal(out[85, 50], [255, 0, 0])  # c: red circle, no line
    # d scores 0.01 < 0.05: no circle, so no a-d line either
    assert (out[5:40] == 0).all()


def test_draw_sem_seg_blends_each_class_with_its_stuff_color():
    meta = SimpleNamespace(stuff_classes=["a", "b"], stuff_colors=[[255, 0, 0], [0, 0, 255]])
    sem = np.zeros((100, 100), dtype=np.int64)
    sem[:, 50:] = 1
    sem[80:] = 255  # ignore label: not drawn
    out = Visualizer(grey(100), meta).draw_sem_seg(torch.from_numpy(sem)).get_image()
    # alpha 0.8: 0.2 * 100 + 0.8 * 255 = 224, 0.2 * 100 = 20
    assert_near(out[3:12, 3:47], np.broadcast_to([224, 20, 20], (9, 44, 3)))
    assert_near(out[3:12, 53:97], np.broadcast_to([20, 20, 224], (9, 44, 3)))
    assert (out[83:] == 100).all()


def test_draw_sem_seg_needs_stuff_classes():
    with pytest.raises(KeyError, match="stuff_classes"):
        Visualizer(black(10, 10), SimpleNamespace()).draw_sem_seg(np.zeros((10, 10), int))


def test_draw_panoptic_seg_draws_stuff_then_things_and_leaves_void():
    meta = SimpleNamespace(stuff_classes=["sky"], stuff_colors=[[255, 0, 0]], thing_classes=["o"])
    pan = np.zeros((100, 100), dtype=np.int64)  # id 0: not in segments_info (void)
    pan[:50] = 1
    pan[60:90, 30:70] = 2
    info = [
        {"id": 1, "category_id": 0, "isthing": False},
        {"id": 2, "category_id": 0, "isthing": True},
    ]
    np.random.seed(5)
    thing_color = random_color(rgb=True, maximum=1)  # the draw the visualizer will make
    np.random.seed(5)
    out = Visualizer(grey(100), meta).draw_panoptic_seg(torch.from_numpy(pan), info).get_image()
    # alpha 0.7: 0.3 * 100 + 0.7 * 255 = 208.5 red, 0.3 * 100 = 30 others
    assert_near(out[3:12, 3:97], np.broadcast_to([208.5, 30, 30], (9, 94, 3)))
    expected_thing = 0.3 * 100 + 0.7 * 255 * np.asarray(thing_color)
    assert_near(out[63, 35:65], np.broadcast_to(expected_thing, (30, 3)))
    # void pixels stay; the thing's label hangs below it (height 30 < 40), centered on x = 30
    assert (out[53:57] == 100).all() and (out[60:, :15] == 100).all()


def test_instance_predictions_draw_boxes_masks_and_labels():
    inst = Instances((100, 100))
    inst.pred_boxes = Boxes(torch.tensor([[10.0, 10.0, 60.0, 60.0]]))
    inst.scores = torch.tensor([0.876])
    inst.pred_classes = torch.tensor([0])
    masks = torch.zeros(1, 100, 100, dtype=torch.bool)
    masks[0, 20:50, 20:50] = True
    inst.pred_masks = masks
    out = Visualizer(black(), SimpleNamespace(thing_classes=["cat"])).draw_instance_predictions(
        inst
    )
    img = out.get_image()
    assert (img[25:45, 25:45] > 0).any(axis=2).all()  # translucent mask fill
    assert (img[75:] == 0).all() and (img[:, 75:] == 0).all()
    assert _create_text_labels([0], [0.876], ["cat"]) == ["cat 88%"]


def test_instance_predictions_with_no_instances_leave_the_image():
    inst = Instances((20, 20))
    inst.pred_boxes = Boxes(torch.zeros(0, 4))
    inst.scores = torch.zeros(0)
    inst.pred_classes = torch.zeros(0, dtype=torch.int64)
    out = Visualizer(grey(50, 20, 20)).draw_instance_predictions(inst).get_image()
    assert (out == 50).all()


def test_image_bw_greys_pixels_outside_masks():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)
    inst = Instances((80, 80))
    masks = torch.zeros(1, 80, 80, dtype=torch.bool)
    masks[0, 5:25, 5:25] = True
    inst.pred_masks = masks
    vis = Visualizer(img, SimpleNamespace(), instance_mode=ColorMode.IMAGE_BW)
    out = vis.draw_instance_predictions(inst).get_image()
    far = out[40:, 40:].astype(np.int64)
    assert (far[..., 0] == far[..., 1]).all() and (far[..., 1] == far[..., 2]).all()
    # grey value: channel mean, truncated to uint8
    expected = img[40:, 40:].astype(np.float32).mean(axis=2).astype(np.uint8)
    np.testing.assert_array_equal(far[..., 0], expected)
    inside = out[8:12, 8:12].astype(np.int64)
    assert (inside[..., 0] != inside[..., 1]).any()  # colors kept under the mask


def test_overlay_instances_names_a_count_mismatch():
    with pytest.raises(ValueError, match="labels has 2 entries, expected 1"):
        Visualizer(black(20, 20)).overlay_instances(boxes=[[1, 1, 5, 5]], labels=["a", "b"])


def test_save_writes_a_decodable_png(tmp_path):
    path = tmp_path / "vis.png"
    Visualizer(black(30, 40)).draw_box((5, 5, 20, 20)).save(str(path))
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (40, 30)


def test_generic_mask_round_trips_mask_polygons_and_rle():
    mask = np.zeros((50, 60), dtype=np.uint8)
    mask[10:30, 20:45] = 1
    gm = GenericMask(mask, 50, 60)
    assert not gm.has_holes and len(gm.polygons) == 1
    back = GenericMask(gm.polygons, 50, 60)
    np.testing.assert_array_equal(back.mask, mask)
    assert back.area() == 20 * 25
    np.testing.assert_allclose(back.bbox(), [20, 10, 45, 30])  # XYXY of the pixel extent
    rle = mask_util.encode(np.asfortranarray(mask))
    np.testing.assert_array_equal(GenericMask(rle, 50, 60).mask, mask)
    rle_str = {"size": rle["size"], "counts": rle["counts"].decode()}
    np.testing.assert_array_equal(GenericMask(rle_str, 50, 60).mask, mask)


def test_generic_mask_reports_holes_and_rejects_bad_input():
    mask = np.zeros((20, 20), dtype=np.uint8)
    mask[2:18, 2:18] = 1
    mask[8:12, 8:12] = 0
    assert GenericMask(mask, 20, 20).has_holes
    assert GenericMask(np.zeros((20, 20)), 20, 20).polygons == []
    with pytest.raises(ValueError, match=r"shape \(20, 20\) does not match.*\(10, 10\)"):
        GenericMask(mask, 10, 10)
    with pytest.raises(ValueError, match="RLE size"):
        GenericMask({"size": [5, 5], "counts": [25]}, 10, 10)
    with pytest.raises(TypeError, match="got int"):
        GenericMask(3, 10, 10)


def test_connected_components_matches_scipy_with_8_connectivity():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(2)
    for _ in range(20):
        mask = rng.random((17, 23)) < 0.4
        num, labels, areas = connected_components(mask)
        ref, ref_num = ndimage.label(mask, structure=np.ones((3, 3)))
        assert num == ref_num + 1
        # same partition: labels correspond one to one
        pairs = {(a, b) for a, b in zip(labels.ravel(), ref.ravel())}
        assert len(pairs) == num
        assert areas.sum() == mask.size and areas[1:].sum() == mask.sum()


def test_draw_dataset_dict_changes_pixels_only_near_annotations(tmp_path):
    from heron.data.datasets.coco import load_coco_json
    from heron.data.datasets.shapes import generate_shapes_dataset
    from heron.data.detection_utils import read_image

    info = generate_shapes_dataset(str(tmp_path), num_images=2, image_size=(64, 64))
    records = load_coco_json(info["json_file"], info["image_root"])
    for dic in records:
        img = read_image(dic["file_name"], format="RGB")
        # No class names: labels are single digits, about 8 x 14 px below the box.
        out = Visualizer(img, SimpleNamespace()).draw_dataset_dict(dic).get_image()
        near = np.zeros((64, 64), dtype=bool)
        for anno in dic["annotations"]:
            x, y, w, h = anno["bbox"]  # XYWH_ABS from the COCO loader
            x0, y0, x1, y1 = int(x) - 4, int(y) - 4, int(np.ceil(x + w)) + 4, int(np.ceil(y + h))
            near[max(y0, 0) : y1 + 4, max(x0, 0) : x1] = True
            near[max(y1 - 4, 0) : y1 + 20, max(x0, 0) : x0 + 24] = True  # label text
            assert (
                out[int(y) + 1 : int(y + h), int(x) + 1 : int(x + w)]
                != img[int(y) + 1 : int(y + h), int(x) + 1 : int(x + w)]
            ).any()
        changed = (out != img).any(axis=2)
        assert not changed[~near].any()


def test_segmentation_mode_fills_masks_with_jittered_thing_colors_at_alpha_08():
    inst = Instances((60, 60))
    masks = torch.zeros(1, 60, 60, dtype=torch.bool)
    masks[0, 10:50, 10:50] = True
    inst.pred_masks = masks
    inst.pred_classes = torch.tensor([0])
    meta = SimpleNamespace(thing_classes=["x"], thing_colors=[[0, 0, 0]])
    vis = Visualizer(black(60, 60), meta, instance_mode=ColorMode.SEGMENTATION)
    pixel = vis.draw_instance_predictions(inst).get_image()[14, 14].astype(np.float64)
    # jitter adds a positive vector of norm 0.5 to black; the fill shows 0.8 of it
    jittered = pixel / (0.8 * 255)
    assert (jittered > 0).all()
    assert abs(np.linalg.norm(jittered) - 0.5) < 0.02  # 8-bit steps of 1 / 204


def test_metadata_none_labels_instances_by_class_index():
    vis = Visualizer(black(20, 20))
    assert vis.metadata.get("thing_classes") is None
    assert _create_text_labels([3], None, None, is_crowd=[1]) == ["3|crowd"]
    assert _create_text_labels(None, [0.5], None) == ["50%"]


def test_draw_panoptic_seg_without_segments_info_uses_label_divisor():
    meta = SimpleNamespace(
        stuff_classes=["s", "t"],
        stuff_colors=[[0, 0, 0], [0, 255, 0]],
        thing_classes=["t"],
        thing_dataset_id_to_contiguous_id={0: 0},
        label_divisor=1000,
    )
    pan = np.full((40, 40), 1000, dtype=np.int64)  # category 1 = stuff "t"
    pan[:, 30:] = -1  # void
    out = Visualizer(black(40, 40), meta).draw_panoptic_seg(pan, None).get_image()
    assert_near(out[3, 3:27, 1], np.full(24, 0.7 * 255))  # 178.5
    assert (out[:, 33:] == 0).all()


def test_draw_dataset_dict_reads_sem_seg_and_panoptic_pngs(tmp_path):
    meta = SimpleNamespace(stuff_classes=["s"], stuff_colors=[[255, 0, 0]], thing_classes=["o"])
    sem = np.full((40, 40), 255, dtype=np.uint8)
    sem[:, :20] = 0
    Image.fromarray(sem).save(tmp_path / "sem.png")
    out = Visualizer(black(40, 40), meta).draw_dataset_dict(
        {"sem_seg_file_name": str(tmp_path / "sem.png")}
    )
    img = out.get_image()
    assert_near(img[3, 3:17, 0], np.full(14, 127.5))  # alpha 0.5
    assert (img[:, 23:] == 0).all()

    rgb = np.zeros((40, 40, 3), dtype=np.uint8)
    rgb[:, 20:] = [4, 1, 0]  # id = 4 + 256 * 1 = 260
    Image.fromarray(rgb).save(tmp_path / "pan.png")
    dic = {
        "pan_seg_file_name": str(tmp_path / "pan.png"),
        "segments_info": [{"id": 260, "category_id": 0, "isthing": False}],
    }
    img = Visualizer(black(40, 40), meta).draw_dataset_dict(dic).get_image()
    assert_near(img[3, 23:37, 0], np.full(14, 127.5))
    assert (img[:, :17] == 0).all()


def test_instance_keypoints_are_drawn_from_a_keypoints_field():
    from heron.structures.keypoints import Keypoints

    inst = Instances((50, 50))
    inst.pred_keypoints = Keypoints(torch.tensor([[[25.0, 25.0, 1.0]]]))
    out = Visualizer(black(50, 50), SimpleNamespace()).draw_instance_predictions(inst)
    img = out.get_image()
    np.testing.assert_array_equal(img[25, 25], [255, 0, 0])
    assert (img[:18] == 0).all() and (img[33:] == 0).all()
