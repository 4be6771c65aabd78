import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pneumolab.data import folder
from pneumolab.config import FolderDataConfig
from pneumolab.data.load import load_data
from pneumolab.errors import PneumolabError
from pneumolab.data.folder import load_folder

SHARED_XRAY = Path(__file__).resolve().parents[2] / "shared/data/chest_xray"


@pytest.fixture
def real_xray() -> Path:
    if not SHARED_XRAY.is_dir():
        pytest.skip(f"the real chest X-rays are not at {SHARED_XRAY} (the shared data folder beside the repo)")
    return SHARED_XRAY


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PNEUMOLAB_DATA", str(tmp_path / "cache"))
    return tmp_path / "cache" / "folder"


def copy_subset(src: Path, dst: Path, counts: dict[str, int]) -> Path:
    """Copy the first `counts[split]` images per class of each split of src into dst."""
    for split, n in counts.items():
        for cls in ("NORMAL", "PNEUMONIA"):
            (dst / split / cls).mkdir(parents=True)
            source_split = "train" if split == "val" else split  # the shared data has no val/
            names = sorted(os.listdir(src / source_split / cls))
            offset = 20 if split == "val" else 0  # val images distinct from train ones
            for name in names[offset : offset + n]:
                shutil.copyfile(src / source_split / cls / name, dst / split / cls / name)
    return dst


@pytest.fixture
def xray(tmp_path, real_xray) -> Path:
    """8 train and 4 test images per class: real 224 px RGB JPEGs."""
    return copy_subset(real_xray, tmp_path / "xray", {"train": 8, "test": 4})


def cfg_for(root: Path, **overrides) -> FolderDataConfig:
    return FolderDataConfig(root=str(root), **overrides)


def test_rgb_jpegs_load_as_grayscale_with_a_stratified_val(xray, cache):
    sample = next((xray / "train" / "NORMAL").iterdir())
    assert Image.open(sample).mode == "RGB"
    data = load_folder(cfg_for(xray))
    assert data.train.images.dtype == torch.uint8 and data.image_shape == (1, 28, 28)
    # No val/: 10 % of each train class (at least one image) is held out.
    assert data.train.class_counts() == (7, 7) and data.val.class_counts() == (1, 1)
    assert data.test.class_counts() == (4, 4)
    assert str(xray) in data.source and "28 px" in data.source


def test_decoding_matches_a_full_resolution_resize(xray, cache):
    path = sorted((xray / "test" / "NORMAL").iterdir())[0]
    reference = np.asarray(Image.open(path).convert("L").resize((28, 28), Image.Resampling.LANCZOS), dtype=float)
    fast = folder.decode_image(path, 28, "squeeze").astype(float)
    assert np.abs(fast - reference).mean() < 6


def test_holdout_follows_the_split_seed(xray, cache):
    a = load_folder(cfg_for(xray, split_seed=0, val_fraction=0.4))
    b = load_folder(cfg_for(xray, split_seed=1, val_fraction=0.4))
    assert a.val.class_counts() == (3, 3)
    assert not torch.equal(a.val.images, b.val.images)


def test_a_large_enough_val_folder_is_used_as_is(tmp_path, real_xray, cache):
    root = copy_subset(real_xray, tmp_path / "xray", {"train": 6, "val": 5, "test": 2})
    data = load_folder(cfg_for(root))
    assert data.train.class_counts() == (6, 6) and data.val.class_counts() == (5, 5)
    assert "of train" not in data.source


def test_a_tiny_val_folder_joins_train_before_the_holdout(tmp_path, real_xray, cache):
    root = copy_subset(real_xray, tmp_path / "xray", {"train": 8, "val": 2, "test": 2})
    data = load_folder(cfg_for(root))
    assert len(data.train) + len(data.val) == 20 and data.val.class_counts() == (1, 1)


def test_other_sizes_and_modes(tmp_path, cache):
    root = tmp_path / "synthetic"
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            (root / split / cls).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(root / split / cls / "rgb.png")
            Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).convert("P").save(root / split / cls / "p.gif")
            Image.fromarray(rng.integers(0, 256, (30, 30, 4), dtype=np.uint8)).save(root / split / cls / "rgba.png")
            ramp = np.tile(np.linspace(0, 4095, 60).astype(np.uint16), (60, 1))  # 12-bit, as many X-ray PNGs
            Image.fromarray(ramp).save(root / split / cls / "deep.png")
    data = load_folder(cfg_for(root, image_size=16))
    assert data.image_shape == (1, 16, 16) and len(data.train) + len(data.val) == 8
    # 12-bit pixels are stretched to the full 0..255 range instead of clipping to white.
    deep = folder.decode_image(root / "test" / "NORMAL" / "deep.png", 16, "squeeze")
    assert deep.min() < 20 and deep.max() > 235 and np.all(np.diff(deep.astype(int), axis=1) >= 0)


