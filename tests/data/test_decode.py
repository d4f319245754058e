"""Every bad input of issue 3 is decoded correctly or skipped with a reason; nothing
crashes and nothing is dropped silently."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vitprobe.data import DecodeError, decode_image, make_loader, open_images
from vitprobe.data.decode import ALPHA_BACKGROUND
from vitprobe.models.preprocess import PreprocessConfig

from .conftest import write_png


def pixels(path) -> np.ndarray:
    image = decode_image(path)
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def test_conversions_to_rgb(bad_folder):
    root = bad_folder.root
    assert (pixels(root / "gray.png") == 77).all()
    cmyk = pixels(root / "cmyk.jpg")
    assert np.abs(cmyk - [200, 100, 50]).max() <= 3
    assert (pixels(root / "palette.png") == [10, 200, 30]).all()
    # 16-bit: scaled, not clipped to white
    assert (pixels(root / "gray16.png") == 128).all()
    assert (pixels(root / "rgb16.png") == 40).all()
    # fully transparent red shows the background, not the red under it
    assert (pixels(root / "rgba.png") == ALPHA_BACKGROUND).all()
    assert pixels(root / "tiny.png").shape == (2, 3, 3)


def test_exif_rotation_applied(tmp_path):
    array = np.zeros((20, 40, 3), np.uint8)
    array[:, :20] = (255, 0, 0)  # left half red
    array[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to display
    Image.fromarray(array).save(tmp_path / "r.png", exif=exif)
    shown = pixels(tmp_path / "r.png")
    assert shown.shape == (40, 20, 3)  # portrait after rotation
    assert (shown[:15, :, 0] > 200).all() and (shown[:15, :, 2] < 50).all()  # red on top
    assert (shown[-15:, :, 2] > 200).all() and (shown[-15:, :, 0] < 50).all()  # blue below


def test_partial_alpha_and_palette_transparency(tmp_path):
    Image.new("RGBA", (4, 4), (255, 0, 0, 128)).save(tmp_path / "half.png")
    assert np.abs(pixels(tmp_path / "half.png") - [255, 127, 127]).max() <= 1
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.info["transparency"] = 1
    palette.save(tmp_path / "p.png", transparency=1)
    assert (pixels(tmp_path / "p.png") == ALPHA_BACKGROUND).all()


def test_sixteen_bit_gradient_keeps_its_range(tmp_path):
    ramp = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)
    write_png(tmp_path / "ramp.png", ramp)
    decoded = pixels(tmp_path / "ramp.png")[:, :, 0]
    assert (decoded == np.arange(256).reshape(16, 16)).all()


@pytest.mark.parametrize(
    ("name", "word"),
    [
        ("truncated.jpg", "truncated"),
        ("truncated.png", "truncated"),
        ("empty.jpg", "empty"),
        ("not_an_image.png", "not an image"),
        ("random.jpg", "not an image"),
        ("corrupt.png", "corrupt"),
        ("bomb.png", "decompression bomb"),
        ("big.png", "decompression bomb"),
    ],
)
def test_bad_files_raise_decode_error(bad_folder, name, word):
    with pytest.raises(DecodeError) as info:
        decode_image(bad_folder.root / name)
    assert word in info.value.reason


def test_bomb_rejected_from_header_and_limit_is_configurable(tmp_path):
    Image.fromarray(np.zeros((300, 300, 3), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(DecodeError, match="decompression bomb"):
        decode_image(tmp_path / "a.png", max_pixels=50_000)
    assert decode_image(tmp_path / "a.png", max_pixels=90_000).size == (300, 300)
    assert decode_image((tmp_path / "a.png").read_bytes()).size == (300, 300)
    with pytest.raises(DecodeError, match="not found"):
        decode_image(tmp_path / "missing.png")


def test_folder_skips_are_counted_and_reported(bad_folder):
    source = open_images(bad_folder.root)
    assert sorted(source.ids) == sorted(bad_folder.good + list(bad_folder.bad))
    assert "1 non-image files ignored" in source.description  # notes.txt; ._good.jpg hidden
    loader = make_loader(source, PreprocessConfig(), batch_size=4, workers=0)
    loaded = [i for batch in loader for i in batch["ids"]]
    assert sorted(loaded) == bad_folder.good
    assert {s.id: s.reason for s in loader.skipped}.keys() == bad_folder.bad.keys()
    for record in loader.skipped:
        assert bad_folder.bad[record.id] in record.reason
        path, reason = record  # unpacks as (path, reason)
        assert path == str(bad_folder.root / record.id) and reason == record.reason
    assert loader.n_loaded + len(loader.skipped) == len(source)
    report = loader.report()
    assert f"{len(bad_folder.good)} of {len(source)} images loaded" in report
    assert all(str(bad_folder.root / name) in report for name in bad_folder.bad)


def test_max_pixels_option_reaches_the_loader(bad_folder):
    source = open_images(f"{bad_folder.root}?max_pixels=1500")
    loader = make_loader(source, PreprocessConfig(), batch_size=8)
    loaded = {i for batch in loader for i in batch["ids"]}
    assert "good.jpg" not in loaded and "tiny.png" in loaded  # 80x60 > 1500 px; 3x2 fine


@pytest.mark.slow
def test_skip_records_come_back_from_worker_processes(bad_folder):
    source = open_images(bad_folder.root)
    loader = make_loader(source, PreprocessConfig(), batch_size=3, workers=2)
    batches = list(loader)
    assert sorted(i for b in batches for i in b["ids"]) == bad_folder.good
    assert sorted(s.id for s in loader.skipped) == sorted(bad_folder.bad)
    # a second pass reports the same, not twice as much
    list(loader)
    assert len(loader.skipped) == len(bad_folder.bad)
    for batch in batches:
        assert batch["pixels"].shape == (len(batch["ids"]), 3, 224, 224)
        assert batch["pixels"].dtype.is_floating_point
