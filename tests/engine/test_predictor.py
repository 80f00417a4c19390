"""Tests of heron/engine/predictor.py: DefaultPredictor and BatchPredictor with a small R-CNN
(random weights saved to a checkpoint) on small synthetic images."""

from __future__ import annotations

import logging
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from heron.checkpoint.detection_checkpoint import DetectionCheckpointer
from heron.data.catalog import MetadataCatalog
from heron.engine.predictor import BatchPredictor, DefaultPredictor
from heron.modeling import build_model

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "modeling"))
from rcnn_fixtures import small_rcnn_cfg

# Test-time resize of every test: short side 64, long side at most 128. A (48, 72) image
# scales by 64 / 48 to (64, 96); an (80, 40) image by 64 / 40 to (128, 64).
MIN_SIZE, MAX_SIZE = 64, 128


def _cfg(weights: str = "", input_format: str = "BGR"):
    cfg = small_rcnn_cfg()
    cfg.MODEL.WEIGHTS = weights
    cfg.INPUT.FORMAT = input_format
    cfg.INPUT.MIN_SIZE_TEST = MIN_SIZE
    cfg.INPUT.MAX_SIZE_TEST = MAX_SIZE
    return cfg


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(model, checkpoint path): a randomly initialized model in eval mode and its weights."""
    torch.manual_seed(0)
    model = build_model(_cfg()).eval()
    save_dir = tmp_path_factory.mktemp("ckpt")
    DetectionCheckpointer(model, str(save_dir), save_to_disk=True).save("model")
    return model, str(save_dir / "model.pth")


def _image(seed: int, height: int = 48, width: int = 72) -> np.ndarray:
    """A random (H, W, 3) uint8 BGR image."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _assert_same_outputs(actual: dict, expected: dict) -> None:
    a, e = actual["instances"], expected["instances"]
    assert a.image_size == e.image_size
    assert len(e) > 0  # random weights still detect: the comparison is not vacuous
    torch.testing.assert_close(a.pred_boxes.tensor, e.pred_boxes.tensor)
    torch.testing.assert_close(a.scores, e.scores)
    torch.testing.assert_close(a.pred_classes, e.pred_classes)


def _by_hand(model, bgr: np.ndarray, new_hw: tuple[int, int], rgb: bool = False) -> dict:
    """The model on ``bgr`` resized with PIL bilinear to ``new_hw``, output in original size."""
    image = bgr[:, :, ::-1] if rgb else bgr
    resized = np.asarray(
        Image.fromarray(np.ascontiguousarray(image)).resize(new_hw[::-1], Image.Resampling.BILINEAR)
    )
    tensor = torch.as_tensor(resized.astype(np.float32).transpose(2, 0, 1))
    with torch.no_grad():
        return model([{"image": tensor, "height": bgr.shape[0], "width": bgr.shape[1]}])[0]


# ---------------------------------------------------------------------- DefaultPredictor
def test_default_predictor_matches_model_on_resized_image_in_original_size(saved):
    model, weights = saved
    torch.manual_seed(123)  # the predictor's own init differs: only loading can match
    predictor = DefaultPredictor(_cfg(weights))
    assert not predictor.model.training
    image = _image(1)  # (48, 72) -> network input (64, 96)
    outputs = predictor(image)
    _assert_same_outputs(outputs, _by_hand(model, image, (64, 96)))

    instances = outputs["instances"]
    assert instances.image_size == (48, 72)
    boxes = instances.pred_boxes.tensor
    assert (boxes[:, 0::2] <= 72).all() and (boxes[:, 1::2] <= 48).all() and (boxes >= 0).all()


def test_default_predictor_boxes_are_network_boxes_scaled_to_original_size(saved):
    model, weights = saved
    predictor = DefaultPredictor(_cfg(weights))
    image = _image(2)
    resized = np.asarray(Image.fromarray(image).resize((96, 64), Image.Resampling.BILINEAR))
    tensor = torch.as_tensor(resized.astype(np.float32).transpose(2, 0, 1))
    with torch.no_grad():
        raw = model.inference([{"image": tensor}], do_postprocess=False)[0]
    outputs = predictor(image)["instances"]
    assert len(raw) > 0
    # network size (64, 96) -> original (48, 72): both axes scale by 48 / 64 = 72 / 96 = 0.75
    torch.testing.assert_close(outputs.pred_boxes.tensor, raw.pred_boxes.tensor * 0.75)