def test_hidden_files_are_skipped(xray, cache):
    (xray / "train" / "NORMAL" / ".DS_Store").write_bytes(b"\0\1\2 not an image")
    (xray / "test" / "PNEUMONIA" / "._IM-0001.jpeg").write_bytes(b"AppleDouble")
    data = load_folder(cfg_for(xray))
    assert len(data.train) + len(data.val) == 16 and len(data.test) == 8


def truncated_jpeg(path: Path) -> None:
    data = next((path.parent.parent / "NORMAL").glob("*.jpeg")).read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("name", "write"),
    [
        ("cut.jpeg", truncated_jpeg),
        ("empty.jpeg", lambda p: p.write_bytes(b"")),
        ("notes.txt", lambda p: p.write_text("radiologist notes")),
    ],
)
def test_an_unreadable_file_is_named(xray, cache, name, write):
    bad = xray / "train" / "PNEUMONIA" / name
    write(bad)
    with pytest.raises(PneumolabError, match=f"Cannot read the image {bad}.*delete it"):
        load_folder(cfg_for(xray))


def test_a_bad_file_is_named_by_the_process_pool_too(tmp_path, real_xray):
    paths = sorted((real_xray / "train" / "NORMAL").iterdir())[: folder.MIN_FILES_FOR_POOL + 10]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"PNG? no")
    with pytest.raises(PneumolabError, match=f"Cannot read the image {bad}"):
        folder.decode_images(paths + [bad], 28, "squeeze")


def test_the_process_pool_decodes_like_one_process(real_xray):
    paths = sorted((real_xray / "test" / "PNEUMONIA").iterdir())[: folder.MIN_FILES_FOR_POOL + 10]
    assert np.array_equal(folder.decode_images(paths, 28, "center_crop"),
                          folder._decode_chunk(paths, 28, "center_crop"))


def test_a_missing_class_folder_is_named(xray, cache):
    shutil.rmtree(xray / "test" / "PNEUMONIA")
    with pytest.raises(PneumolabError, match=f"class folder {xray / 'test' / 'PNEUMONIA'} is missing"):
        load_folder(cfg_for(xray))


def test_a_missing_split_folder_is_named(xray, cache):
    shutil.rmtree(xray / "train")
    with pytest.raises(PneumolabError, match="has no train/ folder"):
        load_folder(cfg_for(xray))


def test_a_missing_root_is_reported(tmp_path, cache):
    with pytest.raises(PneumolabError, match="does not exist.*data.root"):
        load_folder(cfg_for(tmp_path / "nowhere"))


def test_root_may_start_with_a_tilde(xray, cache, monkeypatch):
    monkeypatch.setenv("HOME", str(xray.parent))
    assert load_folder(cfg_for("~/xray")).source.startswith(f"folder {xray} ")


def test_the_second_load_comes_from_the_cache(xray, cache):
    first = load_folder(cfg_for(xray))
    assert len(list(cache.glob("*.npz"))) == 1
    # Same size and mtime but unreadable bytes: only a cache hit can still load it.
    victim = sorted((xray / "train" / "NORMAL").iterdir())[0]
    before = victim.stat()
    victim.write_bytes(b"\0" * before.st_size)
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
    second = load_folder(cfg_for(xray))
    for name, split in first.splits().items():
        assert torch.equal(split.images, second.splits()[name].images)
        assert torch.equal(split.labels, second.splits()[name].labels)


def test_touching_or_adding_a_file_rebuilds_the_cache(xray, cache):
    load_folder(cfg_for(xray))
    os.utime(sorted((xray / "test" / "NORMAL").iterdir())[0])
    load_folder(cfg_for(xray))
    assert len(list(cache.glob("*.npz"))) == 2
    shutil.copyfile(sorted((xray / "train" / "NORMAL").iterdir())[0], xray / "test" / "NORMAL" / "extra.jpeg")
    assert len(load_folder(cfg_for(xray)).test) == 9
    assert len(list(cache.glob("*.npz"))) == 3
    assert not list(cache.glob(".*"))  # no temp files left behind


def test_a_cache_per_image_size(xray, cache):
    assert load_folder(cfg_for(xray, image_size=16)).image_shape == (1, 16, 16)
    assert load_folder(cfg_for(xray, image_size=28)).image_shape == (1, 28, 28)
    assert len(list(cache.glob("*.npz"))) == 2


