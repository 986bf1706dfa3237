"""The embedded benchmark generator, its cache, the folder loader and the paired transforms."""

import errno
import fcntl
import hashlib
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
import yaml
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
from scipy import ndimage

from kdlab.data import synthetic
from kdlab.data.dataset import SegmentationFolder
from kdlab.data.synthetic import (
    CLASS_NAMES,
    IGNORE_INDEX,
    NUM_CLASSES,
    PALETTE,
    ensure_embedded,
    generate_embedded,
    render_scene,
    scene_rng,
)
from kdlab.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    ToTensor,
    denormalize,
    eval_transform,
    train_transform,
)
from kdlab.errors import DataError

TINY = dict(seed=3, image_size=32, num_train=3, num_val=2, progress=False)


@pytest.fixture(scope="module")
def scenes():
    """40 generated label maps at 96 x 96, the size the requirements are checked at."""
    return [render_scene(scene_rng(0, "train", i), 96)[1] for i in range(40)]


@pytest.fixture
def tiny_root(tmp_path):
    return ensure_embedded(tmp_path / "embedded", **TINY)


def components(mask):
    labelled, count = ndimage.label(mask)
    return [labelled == k for k in range(1, count + 1)]


def leftovers(parent):
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


# --- the generator ---------------------------------------------------------------------

def test_class_tables_agree():
    assert 8 <= NUM_CLASSES <= 12
    assert len(CLASS_NAMES) == len(PALETTE) == NUM_CLASSES
    assert len(set(PALETTE)) == NUM_CLASSES and all(len(c) == 3 for c in PALETTE)


def test_same_seed_same_bytes_and_other_seeds_differ():
    image, label = render_scene(scene_rng(0, "train", 5), 48)
    again_image, again_label = render_scene(scene_rng(0, "train", 5), 48)
    assert image.dtype == label.dtype == np.uint8
    assert image.shape == (48, 48, 3) and label.shape == (48, 48)
    assert image.tobytes() == again_image.tobytes() and label.tobytes() == again_label.tobytes()
    for other in (scene_rng(1, "train", 5), scene_rng(0, "val", 5), scene_rng(0, "train", 6)):
        assert render_scene(other, 48)[0].tobytes() != image.tobytes()


def test_every_class_and_ignore_appear(scenes):
    present = set(np.unique(np.stack(scenes)).tolist())
    assert set(range(NUM_CLASSES)) | {IGNORE_INDEX} == present


def test_poles_are_thin_somewhere(scenes):
    """Some pole of length >= 10 px holds no 4 x 4 block of pole pixels, i.e. is at most 3 px wide."""
    def fits_4x4_block(mask):
        return sliding_window_view(mask, (4, 4)).all(axis=(2, 3)).any()

    thin = [c for label in scenes for c in components(label == synthetic.POLE)
            if c.sum() >= 10 and not fits_4x4_block(c)]
    assert thin


def test_small_signs_exist(scenes):
    image_area = scenes[0].size
    areas = [c.sum() for label in scenes for c in components(label == synthetic.SIGN)]
    assert areas and min(areas) < 0.005 * image_area


def test_cars_lie_on_road_and_boats_on_water(scenes):
    """The context that tells the two apart: stuff within 3 px of a car is road, of a boat water."""
    for vehicle, host, other in ((synthetic.CAR, synthetic.ROAD, synthetic.WATER),
                                 (synthetic.BOAT, synthetic.WATER, synthetic.ROAD)):
        host_count = other_count = 0
        for label in scenes:
            near = ndimage.binary_dilation(label == vehicle, iterations=3)
            host_count += (near & (label == host)).sum()
            other_count += (near & (label == other)).sum()
        assert host_count > 0 and other_count < 0.05 * host_count


def test_generated_files_follow_the_layout(tiny_root):
    meta = yaml.safe_load((tiny_root / "dataset.yaml").read_text())
    assert meta["class_names"] == list(CLASS_NAMES) and meta["num_classes"] == NUM_CLASSES
    assert meta["ignore_index"] == IGNORE_INDEX and [tuple(c) for c in meta["palette"]] == PALETTE
    for split, count in (("train", TINY["num_train"]), ("val", TINY["num_val"])):
        names = sorted(p.name for p in (tiny_root / split / "images").iterdir())
        assert names == sorted(p.name for p in (tiny_root / split / "labels").iterdir())
        assert len(names) == count
        image, label = render_scene(scene_rng(TINY["seed"], split, count - 1), TINY["image_size"])
        assert np.array_equal(np.asarray(Image.open(tiny_root / split / "images" / names[-1])), image)
        assert np.array_equal(np.asarray(Image.open(tiny_root / split / "labels" / names[-1])), label)


