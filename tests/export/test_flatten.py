"""Flattening nested inputs/outputs to tensor tuples and back, and TracingAdapter."""

from __future__ import annotations

import pytest
import torch

from heron.export.flatten import (
    DictSchema,
    InstancesSchema,
    TracingAdapter,
    flatten_to_tuple,
)
from heron.structures.boxes import Boxes
from heron.structures.instances import Instances


def test_list_of_dicts_flattens_in_sorted_key_order_and_round_trips():
    a, b, c = torch.zeros(1), torch.ones(2), torch.full((3,), 2.0)
    obj = [{"image": a, "extra": b}, {"image": c}]
    flat, schema = flatten_to_tuple(obj)
    # keys sorted: "extra" before "image"
    assert [t.shape for t in flat] == [(2,), (1,), (3,)]
    rebuilt = schema(flat)
    assert list(rebuilt[0]) == ["extra", "image"]
    assert rebuilt[0]["image"] is a and rebuilt[0]["extra"] is b and rebuilt[1]["image"] is c


def test_tuple_stays_a_tuple_and_empty_list_has_no_leaves():
    flat, schema = flatten_to_tuple((torch.ones(1), []))
    assert len(flat) == 1
    rebuilt = schema(flat)
    assert isinstance(rebuilt, tuple) and rebuilt[1] == []


def test_instances_round_trip_with_boxes_and_image_size():
    boxes = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    inst = Instances((10, 20), pred_boxes=Boxes(boxes), scores=torch.tensor([0.5]))
    flat, schema = flatten_to_tuple(inst)
    assert isinstance(schema, InstancesSchema)
    # fields in sorted order (pred_boxes, scores), then image_size as a (2,) int64 tensor
    torch.testing.assert_close(flat[0], boxes)
    torch.testing.assert_close(flat[-1], torch.tensor([10, 20]))
    rebuilt = schema(flat)
    assert rebuilt.image_size == (10, 20)
    assert isinstance(rebuilt.pred_boxes, Boxes)
    torch.testing.assert_close(rebuilt.pred_boxes.tensor, boxes)
    torch.testing.assert_close(rebuilt.scores, torch.tensor([0.5]))


def test_empty_instances_keep_trailing_shapes():
    inst = Instances((4, 4), pred_boxes=Boxes(torch.zeros(0, 4)), scores=torch.zeros(0))
    flat, schema = flatten_to_tuple(inst)
    rebuilt = schema(flat)
    assert rebuilt.pred_boxes.tensor.shape == (0, 4) and len(rebuilt) == 0


def test_dict_with_non_string_keys_is_refused():
    with pytest.raises(TypeError, match=r"str keys.*1"):
        DictSchema.flatten({1: torch.zeros(1)})


def test_schema_with_wrong_number_of_values_names_both_counts():
    _, schema = flatten_to_tuple([torch.zeros(1), torch.zeros(1)])
    with pytest.raises(ValueError, match="expects 2 flat values, got 3"):
        schema((torch.zeros(1),) * 3)


class _TinyDetector(torch.nn.Module):
    """list[dict(image)] -> list[Instances]: one box per image spanning the bright pixels."""

    def forward(self, inputs):
        out = []
        for x in inputs:
            image = x["image"]
            h, w = image.shape[-2:]
            score = image.mean().reshape(1)
            box = torch.stack([score * 0, score * 0, score * 0 + w, score * 0 + h], dim=1)
            out.append(Instances((h, w), pred_boxes=Boxes(box), scores=score))
        return out


def test_tracing_adapter_flattens_and_rebuilds_instances():
    image = torch.full((3, 4, 6), 2.0)
    adapter = TracingAdapter(_TinyDetector(), [{"image": image}])
    assert len(adapter.flattened_inputs) == 1 and adapter.flattened_inputs[0] is image
    flat = adapter(*adapter.flattened_inputs)
    (inst,) = adapter.outputs_schema(flat)
    # mean of a constant image is 2; the box spans the image: (0, 0, w=6, h=4)
    torch.testing.assert_close(inst.scores, torch.tensor([2.0]))
    torch.testing.assert_close(inst.pred_boxes.tensor, torch.tensor([[0.0, 0.0, 6.0, 4.0]]))
    assert inst.image_size == (4, 6)


def test_traced_adapter_follows_the_input_size():
    adapter = TracingAdapter(_TinyDetector(), [{"image": torch.ones(3, 4, 6)}])
    with pytest.warns(torch.jit.TracerWarning):  # the trace records shape reads
        traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
    (inst,) = adapter.outputs_schema(traced(torch.full((3, 5, 7), 3.0)))
    torch.testing.assert_close(inst.pred_boxes.tensor, torch.tensor([[0.0, 0.0, 7.0, 5.0]]))
    torch.testing.assert_close(inst.scores, torch.tensor([3.0]))
    assert inst.image_size == (5, 7)


def test_tracing_adapter_inference_func_and_input_count_check():
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.zero_()
    adapter = TracingAdapter(model, (torch.ones(1, 2),), inference_func=lambda m, x: m(x) * 2)
    # 2 * (1 + 1) = 4
    torch.testing.assert_close(adapter(torch.ones(1, 2))[0], torch.tensor([[4.0]]))
    with pytest.raises(ValueError, match="expects 1 input tensors, got 2"):
        adapter(torch.ones(1, 2), torch.ones(1, 2))


def test_non_tensor_inputs_need_allow_non_tensor():
    inputs = [{"image": torch.ones(3, 2, 2), "height": 4}]
    with pytest.raises(TypeError, match="flattened input 0 is a int"):
        TracingAdapter(_TinyDetector(), inputs)
    adapter = TracingAdapter(_TinyDetector(), inputs, allow_non_tensor=True)
    assert len(adapter.flattened_inputs) == 1
    flat = adapter(torch.ones(3, 2, 2))  # the first call sets outputs_schema
    (inst,) = adapter.outputs_schema(flat)
    assert inst.image_size == (2, 2)
