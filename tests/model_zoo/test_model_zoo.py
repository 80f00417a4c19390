"""Tests of heron/model_zoo/model_zoo.py and `heron zoo`: checkpoint URLs, configs with
trained weights, and downloads through a mirror served on 127.0.0.1."""

from __future__ import annotations

import pickle
import re

import pytest
import torch

from heron.cli.main import main
from heron.config import CfgNode
from heron.model_zoo import (
    download_checkpoint,
    get,
    get_checkpoint_url,
    get_config,
    list_config_files,
)
from heron.model_zoo.urls import CHECKPOINT_SUFFIXES, DETECTRON2_ZOO_URL
from tests.http_server import RangeServer

URL_FORM = re.compile(
    re.escape(DETECTRON2_ZOO_URL) + r"(?P<name>[\w.\-/]+)/(?P<id>\d+)/model_[\w]+_[0-9a-f]{6}\.pkl"
)


@pytest.mark.parametrize("name", sorted(CHECKPOINT_SUFFIXES))
def test_every_published_entry_has_a_detectron2_url(name, monkeypatch):
    monkeypatch.delenv("HERON_MODEL_ZOO_URL", raising=False)
    url = get_checkpoint_url(name + ".yaml")
    match = URL_FORM.fullmatch(url)
    assert match is not None, url
    assert match.group("name") == name
    assert get_checkpoint_url(name) == url  # the extension is optional


def test_known_urls_and_every_shipped_trained_config(monkeypatch):
    monkeypatch.delenv("HERON_MODEL_ZOO_URL", raising=False)
    # Detectron2's MODEL_ZOO.md lists this checkpoint for the 3x Mask R-CNN R50-FPN
    assert get_checkpoint_url("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml") == (
        "https://dl.fbaipublicfiles.com/detectron2/COCO-InstanceSegmentation/"
        "mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl"
    )
    published = [n for n in list_config_files() if n.rsplit(".", 1)[0] in CHECKPOINT_SUFFIXES]
    assert "COCO-Detection/retinanet_R_50_FPN_1x.yaml" in published
    for name in published:
        cfg = get_config(name, trained=True)
        weights = cfg.MODEL.WEIGHTS if name.endswith(".yaml") else cfg.train.init_checkpoint
        assert get_checkpoint_url(name) == weights


def test_unknown_entry_names_close_matches():
    with pytest.raises(KeyError, match=r"No trained model .*faster_rcnn_R_50_FPN_1x"):
        get_checkpoint_url("COCO-Detection/faster_rcnn_R_50_FPN_1xx.yaml")
    with pytest.raises(KeyError, match="Shapes/mask_rcnn_R_18_FPN_demo"):
        get_config("Shapes/mask_rcnn_R_18_FPN_demo.yaml", trained=True)


def test_mirror_url_replaces_the_server(monkeypatch):
    monkeypatch.setenv("HERON_MODEL_ZOO_URL", "http://mirror.example/d2")
    assert get_checkpoint_url("Cityscapes/mask_rcnn_R_50_FPN.yaml") == (
        "http://mirror.example/d2/Cityscapes/mask_rcnn_R_50_FPN/142423278/model_final_af9cf5.pkl"
    )


def test_get_config_without_trained_keeps_the_config_weights():
    cfg = get_config("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml")
    assert isinstance(cfg, CfgNode)
    assert cfg.MODEL.WEIGHTS == "detectron2://ImageNetPretrained/MSRA/R-50.pkl"


@pytest.fixture
def mirror(monkeypatch, tmp_path):
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "*")
    monkeypatch.setenv("HERON_CACHE", str(tmp_path / "cache"))
    srv = RangeServer({})
    monkeypatch.setenv("HERON_MODEL_ZOO_URL", srv.url(""))
    yield srv
    srv.close()


def _path_of(name: str) -> str:
    return f"{name}/{CHECKPOINT_SUFFIXES[name]}"


def test_get_trained_downloads_the_checkpoint_once_and_loads_it(mirror):
    name = "COCO-Detection/rpn_R_50_FPN_1x"
    from heron.modeling import build_model

    cfg = get_config(name + ".yaml")
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    reference = build_model(cfg)
    state = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    # a Detectron2 model-zoo pickle: numpy arrays under "model"
    mirror.files[_path_of(name)] = pickle.dumps({"model": state, "__author__": "test"})
    mirror.cut[_path_of(name)] = 1_000_000  # the connection drops once after 1 MB

    model = get(name + ".yaml", trained=True, device="cpu")
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)
    gets = [r for r in mirror.requests if r[0] == _path_of(name)]
    assert gets == [(_path_of(name), None), (_path_of(name), "bytes=1000000-")]
    get(name + ".yaml", trained=True, device="cpu")  # cached: no third request
    assert len([r for r in mirror.requests if r[0] == _path_of(name)]) == 2


def test_zoo_download_command_prints_the_cached_path(mirror, capsys):
    name = "PascalVOC-Detection/faster_rcnn_R_50_C4"
    mirror.files[_path_of(name)] = b"checkpoint bytes"
    assert main(["zoo", "download", name + ".yaml"]) == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]  # after any log lines
    assert path == download_checkpoint(name)
    with open(path, "rb") as f:
        assert f.read() == b"checkpoint bytes"


def test_zoo_download_offline_says_where_to_place_the_file(mirror, monkeypatch, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HERON_MODEL_ZOO_URL", f"http://127.0.0.1:{port}/")
    assert main(["zoo", "download", "Cityscapes/mask_rcnn_R_50_FPN.yaml"]) == 2
    err = capsys.readouterr().err
    assert "Cityscapes/mask_rcnn_R_50_FPN/142423278/model_final_af9cf5.pkl" in err
    assert "place it at" in err and "model_final_af9cf5.pkl" in err
    assert main(["zoo", "download", "no/such_config.yaml"]) == 2
    assert "No trained model" in capsys.readouterr().err


def test_zoo_list_with_urls(capsys, monkeypatch):
    monkeypatch.delenv("HERON_MODEL_ZOO_URL", raising=False)
    assert main(["zoo", "list", "COCO-Detection/*", "--urls"]) == 0
    lines = capsys.readouterr().out.splitlines()
    url = get_checkpoint_url("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml")
    assert f"COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml  {url}" in lines
    shipped = [n for n in list_config_files() if n.startswith("COCO-Detection/")]
    trained = [n for n in shipped if n.rsplit(".", 1)[0] in CHECKPOINT_SUFFIXES]
    assert lines[-1] == f"{len(shipped)} configs, {len(trained)} with a published checkpoint"
