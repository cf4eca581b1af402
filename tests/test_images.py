"""Image files through Pillow: every PNG mode, JPEG, upper-case suffixes, .npy arrays; the conversion to the
models' float RGB input (scaled by the dtype's range, non-finite values refused); atomic writes."""
import os
import stat

import numpy as np
import pytest
from PIL import Image

from mtl_ops.utils.images import read_image, to_unit_rgb, write_image

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 7, 3), dtype=np.uint8)


def test_rgb_png_round_trip(tmp_path):
    write_image(tmp_path / "a.png", RGB)
    assert np.array_equal(read_image(tmp_path / "a.png"), RGB)
    with Image.open(tmp_path / "a.png") as im:
        assert (im.format, im.mode, im.size) == ("PNG", "RGB", (7, 6))


def test_palette_png_reads_as_its_colours(tmp_path):
    colours = np.array([[255, 0, 0], [0, 128, 255], [10, 20, 30]], np.uint8)
    index = RNG.integers(0, 3, (5, 4), dtype=np.uint8)
    image = Image.new("P", (4, 5))
    image.putdata(index.flatten().tolist())
    image.putpalette(colours.flatten().tolist())
    image.save(tmp_path / "p.png", transparency=2)  # a transparent entry: its colour is kept, the alpha dropped
    with Image.open(tmp_path / "p.png") as im:
        assert im.mode == "P"
    assert np.array_equal(read_image(tmp_path / "p.png"), colours[index])


