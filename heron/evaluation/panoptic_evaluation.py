"""COCO panoptic evaluation: panoptic quality of a model's ``panoptic_seg`` outputs."""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import tempfile
from collections import OrderedDict
from typing import Any

import numpy as np
from PIL import Image
from tabulate import tabulate

from heron.data.catalog import MetadataCatalog
from heron.evaluation.evaluator import DatasetEvaluator
from heron.evaluation.panoptic_quality import id2rgb, pq_compute
from heron.utils import comm
from heron.utils.file_io import PathManager

__all__ = ["COCOPanopticEvaluator"]

logger = logging.getLogger(__name__)


class COCOPanopticEvaluator(DatasetEvaluator):
    """Evaluates panoptic quality (PQ, SQ, RQ) on a COCO-panoptic-format dataset.

    Every prediction becomes an RGB PNG plus a json record in the COCO panoptic results
    format, and :func:`heron.evaluation.panoptic_quality.pq_compute` compares them with the
    dataset's ``panoptic_json`` / ``panoptic_root``. ``evaluate`` synchronizes, so every
    process must call it.
    """

    def __init__(self, dataset_name: str, output_dir: str | None = None) -> None:
        """
        Args:
            dataset_name: a registered dataset whose metadata has ``panoptic_json``,
                ``panoptic_root`` and the thing/stuff ``*_dataset_id_to_contiguous_id`` maps.
            output_dir: where to keep ``predictions.json``; None keeps nothing.
        """
        self._metadata = MetadataCatalog.get(dataset_name)
        self._dataset_name = dataset_name
        for key in ("thing_dataset_id_to_contiguous_id", "stuff_dataset_id_to_contiguous_id"):
            if self._metadata.get(key) is None:
                raise KeyError(f"metadata of dataset {dataset_name!r} has no {key!r}")
        self._thing_contiguous_id_to_dataset_id = {
            v: k for k, v in self._metadata.thing_dataset_id_to_contiguous_id.items()
        }
        self._stuff_contiguous_id_to_dataset_id = {
            v: k for k, v in self._metadata.stuff_dataset_id_to_contiguous_id.items()
        }
        self._output_dir = output_dir
        if output_dir is not None:
            PathManager.mkdirs(output_dir)
        self._predictions: list[dict[str, Any]] = []

    def reset(self) -> None:
        self._predictions = []

    def _convert_category_id(self, segment_info: dict[str, Any]) -> dict[str, Any]:
        """Map a segment's contiguous category id back to the dataset id; drop "isthing".

        A segment without "isthing" is taken to hold a dataset category id already.
        """
        segment_info = dict(segment_info)
        isthing = segment_info.pop("isthing", None)
        if isthing is None:
            return segment_info
        id_map = (
            self._thing_contiguous_id_to_dataset_id
            if isthing
            else self._stuff_contiguous_id_to_dataset_id
        )
        category_id = segment_info["category_id"]
        if category_id not in id_map:
            kind = "thing" if isthing else "stuff"
            raise KeyError(
                f"segment {segment_info.get('id')!r} has {kind} category_id {category_id!r}, "
                f"which is not a contiguous {kind} id of dataset {self._dataset_name!r} "
                f"(known: {sorted(id_map)})"
            )
        segment_info["category_id"] = id_map[category_id]
        return segment_info

    def _segments_from_label_divisor(self, panoptic_img: np.ndarray) -> list[dict[str, Any]]:
        """Derive segments_info from ids ``category * label_divisor + instance`` (-1 = VOID).

        Segment ids are shifted by +1 so that VOID becomes 0, as the PNG format requires.
        """
        label_divisor = self._metadata.get("label_divisor")
        if label_divisor is None:
            raise KeyError(
                f"outputs have segments_info None, which needs metadata 'label_divisor', but "
                f"dataset {self._dataset_name!r} has none"
            )
        thing_ids = set(self._metadata.thing_dataset_id_to_contiguous_id.values())
        segments_info = []
        for panoptic_label in np.unique(panoptic_img).tolist():
            if panoptic_label == -1:
                continue
            pred_class = panoptic_label // label_divisor
            segments_info.append(
                {
                    "id": int(panoptic_label) + 1,
                    "category_id": int(pred_class),
                    "isthing": pred_class in thing_ids,
                }
            )
        return segments_info

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        """Encode each output's ``panoptic_seg`` as a PNG and a json record.

        ``output["panoptic_seg"]`` is ``(panoptic_img, segments_info)``: panoptic_img an
        (H, W) int tensor of segment ids; segments_info a list of dicts ("id", contiguous
        "category_id", "isthing") with id 0 meaning no segment, or None, in which case ids
        are ``category * label_divisor + instance`` with -1 for VOID.
        """
        for input_per_image, output in zip(inputs, outputs):
            if "panoptic_seg" not in output:
                raise KeyError(f"output has no 'panoptic_seg'; keys: {sorted(output)}")
            panoptic_img, segments_info = output["panoptic_seg"]
            # a copy: shifting the ids must not change the caller's tensor
            panoptic_img = np.array(panoptic_img.cpu().numpy(), dtype=np.int64)
            if panoptic_img.ndim != 2:
                raise ValueError(
                    f"panoptic_seg image must be (H, W), got shape {panoptic_img.shape}"
                )
            if segments_info is None:
                segments_info = self._segments_from_label_divisor(panoptic_img)
                panoptic_img += 1  # VOID -1 -> 0
            file_name = os.path.basename(input_per_image["file_name"])
            file_name_png = os.path.splitext(file_name)[0] + ".png"
            with io.BytesIO() as out:
                Image.fromarray(id2rgb(panoptic_img)).save(out, format="PNG")
                png_string = out.getvalue()
            self._predictions.append(
                {
                    "image_id": input_per_image["image_id"],
                    "file_name": file_name_png,
                    "png_string": png_string,
                    "segments_info": [self._convert_category_id(s) for s in segments_info],
                }
            )

    def evaluate(self) -> dict[str, dict[str, float]] | None:
        """Gather the predictions and compute PQ on the main process.

        Returns:
            ``{"panoptic_seg": {"PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st",
            "SQ_st", "RQ_st"}}`` in percent on the main process, None elsewhere.
        """
        comm.synchronize()
        predictions = list(itertools.chain(*comm.gather(self._predictions)))
        if not comm.is_main_process():
            return None

        gt_json = PathManager.get_local_path(self._metadata.panoptic_json)
        gt_folder = PathManager.get_local_path(self._metadata.panoptic_root)
        with tempfile.TemporaryDirectory(prefix="panoptic_eval") as pred_dir:
            logger.info("Writing all panoptic predictions to %s ...", pred_dir)
            for p in predictions:
                with open(os.path.join(pred_dir, p["file_name"]), "wb") as f:
                    f.write(p["png_string"])
            with PathManager.open(gt_json, "r") as f:
                json_data = json.load(f)
            json_data["annotations"] = [
                {k: v for k, v in p.items() if k != "png_string"} for p in predictions
            ]
            predictions_json = os.path.join(self._output_dir or pred_dir, "predictions.json")
            with PathManager.open(predictions_json, "w") as f:
                f.write(json.dumps(json_data))
            pq_res = pq_compute(
                gt_json,
                PathManager.get_local_path(predictions_json),
                gt_folder=gt_folder,
                pred_folder=pred_dir,
            )

        res = {}
        for suffix, group in (("", "All"), ("_th", "Things"), ("_st", "Stuff")):
            for key in ("PQ", "SQ", "RQ"):
                res[key + suffix] = 100 * pq_res[group][key.lower()]
        _print_panoptic_results(pq_res)
        return OrderedDict({"panoptic_seg": res})


def _print_panoptic_results(pq_res: dict[str, Any]) -> None:
    """Log the All/Things/Stuff PQ, SQ, RQ (percent) and category counts as a table."""
    headers = ["", "PQ", "SQ", "RQ", "#categories"]
    rows = [
        [name] + [100 * pq_res[name][k] for k in ("pq", "sq", "rq")] + [pq_res[name]["n"]]
        for name in ("All", "Things", "Stuff")
    ]
    table = tabulate(
        rows, headers=headers, tablefmt="pipe", floatfmt=".3f", stralign="center", numalign="center"
    )
    logger.info("Panoptic Evaluation Results:\n%s", table)
