import pytest
from omegaconf import OmegaConf

from heron.config.config import (
    CfgNode,
    _called_with_cfg,
    _get_args_from_config,
    configurable,
    get_cfg,
)


class Head:
    @configurable
    def __init__(self, *, in_channels, num_classes=80, dropout=0.0):
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.dropout = dropout

    @classmethod
    def from_config(cls, cfg, in_channels):
        return {"in_channels": in_channels, "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES}


def test_class_built_from_keyword_arguments_without_a_config():
    head = Head(in_channels=8, num_classes=3)
    assert (head.in_channels, head.num_classes, head.dropout) == (8, 3, 0.0)


def test_class_built_from_positional_cfg():
    cfg = get_cfg()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 7
    head = Head(cfg, 16)
    assert (head.in_channels, head.num_classes) == (16, 7)


def test_class_built_from_cfg_keyword():
    cfg = get_cfg()
    head = Head(cfg=cfg, in_channels=4)
    assert (head.in_channels, head.num_classes) == (4, 80)


def test_extra_kwargs_skip_from_config_and_override_its_output():
    cfg = get_cfg()
    # dropout is not a from_config parameter: passed straight to __init__
    head = Head(cfg, in_channels=4, dropout=0.5)
    assert (head.in_channels, head.num_classes, head.dropout) == (4, 80, 0.5)


def test_omegaconf_dictconfig_counts_as_a_config():
    cfg = OmegaConf.create({"MODEL": {"ROI_HEADS": {"NUM_CLASSES": 2}}})
    head = Head(cfg, 3)
    assert (head.in_channels, head.num_classes) == (3, 2)


def test_from_config_with_var_kwargs_receives_everything():
    class Pass:
        @configurable
        def __init__(self, a, b=0):
            self.a, self.b = a, b

        @classmethod
        def from_config(cls, cfg, **kwargs):
            return {"a": cfg.SEED, **kwargs}

    obj = Pass(get_cfg(), b=5)
    assert (obj.a, obj.b) == (-1, 5)


def test_subclass_uses_its_own_from_config():
    class Child(Head):
        @classmethod
        def from_config(cls, cfg, in_channels):
            return {"in_channels": in_channels * 2, "num_classes": 1}

    child = Child(get_cfg(), 3)
    assert (child.in_channels, child.num_classes) == (6, 1)


def _double_from_config(cfg, factor=2):
    return {"x": cfg.SEED * factor}


@configurable(from_config=_double_from_config)
def scaled(x, y=1):
    """Scale x by y."""
    return x * y


def test_function_called_plainly_or_with_cfg():
    cfg = get_cfg()
    cfg.SEED = 3
    assert scaled(2, y=5) == 10
    assert scaled(cfg) == 6  # x = 3 * 2
    assert scaled(cfg, factor=3, y=2) == 18  # factor to from_config, y straight through
    assert scaled(cfg=cfg, y=10) == 60
    assert scaled.from_config is _double_from_config
    assert scaled.__name__ == "scaled" and scaled.__doc__ == "Scale x by y."


def test_lambda_from_config_and_empty_parentheses():
    @configurable(from_config=lambda cfg: {"v": cfg.VIS_PERIOD})
    def get(v):
        return v

    assert get(get_cfg()) == 0
    assert configurable() is configurable


def test_missing_from_config_is_a_type_error():
    class NoFromConfig:
        @configurable
        def __init__(self, a=1):
            self.a = a

    with pytest.raises(TypeError, match="NoFromConfig uses @configurable but has no 'from_config'"):
        NoFromConfig(a=2)


@pytest.mark.parametrize("kind", ["staticmethod", "instance method"])
def test_from_config_that_is_not_a_classmethod_is_a_type_error(kind):
    def from_config(cfg):
        return {}

    attr = staticmethod(from_config) if kind == "staticmethod" else from_config

    class Bad:
        @configurable
        def __init__(self, a=1):
            self.a = a

    Bad.from_config = attr
    with pytest.raises(TypeError, match=r"Bad\.from_config must be a classmethod"):
        Bad(get_cfg())


def test_from_config_whose_first_parameter_is_not_cfg_is_a_type_error():
    class WrongName:
        @configurable
        def __init__(self, a=1):
            self.a = a

        @classmethod
        def from_config(cls, config):
            return {}

    with pytest.raises(TypeError, match=r"WrongName.from_config must take 'cfg'.*\(config\)"):
        WrongName(get_cfg())


def test_from_config_returning_a_non_dict_is_a_type_error():
    @configurable(from_config=lambda cfg: [1])
    def f(a):
        return a

    with pytest.raises(TypeError, match="must return a dict"):
        f(get_cfg())


def test_decorator_misuse_is_a_type_error():
    with pytest.raises(TypeError, match="must decorate a class's __init__"):

        @configurable
        def not_init(a):
            return a

    with pytest.raises(TypeError, match="needs a function"):
        configurable(from_config=42)


def test_helpers_detect_cfg_and_split_arguments():
    cfg = CfgNode({"A": 1})
    assert _called_with_cfg(cfg)
    assert _called_with_cfg(1, cfg=cfg)
    assert not _called_with_cfg(1, 2, x=cfg)
    assert not _called_with_cfg({"A": 1})

    def from_config(cfg, b):
        return {"a": cfg.A, "b": b}

    assert _get_args_from_config(from_config, cfg, b=2, c=3) == {"a": 1, "b": 2, "c": 3}