def test_a_read_only_data_folder_works(xray, cache):
    before = sorted(p.relative_to(xray) for p in xray.rglob("*"))
    for path in [xray, *xray.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        load_folder(cfg_for(xray))
        load_folder(cfg_for(xray))
    finally:
        for path in [xray, *xray.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    assert sorted(p.relative_to(xray) for p in xray.rglob("*")) == before


def test_load_data_caps_per_class(xray, cache):
    data = load_data(cfg_for(xray, limit_per_class=3))
    assert data.train.class_counts() == (3, 3) and data.test.class_counts() == (3, 3)


# --- nothing dropped silently: sub-folders, links, litter --------------------------------


def image_pixels(data, split: str) -> list[bytes]:
    return sorted(image.numpy().tobytes() for image in getattr(data, split).images)


def test_images_in_sub_folders_are_used(xray, cache):
    test_normal = xray / "test" / "NORMAL"
    flat = load_folder(cfg_for(xray))
    # Half the test NORMAL images moved one and two levels down: the same images load.
    names = sorted(p.name for p in test_normal.iterdir())
    (test_normal / "batch 2" / "deeper").mkdir(parents=True)
    (test_normal / names[0]).rename(test_normal / "batch 2" / names[0])
    (test_normal / names[1]).rename(test_normal / "batch 2" / "deeper" / names[1])
    nested = load_folder(cfg_for(xray))
    assert nested.test.class_counts() == flat.test.class_counts() == (4, 4)
    assert image_pixels(nested, "test") == image_pixels(flat, "test")
    listed = [f.relpath for f in folder.list_images(xray)["test"]]
    assert f"test/NORMAL/batch 2/deeper/{names[1]}" in listed and f"test/NORMAL/batch 2/{names[0]}" in listed


def test_linked_folders_are_followed_once(tmp_path, xray, cache):
    elsewhere = tmp_path / "more normals"
    elsewhere.mkdir()
    extra = next((xray / "train" / "PNEUMONIA").iterdir())
    shutil.copyfile(extra, elsewhere / "extra.jpeg")
    (xray / "test" / "NORMAL" / "linked").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "loop").symlink_to(elsewhere, target_is_directory=True)  # must not recurse forever
    data = load_folder(cfg_for(xray))
    assert data.test.class_counts() == (5, 4)


def test_a_file_reached_twice_is_refused_before_anything_is_decoded(xray, cache, monkeypatch):
    monkeypatch.setattr(folder, "decode_images", lambda *args: pytest.fail("decoded before the check"))
    # A hard link: no symbolic link anywhere, yet one file in both classes.
    image = sorted((xray / "train" / "NORMAL").iterdir())[0]
    os.link(image, xray / "train" / "PNEUMONIA" / "same.jpeg")
    for step in (folder.plan_folder, load_folder):
        with pytest.raises(PneumolabError, match=r"reached twice .* \(1 file\(s\) in all .* cannot be both NORMAL"):
            step(cfg_for(xray))
    assert not cache.exists()


def test_a_broken_link_is_named(xray, cache):
    link = xray / "train" / "NORMAL" / "moved.jpeg"
    link.symlink_to(xray / "gone" / "moved.jpeg")
    with pytest.raises(PneumolabError) as caught:
        load_folder(cfg_for(xray))
    message = str(caught.value)
    assert f"{link} is a broken symbolic link" in message and str(xray / "gone" / "moved.jpeg") in message
    assert "Delete the link" in message and "\n" not in message


def test_hidden_entries_are_skipped_and_counted_in_the_log(xray, cache, caplog):
    (xray / "train" / "NORMAL" / ".ipynb_checkpoints").mkdir()
    shutil.copyfile(next((xray / "train" / "NORMAL").glob("*.jpeg")),
                    xray / "train" / "NORMAL" / ".ipynb_checkpoints" / "copy.jpeg")
    (xray / "test" / "PNEUMONIA" / ".DS_Store").write_bytes(b"Bud1")
    with caplog.at_level("INFO", logger="pneumolab.data.folder"):
        data = load_folder(cfg_for(xray))
    assert len(data.train) + len(data.val) == 16
    assert "Skipped 2 hidden file(s) or folder(s)" in caplog.text
    assert ".ipynb_checkpoints" in caplog.text and ".DS_Store" in caplog.text


def test_a_test_split_without_a_class_stops_before_training(xray, cache):
    for path in (xray / "test" / "PNEUMONIA").iterdir():
        path.unlink()
    with pytest.raises(PneumolabError) as caught:
        load_data(cfg_for(xray))
    message = str(caught.value)
    assert "The test split of folder" in message and "no PNEUMONIA images (4 NORMAL, 0 PNEUMONIA)" in message
    assert "test/PNEUMONIA/" in message


def test_the_plan_counts_what_the_load_decodes(tmp_path, xray, cache):
    (xray / "test" / "NORMAL" / "sub").mkdir()
    shutil.copyfile(next((xray / "train" / "NORMAL").iterdir()), xray / "test" / "NORMAL" / "sub" / "x.jpeg")
    cfg = cfg_for(xray, image_size=40)
    plan = folder.plan_folder(cfg)
    assert (plan.n_images, plan.image_shape, plan.cache_dir) == (25, (40, 40), cache)
    assert plan.cache_bytes >= 25 * 40 * 40
    data = load_folder(cfg)
    assert sum(len(s) for s in data.splits().values()) == 25
    (written,) = cache.glob("*.npz")
    assert written.stat().st_size <= plan.cache_bytes
    assert folder.plan_folder(cfg).cache_dir is None  # cached now: nothing more to write


# --- data.resize: squeeze (the whole image) or center_crop (its largest centred square) ---------


def reshaped(path: Path, width: int, height: int, suffix: str) -> Path:
    """A non-square copy of a real X-ray (its top-left width x height), saved beside it; PNG keeps pixels exact."""
    out = path.with_name(f"{path.stem}-{width}x{height}{suffix}")
    with Image.open(path) as image:
        image.crop((0, 0, width, height)).save(out)
    return out


@pytest.mark.parametrize(("width", "height"), [(224, 151), (150, 224)])
def test_center_crop_is_the_centred_square_resized(xray, width, height):
    path = reshaped(next((xray / "test" / "NORMAL").iterdir()), width, height, ".png")
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    with Image.open(path) as image:
        square = image.convert("L").crop((left, top, left + side, top + side))
    by_hand = square.resize((28, 28), Image.Resampling.BILINEAR)
    assert np.array_equal(folder.decode_image(path, 28, "center_crop"), np.asarray(by_hand))
    assert not np.array_equal(folder.decode_image(path, 28, "squeeze"), np.asarray(by_hand))


def test_center_crop_of_a_jpeg_matches_a_full_resolution_crop(xray):
    # JPEGs are decoded at a reduced DCT scale first: the crop must still cover the same part of the image.
    path = reshaped(next((xray / "test" / "PNEUMONIA").iterdir()), 224, 120, ".jpeg")
    with Image.open(path) as image:
        reference = image.convert("L").crop((52, 0, 172, 120)).resize((28, 28), Image.Resampling.LANCZOS)
    fast = folder.decode_image(path, 28, "center_crop").astype(float)
    assert np.abs(fast - np.asarray(reference, dtype=float)).mean() < 6


def squeeze_before_data_resize(path: Path, size: int) -> np.ndarray:
    """decode_image of 8-bit images as it was before data.resize existed."""
    with Image.open(path) as image:
        image.draft("L", (size, size))
        gray = image.convert("L")
        if gray.size != (size, size):
            gray = gray.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(gray, dtype=np.uint8)


def test_squeeze_decodes_bit_for_bit_as_before(xray):
    source = next((xray / "train" / "PNEUMONIA").iterdir())
    for path in (source, reshaped(source, 224, 151, ".jpeg"), reshaped(source, 151, 224, ".png")):
        for size in (28, 64, 224):
            assert np.array_equal(folder.decode_image(path, size, "squeeze"), squeeze_before_data_resize(path, size))


def test_squeeze_and_center_crop_never_share_a_cache(xray, cache):
    for path in list(xray.rglob("*.jpeg")):
        reshaped(path, 224, 151, ".jpeg")
        path.unlink()
    squeezed = load_folder(cfg_for(xray, resize="squeeze"))
    cropped = load_folder(cfg_for(xray, resize="center_crop"))
    assert len(list(cache.glob("*.npz"))) == 2
    assert not torch.equal(squeezed.test.images, cropped.test.images)
    first = folder.list_images(xray)["test"][0].path
    assert np.array_equal(cropped.test.images[0, 0].numpy(), folder.decode_image(first, 28, "center_crop"))
    for mode, before in (("squeeze", squeezed), ("center_crop", cropped)):
        again = load_folder(cfg_for(xray, resize=mode))  # from its own cache: no third file
        assert torch.equal(again.train.images, before.train.images)
        assert torch.equal(again.test.images, before.test.images)
        assert mode in again.source
    assert len(list(cache.glob("*.npz"))) == 2
