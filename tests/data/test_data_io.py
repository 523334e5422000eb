"""Image reading: every mode to RGB, EXIF orientation, errors naming the file."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ghost_vision.data.io import DataError, read_image, read_label_png


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def test_rgb_roundtrip_png(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    out = read_image(_save(Image.fromarray(arr), tmp_path / "a.png"))
    assert out.dtype == np.uint8 and out.shape == (7, 9, 3)
    np.testing.assert_array_equal(out, arr)
    assert out.flags.writeable


def test_grayscale_becomes_three_equal_channels(tmp_path):
    arr = np.arange(30, dtype=np.uint8).reshape(5, 6) * 8
    out = read_image(_save(Image.fromarray(arr), tmp_path / "g.png"))
    assert out.shape == (5, 6, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], arr)


def test_sixteen_bit_grayscale_is_rescaled(tmp_path):
    arr = np.array([[0, 65535], [32896, 257]], dtype=np.uint16)
    out = read_image(_save(Image.fromarray(arr), tmp_path / "g16.png"))
    np.testing.assert_array_equal(out[..., 0], [[0, 255], [128, 1]])


def test_rgba_composited_on_white(tmp_path):
    arr = np.zeros((2, 2, 4), np.uint8)
    arr[0, 0] = (10, 20, 30, 255)  # opaque
    arr[0, 1] = (10, 20, 30, 0)  # transparent -> white
    arr[1, 0] = (0, 0, 0, 128)  # half -> mid grey
    out = read_image(_save(Image.fromarray(arr), tmp_path / "a.png"))
    assert out[0, 0].tolist() == [10, 20, 30]
    assert out[0, 1].tolist() == [255, 255, 255]
    assert out[1, 0].tolist() == [127, 127, 127]


def test_palette_and_palette_with_transparency(tmp_path):
    idx = np.array([[0, 1], [2, 1]], np.uint8)
    img = Image.frombytes("P", (2, 2), idx.tobytes())
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    out = read_image(_save(img, tmp_path / "p.png"))
    assert out.tolist() == [[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [0, 255, 0]]]
    out = read_image(_save(img, tmp_path / "pt.png", transparency=1))
    assert out.tolist() == [[[255, 0, 0], [255, 255, 255]], [[0, 0, 255], [255, 255, 255]]]


def test_cmyk_jpeg(tmp_path):
    img = Image.new("CMYK", (8, 6), (0, 255, 255, 0))  # pure red in CMYK
    out = read_image(_save(img, tmp_path / "c.jpg", quality=100))
    assert out.shape == (6, 8, 3)
    assert out[..., 0].min() > 230 and out[..., 1].max() < 25 and out[..., 2].max() < 25


def test_exif_orientation_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # left half white
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    path = tmp_path / "o.jpg"
    img.save(path, exif=exif, quality=100)
    out = read_image(path)
    assert out.shape == (40, 20, 3)
    assert out[:20].mean() > 240 and out[20:].mean() < 15  # the white half is now on top


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        read_image(tmp_path / "nope.jpg")


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty"])
def test_corrupt_image_names_the_file(tmp_path, kind):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = {"truncated": buf.getvalue()[:400], "garbage": b"not an image at all" * 10, "empty": b""}[kind]
    path = tmp_path / f"bad_{kind}.jpg"
    path.write_bytes(data)
    with pytest.raises(DataError, match=f"bad_{kind}.jpg"):
        read_image(path)


def test_read_label_png_keeps_indices_and_rejects_rgb(tmp_path):
    idx = np.array([[0, 3], [255, 1]], np.uint8)
    img = Image.frombytes("P", (2, 2), idx.tobytes())
    img.putpalette([i // 3 for i in range(768)])
    np.testing.assert_array_equal(read_label_png(_save(img, tmp_path / "m.png")), idx)
    rgb = _save(Image.new("RGB", (2, 2)), tmp_path / "rgb.png")
    with pytest.raises(DataError, match="rgb.png.*mode 'RGB'"):
        read_label_png(rgb)