def test_rgb_predictor_flips_bgr_input(saved):
    model, weights = saved
    image = _image(3)
    rgb_predictor = DefaultPredictor(_cfg(weights, input_format="RGB"))
    bgr_predictor = DefaultPredictor(_cfg(weights, input_format="BGR"))
    assert rgb_predictor.input_format == "RGB"
    rgb_out = rgb_predictor(image)
    # The RGB model must see the channels reversed: exactly what a BGR predictor (no flip)
    # passes on when given the reversed image, and what the model gets by hand.
    _assert_same_outputs(rgb_out, bgr_predictor(np.ascontiguousarray(image[:, :, ::-1])))
    _assert_same_outputs(rgb_out, _by_hand(model, image, (64, 96), rgb=True))
    # ... and not what it would output on the unflipped image
    unflipped = bgr_predictor(image)["instances"]
    assert not torch.equal(rgb_out["instances"].scores, unflipped.scores)


def test_missing_weights_file_names_path_and_key(tmp_path):
    missing = str(tmp_path / "no_such_model.pth")
    with pytest.raises(FileNotFoundError, match=r"no_such_model\.pth.*Set MODEL\.WEIGHTS"):
        DefaultPredictor(_cfg(missing))


def test_empty_weights_warns_and_keeps_random_init():
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("heron.engine.predictor")
    log.addHandler(handler)
    try:
        predictor = DefaultPredictor(_cfg(""))
    finally:
        log.removeHandler(handler)
    assert any(r.levelno == logging.WARNING and "MODEL.WEIGHTS" in r.getMessage() for r in records)
    assert predictor(_image(4))["instances"].image_size == (48, 72)


def test_input_format_other_than_rgb_or_bgr_is_rejected():
    with pytest.raises(ValueError, match=r"INPUT\.FORMAT must be 'RGB' or 'BGR'.*'L'"):
        DefaultPredictor(_cfg(input_format="L"))


def test_metadata_comes_from_first_test_dataset():
    name = "test_predictor_metadata_ds"
    MetadataCatalog.get(name).set(thing_classes=["a", "b"])
    try:
        cfg = _cfg()
        cfg.DATASETS.TEST = (name,)
        assert DefaultPredictor(cfg).metadata.thing_classes == ["a", "b"]
    finally:
        MetadataCatalog.remove(name)
    assert DefaultPredictor(_cfg()).metadata is None  # DATASETS.TEST empty


def test_default_predictor_leaves_given_cfg_unchanged_and_rejects_non_image():
    cfg = _cfg()
    predictor = DefaultPredictor(cfg)
    assert predictor.cfg is not cfg
    with pytest.raises(ValueError, match=r"original_image must be an \(H, W, C\).*\(48, 72\)"):
        predictor(np.zeros((48, 72), dtype=np.uint8))


# ------------------------------------------------------------------------ BatchPredictor
def _in_float64(predictor):
    """Run the predictor's model in float64. Batched float32 convolutions may pick other
    kernels than single-image ones and round differently (measured on CPU: boxes differ by up
    to 5e-5 px, scores by 6e-6); in float64 that round-off vanishes below the comparison's
    tolerance, so equality then checks that batching changes nothing but rounding."""
    predictor.model.double()
    return predictor


def test_batch_predictor_equals_default_predictor_for_same_size_images(saved):
    _, weights = saved
    single = _in_float64(DefaultPredictor(_cfg(weights)))
    batched = _in_float64(BatchPredictor(_cfg(weights), batch_size=2))
    images = [_image(seed) for seed in (5, 6, 7)]  # batches of 2 and 1
    outputs = batched(images)
    assert len(outputs) == 3
    for image, output in zip(images, outputs):
        _assert_same_outputs(output, single(image))


def test_batch_predictor_with_batch_size_one_equals_default_predictor_for_mixed_sizes(saved):
    # Mixed sizes in one batch pad to the largest image and may change detections (see the
    # module docstring); one image per batch must not.
    _, weights = saved
    single = DefaultPredictor(_cfg(weights))
    batched = BatchPredictor(_cfg(weights), batch_size=1)
    images = [_image(8), _image(9, height=80, width=40)]
    outputs = batched(images)
    assert outputs[1]["instances"].image_size == (80, 40)
    for image, output in zip(images, outputs):
        _assert_same_outputs(output, single(image))


