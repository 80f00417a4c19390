"""Tests of heron/cli/predict.py: `heron predict` on images, a video and a webcam id, in
process through heron.cli.main.main, with the tiny untrained model of conftest.py."""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from heron.cli.main import main
from heron.data.catalog import DatasetCatalog


def _image_names(info):
    return sorted(n for n in os.listdir(info["image_root"]) if n.endswith((".jpg", ".png")))


@pytest.fixture()
def image_dir(tiny_shapes, tmp_path):
    """A folder with the first two shapes images (64x96) and a corrupt "broken.jpg"."""
    _, info = tiny_shapes
    folder = tmp_path / "images"
    folder.mkdir()
    for name in _image_names(info)[:2]:
        shutil.copy(os.path.join(info["image_root"], name), folder / name)
    (folder / "broken.jpg").write_bytes(b"this is not a jpeg")
    return folder


# Config overrides go last, after "--": three detections per image and a 32-pixel short side
# for the model input keep the tests fast (outputs are still in the 64x96 image size).
FAST = ["--", "TEST.DETECTIONS_PER_IMAGE", "3", "INPUT.MIN_SIZE_TEST", "32"]


def _predict(tiny_model, inputs, output, *extra):
    config, weights = tiny_model
    argv = ["predict", "--config-file", config, "--weights", weights, "--input", *inputs]
    return main([*argv, "--output", str(output), *extra, *FAST])


