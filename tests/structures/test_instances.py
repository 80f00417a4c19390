import copy
import pickle

import pytest
import torch

from heron.structures.boxes import Boxes
from heron.structures.instances import Instances

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _two_instances() -> Instances:
    return Instances(
        (20, 30),
        pred_boxes=Boxes(torch.tensor([[0.0, 0, 2, 2], [1, 1, 3, 3]])),
        scores=torch.tensor([0.9, 0.4]),
        names=["a", "b"],
    )


def test_image_size_and_fields_from_kwargs():
    inst = _two_instances()
    assert inst.image_size == (20, 30)
    assert len(inst) == 2
    assert list(inst.get_fields()) == ["pred_boxes", "scores", "names"]


def test_set_get_has_remove_and_attribute_access():
    inst = Instances((4, 5))
    inst.scores = torch.tensor([1.0, 2.0])
    inst.set("labels", torch.tensor([3, 4]))
    assert inst.has("scores") and inst.has("labels")
    torch.testing.assert_close(inst.get("labels"), torch.tensor([3, 4]))
    torch.testing.assert_close(inst.scores, torch.tensor([1.0, 2.0]))
    inst.remove("scores")
    assert not inst.has("scores")


def test_underscore_names_are_plain_attributes_not_fields():
    inst = Instances((4, 5))
    inst._cache = "not a field"  # no length, would fail as a field
    assert inst._cache == "not a field"
    assert inst.get_fields() == {}


def test_missing_field_raises_attribute_error_listing_fields():
    inst = _two_instances()
    with pytest.raises(
        AttributeError, match=r"no field 'gt_boxes'.*\['names', 'pred_boxes', 'scores'\]"
    ):
        _ = inst.gt_boxes
    assert not hasattr(inst, "gt_boxes")


def test_get_and_remove_missing_field_raise_key_error():
    inst = _two_instances()
    with pytest.raises(KeyError, match="no field 'x'"):
        inst.get("x")
    with pytest.raises(KeyError, match="no field 'x'"):
        inst.remove("x")


def test_setting_field_of_different_length_names_both_lengths():
    inst = _two_instances()
    with pytest.raises(ValueError, match="'labels' has length 3, but the Instances has length 2"):
        inst.labels = torch.tensor([1, 2, 3])


def test_setting_field_without_length_raises_type_error():
    inst = Instances((4, 5))
    with pytest.raises(TypeError, match="field 'score' must have a length"):
        inst.score = 3.0


def test_len_without_fields_is_a_clear_error():
    with pytest.raises(TypeError, match="no fields"):
        len(Instances((4, 5)))


def test_iteration_raises_type_error():
    with pytest.raises(TypeError, match="not iterable"):
        iter(_two_instances())


def test_getitem_int_returns_length_one_instances():
    inst = _two_instances()
    one = inst[1]
    assert len(one) == 1
    torch.testing.assert_close(one.scores, torch.tensor([0.4]))
    torch.testing.assert_close(one.pred_boxes.tensor, torch.tensor([[1.0, 1, 3, 3]]))
    assert one.names == ["b"]
    assert one.image_size == (20, 30)
    # negative ints count from the end: -2 is the first
    assert inst[-2].names == ["a"]


@pytest.mark.parametrize("index", [2, -3])
def test_getitem_int_out_of_range_raises_index_error(index):
    with pytest.raises(IndexError, match=f"index {index} is out of range for length 2"):
        _two_instances()[index]


def test_getitem_slice_bool_and_long():
    inst = Instances((5, 5), scores=torch.tensor([0.1, 0.2, 0.3]))
    torch.testing.assert_close(inst[1:].scores, torch.tensor([0.2, 0.3]))
    torch.testing.assert_close(
        inst[torch.tensor([True, False, True])].scores, torch.tensor([0.1, 0.3])
    )
    torch.testing.assert_close(inst[torch.tensor([2, 0])].scores, torch.tensor([0.3, 0.1]))
    empty = inst[torch.zeros(3, dtype=torch.bool)]
    assert len(empty) == 0 and empty.image_size == (5, 5)


def test_cat_concatenates_tensors_lists_and_cat_types():
    a = _two_instances()
    b = Instances(
        (20, 30),
        pred_boxes=Boxes(torch.tensor([[5.0, 5, 6, 6]])),
        scores=torch.tensor([0.1]),
        names=["c"],
    )
    c = Instances.cat([a, b])
    assert len(c) == 3
    torch.testing.assert_close(c.scores, torch.tensor([0.9, 0.4, 0.1]))
    assert c.names == ["a", "b", "c"]
    assert isinstance(c.pred_boxes, Boxes)
    torch.testing.assert_close(c.pred_boxes.tensor[2], torch.tensor([5.0, 5, 6, 6]))


def test_cat_single_element_returns_it():
    a = _two_instances()
    assert Instances.cat([a]) is a


def test_cat_requires_same_image_size():
    a = _two_instances()
    b = Instances((10, 10), scores=torch.tensor([0.1]))
    with pytest.raises(
        ValueError, match=r"element 1 has image_size \(10, 10\), element 0 has \(20, 30\)"
    ):
        Instances.cat([a, b])


def test_cat_unsupported_type_names_field_and_type():
    class Opaque:
        def __len__(self):
            return 1

    a = Instances((1, 1), thing=Opaque())
    with pytest.raises(ValueError, match="field 'thing' has type Opaque"):
        Instances.cat([a, Instances((1, 1), thing=Opaque())])


def test_cat_empty_list_raises():
    with pytest.raises(ValueError, match="non-empty list"):
        Instances.cat([])


@pytest.mark.parametrize("device", DEVICES)
def test_to_moves_fields_with_to_and_keeps_others(device):
    inst = _two_instances().to(device)
    assert inst.scores.device.type == device
    assert inst.pred_boxes.device.type == device
    assert inst.names == ["a", "b"]  # lists have no .to


def test_to_dtype_converts_tensor_fields():
    inst = Instances((1, 1), scores=torch.tensor([0.5]))
    assert inst.to(torch.float64).scores.dtype == torch.float64


def test_repr_lists_counts_size_and_fields():
    inst = Instances((20, 30), scores=torch.tensor([0.5, 0.25]))
    assert repr(inst) == (
        "Instances(num_instances=2, image_height=20, image_width=30, "
        "fields=[scores: tensor([0.5000, 0.2500])])"
    )
    assert str(inst) == repr(inst)
    assert repr(Instances((1, 2))) == (
        "Instances(num_instances=0, image_height=1, image_width=2, fields=[])"
    )


def test_deepcopy_and_pickle_round_trip():
    inst = _two_instances()
    for clone in (copy.deepcopy(inst), pickle.loads(pickle.dumps(inst))):
        assert clone.image_size == (20, 30)
        torch.testing.assert_close(clone.scores, inst.scores)
        torch.testing.assert_close(clone.pred_boxes.tensor, inst.pred_boxes.tensor)
        assert clone.names == inst.names
    deep = copy.deepcopy(inst)
    deep.scores[0] = 0.0
    assert inst.scores[0] == pytest.approx(0.9)  # deep copy does not share storage


def test_copy_of_empty_instances():
    inst = Instances((3, 3))
    assert copy.copy(inst).image_size == (3, 3)
    assert copy.deepcopy(inst).get_fields() == {}
