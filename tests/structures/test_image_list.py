import pytest
import torch

from heron.structures.image_list import ImageList

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _image(c: int, h: int, w: int, start: float = 1.0) -> torch.Tensor:
    return torch.arange(c * h * w, dtype=torch.float32).view(c, h, w) + start


def test_from_tensors_pads_to_max_size_bottom_right():
    a, b = _image(3, 4, 6), _image(3, 5, 2)
    il = ImageList.from_tensors([a, b], pad_value=-1.0)
    # max height 5, max width 6
    assert il.tensor.shape == (2, 3, 5, 6)
    assert il.image_sizes == [(4, 6), (5, 2)]
    torch.testing.assert_close(il.tensor[0, :, :4, :6], a)
    torch.testing.assert_close(il.tensor[1, :, :5, :2], b)
    assert (il.tensor[0, :, 4:, :] == -1).all()  # bottom padding of image 0
    assert (il.tensor[1, :, :, 2:] == -1).all()  # right padding of image 1


def test_image_sizes_are_python_int_tuples():
    il = ImageList.from_tensors([_image(1, 3, 4)])
    assert il.image_sizes == [(3, 4)]
    h, w = il.image_sizes[0]
    assert type(h) is int and type(w) is int


def test_from_tensors_size_divisibility_rounds_up():
    il = ImageList.from_tensors([_image(3, 33, 64), _image(3, 10, 65)], size_divisibility=32)
    # max (33, 65) -> (64, 96): 33 -> 2 * 32, 65 -> 3 * 32
    assert il.tensor.shape == (2, 3, 64, 96)


def test_from_tensors_single_image_uses_padding():
    img = _image(3, 5, 7)
    il = ImageList.from_tensors([img], size_divisibility=4, pad_value=0.5)
    # (5, 7) -> (8, 8)
    assert il.tensor.shape == (1, 3, 8, 8)
    torch.testing.assert_close(il.tensor[0, :, :5, :7], img)
    assert (il.tensor[0, :, 5:, :] == 0.5).all() and (il.tensor[0, :, :, 7:] == 0.5).all()
    assert il.tensor.is_contiguous()


def test_padding_constraints_size_divisibility_overrides_argument():
    il = ImageList.from_tensors(
        [_image(1, 5, 9)], size_divisibility=32, padding_constraints={"size_divisibility": 4}
    )
    # divisibility 4: (5, 9) -> (8, 12)
    assert il.tensor.shape == (1, 1, 8, 12)


def test_padding_constraints_square_size():
    il = ImageList.from_tensors(
        [_image(3, 5, 9), _image(3, 7, 2)], padding_constraints={"square_size": 16}
    )
    assert il.tensor.shape == (2, 3, 16, 16)
    assert il.image_sizes == [(5, 9), (7, 2)]
    # square_size 0 means no square padding
    il = ImageList.from_tensors([_image(3, 5, 9)], padding_constraints={"square_size": 0})
    assert il.tensor.shape == (1, 3, 5, 9)


def test_padding_constraints_square_smaller_than_image_raises():
    with pytest.raises(
        ValueError, match=r"square_size=8 is smaller than the largest image \(5, 9\)"
    ):
        ImageList.from_tensors([_image(1, 5, 9)], padding_constraints={"square_size": 8})


def test_two_dimensional_images_give_n_h_w():
    il = ImageList.from_tensors([torch.ones(2, 3), torch.ones(4, 1)])
    assert il.tensor.shape == (2, 4, 3)
    torch.testing.assert_close(il[1], torch.ones(4, 1))


def test_getitem_crops_padding_and_len():
    a, b = _image(3, 4, 6), _image(3, 5, 2)
    il = ImageList.from_tensors([a, b], size_divisibility=8)
    assert len(il) == 2
    torch.testing.assert_close(il[0], a)
    torch.testing.assert_close(il[1], b)


def test_keeps_dtype():
    il = ImageList.from_tensors(
        [torch.ones(3, 2, 2, dtype=torch.uint8), torch.ones(3, 3, 1, dtype=torch.uint8)]
    )
    assert il.tensor.dtype == torch.uint8


@pytest.mark.parametrize("device", DEVICES)
def test_to_and_device(device):
    il = ImageList.from_tensors([_image(3, 2, 2)]).to(device)
    assert il.device.type == device
    assert il.image_sizes == [(2, 2)]
    assert ImageList.from_tensors([_image(3, 2, 2)]).to(torch.float64).tensor.dtype == torch.float64


def test_constructor_stores_tensor_and_sizes():
    t = torch.zeros(2, 3, 8, 8)
    il = ImageList(t, [(8, 8), (4, 6)])
    assert il.tensor is t and len(il) == 2
    assert il[1].shape == (3, 4, 6)


def test_from_tensors_empty_list_raises():
    with pytest.raises(ValueError, match="tensors is empty"):
        ImageList.from_tensors([])


def test_from_tensors_mismatched_channels_names_index():
    with pytest.raises(ValueError, match=r"tensors\[2\] has shape \(1, 4, 4\)"):
        ImageList.from_tensors([_image(3, 4, 4), _image(3, 2, 2), _image(1, 4, 4)])


def test_from_tensors_mismatched_ndim_names_index():
    with pytest.raises(ValueError, match=r"tensors\[1\] has shape \(4, 4\)"):
        ImageList.from_tensors([_image(3, 4, 4), torch.zeros(4, 4)])


def test_from_tensors_rejects_non_tensors():
    with pytest.raises(TypeError, match=r"tensors\[0\] is a list"):
        ImageList.from_tensors([[1, 2]])
    with pytest.raises(TypeError, match="must be a list of Tensors"):
        ImageList.from_tensors(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"tensors\[0\] must be \(..., H, W\)"):
        ImageList.from_tensors([torch.zeros(4)])
