from __future__ import annotations

import uuid

import pytest

from heron.data.catalog import DatasetCatalog, MetadataCatalog
from heron.data.datasets.pascal_voc import CLASS_NAMES, load_voc_instances, register_pascal_voc
from heron.structures.boxes import BoxMode

_OBJ = (
    "<object><name>{name}</name><difficult>{difficult}</difficult>"
    "<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>"
    "</object>"
)


def _xml(objects, size="<size><width>50</width><height>40</height><depth>3</depth></size>"):
    body = "".join(_OBJ.format(**o) for o in objects)
    return f"<annotation><filename>x.jpg</filename>{size}{body}</annotation>"


def _tree(tmp_path, xmls):
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "ImageSets" / "Main" / "train.txt").write_text("\n".join(xmls) + "\n")
    for fileid, text in xmls.items():
        (tmp_path / "Annotations" / f"{fileid}.xml").write_text(text)
    return str(tmp_path)


def _two_images(tmp_path):
    objs = [
        dict(name="dog", difficult=0, x0=1, y0=2, x1=10, y1=20),
        dict(name="person", difficult=1, x0=5, y0=5, x1=30, y1=40),
    ]
    return _tree(tmp_path, {"000001": _xml(objs), "000002": _xml([])})


def test_class_names_are_the_20_voc_classes():
    assert len(CLASS_NAMES) == 20 and len(set(CLASS_NAMES)) == 20
    assert CLASS_NAMES[0] == "aeroplane" and CLASS_NAMES[-1] == "tvmonitor"


def test_load_voc_shifts_xmin_ymin_and_keeps_difficult(tmp_path):
    root = _two_images(tmp_path)
    dicts = load_voc_instances(root, "train", CLASS_NAMES)
    assert [d["image_id"] for d in dicts] == ["000001", "000002"]
    d = dicts[0]
    assert d["file_name"] == f"{root}/JPEGImages/000001.jpg"
    assert (d["height"], d["width"]) == (40, 50)
    anns = d["annotations"]
    assert len(anns) == 2  # the difficult person is kept
    # 1-based -> 0-based: xmin 1 - 1 = 0, ymin 2 - 1 = 1; xmax/ymax unchanged
    assert anns[0]["bbox"] == [0.0, 1.0, 10.0, 20.0]
    assert anns[1]["bbox"] == [4.0, 4.0, 30.0, 40.0]
    assert anns[0]["category_id"] == CLASS_NAMES.index("dog") == 11
    assert anns[1]["category_id"] == CLASS_NAMES.index("person") == 14
    assert all(a["bbox_mode"] == BoxMode.XYXY_ABS for a in anns)
    assert dicts[1]["annotations"] == []


def test_load_voc_custom_class_names(tmp_path):
    root = _two_images(tmp_path)
    dicts = load_voc_instances(root, "train", ["person", "dog"])
    assert [a["category_id"] for a in dicts[0]["annotations"]] == [1, 0]


def test_unknown_class_raises_naming_file(tmp_path):
    root = _tree(tmp_path, {"a": _xml([dict(name="cow", difficult=0, x0=1, y0=1, x1=2, y1=2)])})
    with pytest.raises(ValueError, match=r"a\.xml: object #0 has class name 'cow'"):
        load_voc_instances(root, "train", ["dog"])


def test_missing_tag_raises_naming_file_and_tag(tmp_path):
    text = "<annotation><size><width>5</width><height>4</height></size><object><name>dog</name>"
    text += "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>3</xmax></bndbox></object></annotation>"
    root = _tree(tmp_path, {"b": text})
    with pytest.raises(ValueError, match=r"b\.xml: object #0 has no <ymax>"):
        load_voc_instances(root, "train", CLASS_NAMES)


def test_missing_size_raises(tmp_path):
    root = _tree(tmp_path, {"c": _xml([], size="")})
    with pytest.raises(ValueError, match=r"c\.xml: the image has no <size/height>"):
        load_voc_instances(root, "train", CLASS_NAMES)


def test_non_numeric_coordinate_raises(tmp_path):
    root = _tree(tmp_path, {"d": _xml([dict(name="dog", difficult=0, x0="a", y0=1, x1=2, y1=2)])})
    with pytest.raises(ValueError, match=r"d\.xml: object #0 <xmin> must be a number, got 'a'"):
        load_voc_instances(root, "train", CLASS_NAMES)


def test_malformed_xml_raises_naming_file(tmp_path):
    root = _tree(tmp_path, {"e": "<annotation><size>"})
    with pytest.raises(ValueError, match=r"e\.xml: malformed XML"):
        load_voc_instances(root, "train", CLASS_NAMES)


def test_register_pascal_voc_is_lazy_and_sets_metadata(tmp_path):
    name = f"voc_test_{uuid.uuid4().hex}"
    root = str(tmp_path / "not_yet")
    register_pascal_voc(name, root, "train", 2007)
    try:
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == list(CLASS_NAMES)
        assert (meta.dirname, meta.year, meta.split) == (root, 2007, "train")
        assert meta.evaluator_type == "pascal_voc"
        _two_images(tmp_path / "not_yet")
        assert len(DatasetCatalog.get(name)) == 2
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_empty_split_gives_empty_list(tmp_path):
    assert load_voc_instances(_tree(tmp_path, {}), "train", CLASS_NAMES) == []