def test_grey_png_reads_as_grey_rgb(tmp_path):
    grey = RNG.integers(0, 256, (5, 4), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    assert np.array_equal(read_image(tmp_path / "g.png"), np.repeat(grey[..., None], 3, axis=2))


def test_rgba_png_drops_alpha(tmp_path):
    rgba = RNG.integers(0, 256, (5, 4, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    assert np.array_equal(read_image(tmp_path / "a.png"), rgba[..., :3])
    assert np.array_equal(to_unit_rgb(rgba), rgba[..., :3] / np.float32(255))


def test_16_bit_png_keeps_16_bits_and_scales_by_65535(tmp_path):
    levels = np.array([[0, 1, 255, 256], [1000, 32768, 65534, 65535]], np.uint16)
    Image.fromarray(levels).save(tmp_path / "d.png")
    with Image.open(tmp_path / "d.png") as im:
        assert im.mode.startswith("I")
    read = read_image(tmp_path / "d.png")
    assert read.dtype == np.uint16 and np.array_equal(read, levels)
    unit = to_unit_rgb(read)
    assert unit.shape == (2, 4, 3) and unit.dtype == np.float32
    np.testing.assert_allclose(unit[..., 0], levels / 65535.0, rtol=0, atol=1e-7)
    assert np.array_equal(unit[..., 0], unit[..., 2])


def test_png_opened_as_32_bit_ints_is_read_as_16_bit():
    # older Pillow releases open a 16-bit grey PNG in mode "I" (int32)
    levels = np.array([[0, 40000], [65535, 7]], np.int32)
    image = Image.fromarray(levels)
    assert image.mode == "I"
    image.format = "PNG"
    from mtl_ops.utils.images import _pixels

    read = _pixels(image, "x.png", "image")
    assert read.dtype == np.uint16 and np.array_equal(read, levels)


def test_32_bit_integer_tiff_is_refused(tmp_path):
    Image.fromarray(np.array([[0, 70000]], np.int32)).save(tmp_path / "i.tiff")
    with pytest.raises(ValueError, match=r"IMAGE: .*i.tiff holds 32-bit integer pixels"):
        read_image(tmp_path / "i.tiff", "IMAGE")


def test_float_tiff_reads_as_float(tmp_path):
    values = np.array([[0.0, 0.25], [0.5, 1.0]], np.float32)
    Image.fromarray(values).save(tmp_path / "f.tiff")
    read = read_image(tmp_path / "f.tiff")
    assert read.dtype == np.float32 and np.array_equal(read, values)


@pytest.mark.parametrize("name", ["photo.jpg", "PHOTO.JPG", "photo.jpeg"])
def test_jpeg_reads_close_to_what_was_written(tmp_path, name):
    # flat 8x8 blocks survive JPEG compression almost exactly
    blocks = RNG.integers(0, 256, (2, 3, 3), dtype=np.uint8)
    image = np.kron(blocks, np.ones((8, 8, 1), np.uint8))
    Image.fromarray(image).save(tmp_path / name, quality=95, subsampling=0)
    read = read_image(tmp_path / name)
    assert read.shape == image.shape and read.dtype == np.uint8
    assert np.abs(read.astype(int) - image).max() <= 3


def test_upper_case_png_suffix_reads_and_writes(tmp_path):
    write_image(tmp_path / "A.PNG", RGB)
    with Image.open(tmp_path / "A.PNG") as im:
        assert im.format == "PNG"
    assert np.array_equal(read_image(tmp_path / "A.PNG"), RGB)


def test_write_jpeg_and_grey(tmp_path):
    write_image(tmp_path / "x.jpg", RGB)
    with Image.open(tmp_path / "x.jpg") as im:
        assert im.format == "JPEG" and im.size == (7, 6)
    grey = RGB[..., 0]
    write_image(tmp_path / "g.png", grey)
    with Image.open(tmp_path / "g.png") as im:
        assert im.mode == "L" and np.array_equal(np.asarray(im), grey)


def test_written_files_get_the_usual_permissions_and_no_temporary_is_left(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    path = write_image(tmp_path / "sub" / "x.png", RGB)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.png"]


def test_write_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match=r"write_image: expected a non-empty uint8 .* got float64 of shape \(6, 7, 3\)"):
        write_image(tmp_path / "x.png", RGB / 255.0)
    with pytest.raises(ValueError, match=r"x.txt: expected a suffix of an image format Pillow writes .* got '.txt'"):
        write_image(tmp_path / "x.txt", RGB)
    rgba = np.zeros((2, 2, 4), np.uint8)
    with pytest.raises(ValueError, match=r"x.jpg: JPEG cannot hold a uint8 image of shape \(2, 2, 4\)"):
        write_image(tmp_path / "x.jpg", rgba)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_npy_is_read_as_stored(tmp_path):
    levels = RNG.integers(0, 65536, (3, 4, 3)).astype(np.uint16)
    with open(tmp_path / "a.NPY", "wb") as f:  # np.save would append ".npy" to this name
        np.save(f, levels)
    read = read_image(tmp_path / "a.NPY")
    assert read.dtype == np.uint16 and np.array_equal(read, levels)


def test_read_errors_name_the_argument(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"IMAGE: no file at .*missing.png"):
        read_image(tmp_path / "missing.png", "IMAGE")
    (tmp_path / "x.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"IMAGE: .*x.txt is neither a .npy array nor an image format Pillow reads"):
        read_image(tmp_path / "x.txt", "IMAGE")
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"IMAGE: .*o.npy is not a readable .npy array of numbers"):
        read_image(tmp_path / "o.npy", "IMAGE")


def test_unit_rgb_scales_by_the_dtypes_range():
    u8 = np.array([[[0, 128, 255]]], np.uint8)
    u16 = np.array([[[0, 32768, 65535]]], np.uint16)
    np.testing.assert_allclose(to_unit_rgb(u8), u8 / 255.0, rtol=1e-7)
    np.testing.assert_allclose(to_unit_rgb(u16), u16 / 65535.0, rtol=1e-7)
    assert to_unit_rgb(u16).max() == 1.0  # not divided by 255
    assert np.array_equal(to_unit_rgb(np.array([[True, False]])), [[[1, 1, 1], [0, 0, 0]]])
    grey = np.array([[0.25]], np.float64)
    assert to_unit_rgb(grey).dtype == np.float32 and to_unit_rgb(grey).shape == (1, 1, 3)
    levels = np.array([[[0.0, 127.5, 255.0]]], np.float32)  # 8-bit levels stored as floats
    np.testing.assert_allclose(to_unit_rgb(levels), levels / 255.0, rtol=1e-7)
    assert to_unit_rgb(levels[..., :1]).shape == (1, 1, 3)


@pytest.mark.parametrize("bad,match", [
    (np.array([[[0.5, np.nan, 0.2]]], np.float32), r"IMAGE: expected finite pixel values, got 1 NaN or infinite value"),
    (np.array([[0.5, np.inf]], np.float64), r"IMAGE: expected finite pixel values, got 1 NaN .* column 1: inf"),
    (np.array([[-0.1, 0.5]], np.float32), r"IMAGE: expected float pixels in \[0, 1\] .* got values in \[-0.1, 0.5\]"),
    (np.array([[0.0, 300.0]], np.float32), r"IMAGE: expected float pixels in \[0, 1\] .* got values in \[0, 300\]"),
    (np.zeros((2, 2, 3), np.int64), r"IMAGE: expected uint8, uint16, bool or float pixels, got dtype int64"),
    (np.zeros((2, 2, 2), np.uint8), r"IMAGE: expected an \(H, W\) grey, .* got shape \(2, 2, 2\)"),
    (np.zeros((2, 2, 3, 1), np.uint8), r"got shape \(2, 2, 3, 1\)"),
    (np.zeros((0, 2, 3), np.uint8), r"got shape \(0, 2, 3\)"),
])
def test_unit_rgb_refuses_with_a_message(bad, match):
    with pytest.raises(ValueError, match=match):
        to_unit_rgb(bad, "IMAGE")