def test_cache_is_reused_and_other_params_get_their_own_copy(tiny_root):
    cache = tiny_root.parent
    stamp = lambda: [(tiny_root / p).stat().st_mtime_ns for p in ("dataset.yaml", "train/images/00000.png")]
    before = stamp()
    assert ensure_embedded(cache, **TINY) == tiny_root
    assert ensure_embedded(tiny_root, **TINY) == tiny_root  # a copy given directly is used as it is
    assert stamp() == before

    other = ensure_embedded(cache, **{**TINY, "num_train": 4})
    assert other.parent == cache and other != tiny_root
    assert len(list((other / "train" / "images").iterdir())) == 4
    assert yaml.safe_load((other / "dataset.yaml").read_text())["generator"]["num_train"] == 4
    assert stamp() == before and len(list((tiny_root / "train" / "images").iterdir())) == TINY["num_train"]
    assert leftovers(cache) == [] and leftovers(cache.parent) == []


def test_interrupted_generation_leaves_old_dataset_untouched(tiny_root, monkeypatch):
    calls = []

    def failing_render(rng, size):
        calls.append(size)
        if len(calls) % 2 == 0:  # each generation below dies on its second image
            raise KeyboardInterrupt
        return render_scene(rng, size)

    monkeypatch.setattr(synthetic, "render_scene", failing_render)
    cache = tiny_root.parent
    yaml_before = (tiny_root / "dataset.yaml").read_text()
    with pytest.raises(KeyboardInterrupt):
        generate_embedded(cache, **{**TINY, "seed": 4})
    with pytest.raises(KeyboardInterrupt):
        generate_embedded(cache.parent / "fresh", **TINY)
    assert (tiny_root / "dataset.yaml").read_text() == yaml_before
    assert sorted(p.name for p in cache.iterdir()) == sorted([synthetic.MARKER, synthetic.LOCK, tiny_root.name])
    assert not any(p.is_dir() for p in (cache.parent / "fresh").iterdir())
    assert leftovers(cache) == [] and leftovers(cache.parent) == []