def _write_video(path, num_frames, size=(64, 96)):
    """A video of `num_frames` frames of (height, width) `size`, written with cv2."""
    import cv2

    height, width = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (width, height))
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    for _ in range(num_frames):
        writer.write(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    writer.release()


def _video_frames(path):
    """(frame count, (height, width) of the first frame) read back with cv2."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    shapes = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        shapes.append(frame.shape[:2])
    capture.release()
    return len(shapes), shapes[0] if shapes else None


def test_predict_directory_with_corrupt_file_draws_good_ones_and_exits_1(
    tiny_model, tiny_shapes, image_dir, tmp_path, capsys
):
    out = tmp_path / "out"
    code = _predict(tiny_model, [str(image_dir)], out, "--confidence-threshold", "0")
    assert code == 1
    err = capsys.readouterr().err
    assert "broken.jpg" in err
    assert "1 of 3 files failed" in err
    _, info = tiny_shapes
    good = _image_names(info)[:2]
    assert sorted(os.listdir(out)) == sorted(good)
    for name in good:
        with Image.open(out / name) as drawn, Image.open(image_dir / name) as raw:
            assert drawn.size == raw.size == (96, 64)  # PIL sizes are (width, height)


def test_predict_all_readable_exits_0_and_prints_summary(tiny_model, image_dir, tmp_path, capsys):
    os.remove(image_dir / "broken.jpg")
    code = _predict(tiny_model, [str(image_dir / "*.jpg")], tmp_path / "out")
    assert code == 0
    out = capsys.readouterr().out
    assert "images processed" in out and "seconds per image" in out


def test_predict_save_json_writes_coco_records_per_image(
    tiny_model, tiny_shapes, image_dir, tmp_path
):
    name, _ = tiny_shapes
    DatasetCatalog.get(name)  # loading sets thing_dataset_id_to_contiguous_id (ids 1..5)
    os.remove(image_dir / "broken.jpg")
    out = tmp_path / "out"
    code = _predict(tiny_model, [str(image_dir)], out, "--confidence-threshold", "0", "--save-json")
    assert code == 0
    records = json.loads((out / "predictions.json").read_text())
    assert records, "a model that keeps every detection (threshold 0) finds something"
    for r in records:
        assert set(r) >= {"image_id", "category_id", "bbox", "score", "segmentation", "file_name"}
        assert len(r["bbox"]) == 4 and r["bbox"][2] >= 0 and r["bbox"][3] >= 0
        assert r["category_id"] in {1, 2, 3, 4, 5}  # shapes dataset ids, not contiguous 0..4
        assert r["segmentation"]["size"] == [64, 96]
    files = {r["file_name"] for r in records}
    assert files == {str(p) for p in image_dir.iterdir()}
    assert len({r["image_id"] for r in records}) == 2


def _saved_scores(folder):
    return sorted(r["score"] for r in json.loads((folder / "predictions.json").read_text()))


def test_predict_confidence_threshold_keeps_exactly_the_higher_scores(
    tiny_model, image_dir, tmp_path
):
    os.remove(image_dir / "broken.jpg")
    code = _predict(
        tiny_model, [str(image_dir)], tmp_path / "all", "--save-json", "--confidence-threshold", "0"
    )
    assert code == 0
    all_scores = _saved_scores(tmp_path / "all")
    # a threshold halfway between two distinct middle scores, so no score equals it
    k = next(
        i for i in range(len(all_scores) // 2, len(all_scores)) if all_scores[i] > all_scores[i - 1]
    )
    threshold = (all_scores[k - 1] + all_scores[k]) / 2
    code = _predict(
        tiny_model,
        [str(image_dir)],
        tmp_path / "high",
        "--save-json",
        "--confidence-threshold",
        str(threshold),
    )
    assert code == 0
    scores = _saved_scores(tmp_path / "high")
    assert scores and min(scores) >= threshold
    # the detections above the threshold are those of the unthresholded run: a higher score
    # threshold only removes boxes (NMS keeps a box unless a higher-scoring one covers it, and
    # with at most 3 per image, every kept box of run 1 above the threshold is among run 2's)
    assert scores == pytest.approx([s for s in all_scores if s > threshold])


def test_predict_video_keeps_frame_count_and_size(tiny_model, tmp_path):
    pytest.importorskip("cv2")
    video = tmp_path / "clip.mp4"
    _write_video(video, num_frames=3)
    out = tmp_path / "out"
    assert _predict(tiny_model, [str(video)], out, "--batch-size", "2") == 0
    assert _video_frames(out / "clip.mp4") == (3, (64, 96))


def test_predict_video_max_frames_limits_frames(tiny_model, tmp_path):
    pytest.importorskip("cv2")
    video = tmp_path / "clip.avi"
    _write_video(video, num_frames=4)
    out = tmp_path / "out"
    assert _predict(tiny_model, [str(video)], out, "--max-frames", "2") == 0
    assert _video_frames(out / "clip.mp4") == (2, (64, 96))


def test_predict_missing_webcam_exits_2_naming_it(tiny_model, tmp_path, capsys):
    pytest.importorskip("cv2")
    code = _predict(tiny_model, ["97"], tmp_path / "out", "--max-frames", "1")
    assert code == 2
    assert "cannot open webcam 97" in capsys.readouterr().err


def test_predict_webcam_without_max_frames_exits_2(tiny_model, tmp_path, capsys):
    pytest.importorskip("cv2")
    assert _predict(tiny_model, ["0"], tmp_path / "out") == 2
    assert "--max-frames is required" in capsys.readouterr().err


def test_predict_video_without_cv2_exits_2_with_install_hint(
    tiny_model, tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes `import cv2` raise ImportError
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    assert _predict(tiny_model, [str(video)], tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "pip install opencv-python-headless" in err
    assert "Traceback" not in err


def test_predict_video_mixed_with_images_exits_2(tiny_model, image_dir, tmp_path, capsys):
    code = _predict(tiny_model, [str(image_dir), str(tmp_path / "clip.mp4")], tmp_path / "out")
    assert code == 2
    assert "must be the only --input" in capsys.readouterr().err


def test_predict_glob_without_matches_exits_2(tiny_model, tmp_path, capsys):
    assert _predict(tiny_model, [str(tmp_path / "*.png")], tmp_path / "out") == 2
    assert "matches no files" in capsys.readouterr().err


def test_predict_help_lists_key_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["predict", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for option in ("--input", "--output", "--confidence-threshold", "--save-json", "--max-frames"):
        assert option in text