def test_batch_predictor_empty_list_and_bad_inputs():
    predictor = BatchPredictor(_cfg())
    assert predictor([]) == []
    with pytest.raises(TypeError, match=r"list of \(H, W, C\) arrays.*\(48, 72, 3\)"):
        predictor(_image(0))
    with pytest.raises(ValueError, match=r"images\[1\] must be an \(H, W, C\)"):
        predictor([_image(0), np.zeros((4, 4), dtype=np.uint8)])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"amp": "float32"}, r"amp must be False, True, 'float16' or 'bfloat16', got 'float32'"),
        ({"batch_size": 0}, r"batch_size must be a positive int, got 0"),
        ({"num_workers": -1}, r"num_workers must be an int >= 0, got -1"),
    ],
)
def test_batch_predictor_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BatchPredictor(_cfg(), **kwargs)


def test_bfloat16_autocast_on_cpu_returns_float32_outputs(saved):
    _, weights = saved
    predictor = BatchPredictor(_cfg(weights), amp="bfloat16")
    instances = predictor([_image(10), _image(11)])[1]["instances"]
    assert len(instances) > 0
    assert instances.pred_boxes.tensor.dtype == torch.float32
    assert instances.scores.dtype == torch.float32
    assert instances.image_size == (48, 72)


def _write_png(path, bgr: np.ndarray) -> None:
    Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1])).save(path)  # PNG stores RGB


def test_predict_paths_over_directory_yields_in_order_and_counts_failures(saved, tmp_path):
    _, weights = saved
    images = {"a.png": _image(12), "c.PNG": _image(13, height=80, width=40)}
    for name, image in images.items():
        _write_png(tmp_path / name, image)
    (tmp_path / "b_broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (tmp_path / "notes.txt").write_text("not an image")  # not an image extension: skipped
    # batches [a, b_broken] and [c]: each forward holds one readable image
    predictor = BatchPredictor(_cfg(weights), batch_size=2)
    results = list(predictor.predict_paths(str(tmp_path)))

    names = [os.path.basename(path) for path, _ in results]
    assert names == ["a.png", "b_broken.jpg", "c.PNG"]  # sorted by name
    assert results[1][1] is None
    assert len(predictor.failures) == 1
    assert predictor.failures[0][0] == str(tmp_path / "b_broken.jpg")
    assert "b_broken.jpg" in predictor.failures[0][1]
    single = DefaultPredictor(_cfg(weights))
    # PNG is lossless, so the files decode to the arrays written
    _assert_same_outputs(results[0][1], single(images["a.png"]))
    _assert_same_outputs(results[2][1], single(images["c.PNG"]))


def test_predict_paths_with_two_workers_keeps_input_order(saved, tmp_path):
    _, weights = saved
    images = [_image(14), _image(15), _image(16)]
    paths = []
    for i, image in enumerate(images):
        paths.append(str(tmp_path / f"{2 - i}.png"))  # names sort opposite to the input order
        _write_png(paths[-1], image)
    missing = str(tmp_path / "missing.jpg")
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    # batches [0, missing, 1] and [text, 2]: images 0 and 1 share a forward
    predictor = _in_float64(BatchPredictor(_cfg(weights), batch_size=3, num_workers=2))
    results = list(predictor.predict_paths([paths[0], missing, paths[1], text, paths[2]]))

    assert [path for path, _ in results] == [paths[0], missing, paths[1], str(text), paths[2]]
    assert results[1][1] is None and results[3][1] is None
    assert [path for path, _ in predictor.failures] == [missing, str(text)]
    single = _in_float64(DefaultPredictor(_cfg(weights)))
    for image, (_, output) in zip(images, [results[0], results[2], results[4]]):
        _assert_same_outputs(output, single(image))


def test_predict_paths_rejects_directory_without_images(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    predictor = BatchPredictor(_cfg())
    with pytest.raises(ValueError, match=r"holds no image files"):
        list(predictor.predict_paths(tmp_path))