@pytest.mark.parametrize("bad", [dict(image_size=16), dict(num_train=-1), dict(seed=1.5)])
def test_bad_generator_params_rejected(tmp_path, bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        ensure_embedded(tmp_path / "x", **{**TINY, **bad})


# --- the cache never touches what kdlab did not write ----------------------------------

def snapshot(root):
    """Every path under ``root`` with its content hash and mtime, and the root's own mtime."""
    entries = {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
                                          p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}
    return entries, root.stat().st_mtime_ns


def user_dataset(root):
    """A user's own dataset in the folder layout, plus a file of notes."""
    image, label = good_pair()
    write_folder(root, {"a": image}, {"a": label})
    (root / "notes.txt").write_text("my experiments\n")
    return root


def legacy_cache(tmp_path, name="legacy", **params):
    """A cache as the old generator left it: one copy directly in the root, no marker."""
    made = ensure_embedded(tmp_path / f"{name}-src", **{**TINY, **params})
    made.rename(tmp_path / name)
    return tmp_path / name


def dead_pid():
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def embedded_copy(params):
    return synthetic.copy_name(synthetic._generator_params(**{k: v for k, v in params.items() if k != "progress"}))


@pytest.mark.parametrize("kind", ["folder dataset", "one file", "embedded copy plus a user file"])
def test_a_directory_kdlab_did_not_make_is_refused_and_untouched(tmp_path, kind):
    if kind == "folder dataset":
        root = user_dataset(tmp_path / "mine")
    elif kind == "one file":
        root = tmp_path / "mine"
        root.mkdir()
        (root / "thesis.tex").write_text("\\\\section{}")
    else:  # the generator's files, but the user has added one: not the generator's any more
        root = legacy_cache(tmp_path, "mine")
        (root / "train" / "extra.txt").write_text("mine")
    before = snapshot(root)
    with pytest.raises(DataError) as caught:
        ensure_embedded(root, **{**TINY, "seed": 9})
    message = str(caught.value)
    assert "\n" not in message and f"data.root '{root}'" in message
    assert "not a kdlab-generated embedded benchmark" in message and "data.name=folder" in message
    assert snapshot(root) == before


def test_a_file_as_root_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(DataError, match="is a file"):
        ensure_embedded(path, **TINY)
    assert path.read_text() == "x"


def test_train_on_a_user_directory_without_data_name_exits_2_and_writes_nothing(tmp_path, capsys):
    from kdlab.cli import main

    root, out = user_dataset(tmp_path / "mine"), tmp_path / "runs"
    before = snapshot(root)
    status = main(["train", "-c", "configs/student.yaml", "-c", "configs/quick.yaml", "name=x",
                   f"data.root={root}", f"out_dir={out}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1, err
    assert err[0].startswith("kdlab: error:") and str(root) in err[0] and "data.name=folder" in err[0]
    assert snapshot(root) == before
    assert not out.exists() or not any(out.iterdir())


def test_two_parameter_sets_coexist_in_one_cache(tmp_path):
    cache = tmp_path / "cache"
    small = ensure_embedded(cache, **TINY)
    before = snapshot(small)
    large = ensure_embedded(cache, **{**TINY, "image_size": 40})
    assert small.parent == large.parent == cache and small != large
    assert snapshot(small) == before  # the first copy was not replaced under its readers
    assert ensure_embedded(cache, **TINY) == small and snapshot(small) == before
    for copy, size in ((small, 32), (large, 40)):
        assert SegmentationFolder(copy, "val").load(0)[0].shape == (size, size, 3)
    assert (cache / synthetic.MARKER).is_file()


def test_a_killed_generation_is_cleaned_and_regenerated(tmp_path):
    cache = tmp_path / "cache"
    ensure_embedded(cache, **TINY)
    params = {**TINY, "seed": 5}
    name = embedded_copy(params)
    killed = cache / f"{name}.tmp-{dead_pid()}"  # what a SIGKILLed generator leaves
    (killed / "train" / "images").mkdir(parents=True)
    (killed / "train" / "images" / "00000.png").write_bytes(b"half a png")
    running = cache / f"{name}.tmp-{os.getppid()}"  # a live process's: maybe still being written
    running.mkdir()

    copy = ensure_embedded(cache, **params)
    assert copy == cache / name and not killed.exists() and running.is_dir()
    image, label = render_scene(scene_rng(5, "train", 0), TINY["image_size"])
    assert np.array_equal(np.asarray(Image.open(copy / "train" / "images" / "00000.png")), image)
    assert np.array_equal(np.asarray(Image.open(copy / "train" / "labels" / "00000.png")), label)


def test_a_generator_waits_for_another_and_finds_the_copy_done(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    ensure_embedded(cache, **TINY)
    params = {**TINY, "seed": 6}
    rendered = []
    monkeypatch.setattr(synthetic, "render_scene", lambda rng, size: rendered.append(size) or render_scene(rng, size))
    result = {}
    with open(cache / synthetic.LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another generator is at work
        waiter = threading.Thread(target=lambda: result.setdefault("copy", ensure_embedded(cache, **params)))
        waiter.start()
        waiter.join(1.0)
        assert waiter.is_alive() and not rendered  # it waits for the lock
        done = ensure_embedded(tmp_path / "other", **params)  # the other generator's work, then it leaves
        done.rename(cache / done.name)
        fcntl.flock(lock, fcntl.LOCK_UN)
    waiter.join(30)
    assert result["copy"] == cache / embedded_copy(params)
    assert len(rendered) == params["num_train"] + params["num_val"]  # only the other generator rendered


def test_a_copy_given_as_root_with_other_params_names_the_cache(tiny_root):
    before = snapshot(tiny_root)
    with pytest.raises(DataError, match=f"set data.root to its parent '{tiny_root.parent}'"):
        ensure_embedded(tiny_root, **{**TINY, "seed": 7})
    assert snapshot(tiny_root) == before


def test_an_old_layout_cache_is_kept_and_extended(tmp_path):
    root = legacy_cache(tmp_path)
    before = snapshot(root)
    assert ensure_embedded(root, **TINY) == root  # its own parameters: used where it is, nothing written
    assert snapshot(root) == before and not (root / synthetic.MARKER).exists()

    other = ensure_embedded(root, **{**TINY, "num_val": 1})  # other parameters: a copy next to it
    assert other == root / embedded_copy({**TINY, "num_val": 1})
    assert yaml.safe_load((root / synthetic.MARKER).read_text())["legacy_copy"]["seed"] == TINY["seed"]
    assert ensure_embedded(root, **TINY) == root
    assert {k: v for k, v in snapshot(root)[0].items() if k in before[0]} == before[0]


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    cache = tmp_path / "cache"

    def full_disk(split_dir, *args):
        split_dir.mkdir(parents=True)
        raise OSError(errno.ENOSPC, "No space left on device", str(split_dir / "images" / "00000.png"))

    monkeypatch.setattr(synthetic, "_write_split", full_disk)
    with pytest.raises(DataError) as caught:
        ensure_embedded(cache, **TINY)
    assert "\n" not in str(caught.value) and "No space left on device" in str(caught.value)
    assert f"data.root '{cache}'" in str(caught.value)
    assert not any(p.is_dir() for p in cache.iterdir()) and leftovers(cache) == []


def test_data_generate_and_preview_use_the_copy(tmp_path, capsys):
    from kdlab.cli import main

    cache = tmp_path / "cache"
    args = [f"data.root={cache}", "data.image_size=32", "data.crop_size=32", "data.num_train=3", "data.num_val=2",
            "data.seed=3"]
    assert main(["data", "generate", *args]) == 0
    copy = cache / embedded_copy(TINY)
    assert f"dataset ready: {copy}" in capsys.readouterr().out
    out = tmp_path / "preview.png"
    assert main(["data", "preview", "--count", "2", "--out", str(out), *args]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in cache.iterdir()) == sorted([synthetic.MARKER, synthetic.LOCK, copy.name])


# --- the loader ------------------------------------------------------------------------

def test_loader_returns_normalised_tensors(tiny_root):
    dataset = SegmentationFolder(tiny_root, "val", transform=eval_transform())
    assert len(dataset) == TINY["num_val"] and dataset.meta["class_names"] == list(CLASS_NAMES)
    item = dataset[1]
    size = TINY["image_size"]
    assert item["id"] == "00001"
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, size, size)
    assert item["label"].dtype == torch.int64 and item["label"].shape == (size, size)

    raw = np.asarray(Image.open(tiny_root / "val" / "images" / "00001.png"), dtype=np.float32)
    for c in range(3):
        expected = (raw[..., c] / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert np.allclose(item["image"][c].numpy(), expected, atol=1e-5)
    label = np.asarray(Image.open(tiny_root / "val" / "labels" / "00001.png"))
    assert np.array_equal(item["label"].numpy(), label)
    assert np.array_equal(denormalize(item["image"]), raw.astype(np.uint8))


def test_loader_augmentation_is_fixed_by_seed(tiny_root):
    dataset = SegmentationFolder(tiny_root, "train", transform=train_transform(24))
    first, again = dataset[(0, 7)], dataset[(0, 7)]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["label"], again["label"])
    assert first["image"].shape == (3, 24, 24) and first["label"].shape == (24, 24)
    assert any(not torch.equal(dataset[(0, seed)]["image"], first["image"]) for seed in range(8, 12))


def write_folder(root, images, labels, num_classes=3):
    """A dataset in the layout contract from {id: array} dicts."""
    meta = dict(name="tiny", num_classes=num_classes, class_names=[f"c{i}" for i in range(num_classes)],
                palette=[[i, i, i] for i in range(num_classes)], ignore_index=255)
    (root / "train" / "images").mkdir(parents=True)
    (root / "train" / "labels").mkdir(parents=True)
    (root / "dataset.yaml").write_text(yaml.safe_dump(meta))
    for name, array in images.items():
        Image.fromarray(array).save(root / "train" / "images" / f"{name}.png")
    for name, array in labels.items():
        Image.fromarray(array).save(root / "train" / "labels" / f"{name}.png")
    return root


def good_pair(height=5, width=7):
    return np.zeros((height, width, 3), np.uint8), np.ones((height, width), np.uint8)


def check_one_line_error(expected_fragments, load):
    with pytest.raises(DataError) as caught:
        load()
    message = str(caught.value)
    assert isinstance(caught.value, ValueError) and "\n" not in message
    for fragment in expected_fragments:
        assert fragment in message


def test_missing_root_and_split(tmp_path):
    missing = tmp_path / "nowhere"
    check_one_line_error([str(missing), "dataset.yaml", "images", "labels"],
                         lambda: SegmentationFolder(missing, "train"))
    image, label = good_pair()
    root = write_folder(tmp_path / "d", {"a": image}, {"a": label})
    check_one_line_error(["'val'", str(root)], lambda: SegmentationFolder(root, "val"))


def test_orphan_files(tmp_path):
    image, label = good_pair()
    root = write_folder(tmp_path / "a", {"a": image, "b": image}, {"a": label})
    check_one_line_error([str(root / "train" / "images" / "b.png")], lambda: SegmentationFolder(root, "train"))
    root = write_folder(tmp_path / "b", {"a": image}, {"a": label, "c": label})
    check_one_line_error([str(root / "train" / "labels" / "c.png")], lambda: SegmentationFolder(root, "train"))


def test_corrupt_image(tmp_path):
    image, label = good_pair()
    root = write_folder(tmp_path / "d", {"a": image}, {"a": label})
    path = root / "train" / "images" / "a.png"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    check_one_line_error([str(path)], lambda: SegmentationFolder(root, "train")[0])


def test_size_mismatch(tmp_path):
    image, _ = good_pair(5, 7)
    _, label = good_pair(5, 6)
    root = write_folder(tmp_path / "d", {"a": image}, {"a": label})
    check_one_line_error([str(root / "train" / "labels" / "a.png")], lambda: SegmentationFolder(root, "train")[0])


def test_label_value_out_of_range(tmp_path):
    image, label = good_pair()
    label[2, 3], label[0, 0] = 9, 255
    root = write_folder(tmp_path / "d", {"a": image}, {"a": label}, num_classes=3)
    check_one_line_error([str(root / "train" / "labels" / "a.png"), "9"],
                         lambda: SegmentationFolder(root, "train")[0])


def test_colour_label_rejected(tmp_path):
    image, _ = good_pair()
    root = write_folder(tmp_path / "d", {"a": image}, {"a": image})
    check_one_line_error([str(root / "train" / "labels" / "a.png")], lambda: SegmentationFolder(root, "train")[0])


# --- transforms ------------------------------------------------------------------------

HEIGHT, WIDTH = 9, 11


def position_pair():
    """An image whose red/green channels hold 20 x row / 20 x column, and a label = row * WIDTH + column."""
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    image = np.stack([rows * 20, cols * 20, np.full_like(rows, 7)], axis=-1).astype(np.uint8)
    return image, (rows * WIDTH + cols).astype(np.uint8)


def assert_aligned(image, label, tolerance=0.0):
    """Every valid label pixel sits where the image says its source pixel came from."""
    valid = label != IGNORE_INDEX
    rows, cols = image[..., 0] / 20, image[..., 1] / 20
    assert np.abs(rows[valid] - label[valid] // WIDTH).max() <= tolerance
    assert np.abs(cols[valid] - label[valid] % WIDTH).max() <= tolerance


@pytest.mark.parametrize("seed", range(4))
def test_flip_and_crop_keep_image_and_label_aligned(seed):
    rng = np.random.default_rng(seed)
    image, label = position_pair()
    image, label = RandomHorizontalFlip(p=1.0)(image, label, rng)
    assert np.array_equal(label[:, 0], position_pair()[1][:, -1])
    image, label = RandomCrop(5)(image, label, rng)
    assert image.shape == (5, 5, 3) and label.shape == (5, 5)
    assert_aligned(image, label)


def test_scale_keeps_image_and_label_aligned():
    image, label = position_pair()
    image, label = RandomScale(2.0, 2.0)(image, label, np.random.default_rng(0))
    assert label.shape == (2 * HEIGHT, 2 * WIDTH) and image.shape == (2 * HEIGHT, 2 * WIDTH, 3)
    expected = [[position_pair()[1][r // 2, c // 2] for c in range(2 * WIDTH)] for r in range(2 * HEIGHT)]
    assert np.array_equal(label, np.array(expected))
    assert_aligned(image, label, tolerance=0.5)


def test_crop_pads_label_with_ignore_and_image_with_zero():
    image, label = position_pair()
    out_image, out_label = RandomCrop(13)(image, label, np.random.default_rng(0))
    assert out_label.shape == (13, 13)
    assert np.array_equal(out_label[:HEIGHT, :WIDTH], label)
    assert (out_label[HEIGHT:] == IGNORE_INDEX).all() and (out_label[:, WIDTH:] == IGNORE_INDEX).all()
    assert (out_image[HEIGHT:] == 0).all() and (out_image[:, WIDTH:] == 0).all()


def test_train_transform_is_seeded_and_returns_tensors():
    image, label = position_pair()
    transform = train_transform(7)
    first = transform(image, label, np.random.default_rng(5))
    again = transform(image, label, np.random.default_rng(5))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert first[0].dtype == torch.float32 and first[0].shape == (3, 7, 7)
    assert first[1].dtype == torch.int64 and first[1].shape == (7, 7)
    restored = denormalize(ToTensor()(image, label, None)[0])
    assert np.array_equal(restored, image)
