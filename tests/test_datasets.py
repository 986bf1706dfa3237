"""The dataset registry and the real-dataset loaders, on tiny trees written in each dataset's format.

Expected train ids are computed here from each dataset's published rule (or cityscapesscripts'
table), independently of the loaders' lookup tables.
"""

import os
import pickle
import shutil

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import id2label, name2label, trainId2label
from PIL import Image

from kdlab.data import DATASETS, eval_transform, open_dataset, train_transform
from kdlab.data.datasets import voc_colormap
from kdlab.data.datasets.fixtures import SIZES, write_fixture
from kdlab.errors import ConfigError, DataError

REAL = ["cityscapes", "voc_aug", "ade20k", "camvid", "pascal_context59", "coco_stuff10k"]
NUM_CLASSES = {"cityscapes": 19, "voc_aug": 21, "ade20k": 150, "camvid": 11, "pascal_context59": 59,
               "coco_stuff10k": 171}
SPLIT_SIZES = {"cityscapes": {"train": 3, "val": 2}, "voc_aug": {"train": 2, "val": 2, "train_aug": 4},
               "ade20k": {"train": 3, "val": 2}, "camvid": {"train": 3, "val": 2, "test": 2},
               "pascal_context59": {"train": 3, "val": 2}, "coco_stuff10k": {"train": 3, "test": 2}}
PNG_IMAGES = {"cityscapes", "camvid"}


def reduce_zero(raw):
    return np.where((raw == 0) | (raw == 255), 255, raw.astype(np.int64) - 1)


def expected_labels(name, item_id, raw, label_path):
    """Train ids by each dataset's documented rule."""
    if name == "cityscapes":
        if label_path.endswith("_labelTrainIds.png"):
            return raw
        table = {i: (t if 0 <= t < 255 else 255) for i, t in ((i, id2label[i].trainId) for i in range(34))}
        return np.vectorize(table.__getitem__)(raw)
    if name == "voc_aug":
        return raw
    if name == "camvid":
        return np.where(raw == 11, 255, raw)
    return reduce_zero(raw)  # ade20k, pascal_context59, coco_stuff10k


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def tree_state(root):
    """Every path under root with its size and mtime: to check that nothing was written."""
    return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


@pytest.fixture(params=REAL)
def fixture_tree(request, tmp_path):
    return request.param, tmp_path, write_fixture(request.param, tmp_path)


# ----------------------------------------------------------------------------- registry
def test_registry_names_and_unknown_name():
    assert list(DATASETS) == ["embedded", "folder", *REAL]
    with pytest.raises(ConfigError) as err:
        open_dataset("kitti", "/nowhere", "train")
    text = one_line(err)
    assert "'kitti'" in text and all(name in text for name in DATASETS)


def test_unknown_split_and_option(tmp_path):
    write_fixture("ade20k", tmp_path)
    with pytest.raises(ConfigError) as err:
        open_dataset("ade20k", tmp_path, "test")
    assert "'test'" in one_line(err) and "train, val" in str(err.value)
    with pytest.raises(ConfigError) as err:
        open_dataset("ade20k", tmp_path, "train", image_size=64)
    assert "image_size" in one_line(err)


# ----------------------------------------------------------------------------- decoding
def test_decoded_labels_images_and_split_sizes(fixture_tree):
    name, root, fixture = fixture_tree
    for split, size in SPLIT_SIZES[name].items():
        for where in (root, fixture.folder):  # the dataset folder or its parent
            data = open_dataset(name, where, split)
            assert data.root == fixture.folder
            assert len(data) == size and data.ids == fixture.ids(split)
        for index, item_id in enumerate(data.ids):
            image, label = data.load(index)
            written = fixture.images[split][item_id]
            assert image.dtype == np.uint8 and image.shape == written.shape
            if name in PNG_IMAGES:
                np.testing.assert_array_equal(image, written)
            else:  # JPEG: close, not equal
                assert np.abs(image.astype(int) - written).mean() < 3
            raw = fixture.labels[split][item_id]
            assert label.dtype == np.uint8 and label.shape == raw.shape == data.size(index)
            np.testing.assert_array_equal(label, expected_labels(name, item_id, raw, str(data.items[index].label)))
            assert set(np.unique(label)) <= set(range(NUM_CLASSES[name])) | {255}
    sizes = {open_dataset(name, root, split).size(i) for split in SPLIT_SIZES[name]
             for i in range(SPLIT_SIZES[name][split])}
    assert sizes <= set(SIZES) and len(sizes) > 1  # odd, varying sizes


def test_every_special_value_is_in_the_fixtures(fixture_tree):
    name, _, fixture = fixture_tree
    values = set(np.unique(np.concatenate([raw.ravel() for labels in fixture.labels.values()
                                           for raw in labels.values()])))
    # Cityscapes: ids without a train id, and 255 in the labelTrainIds map
    special = {"cityscapes": {0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30, 255},
               "voc_aug": {0, 255}, "ade20k": {0, 150}, "camvid": {11}, "pascal_context59": {0, 59},
               "coco_stuff10k": {0, 171}}[name]
    assert special <= values


def test_metadata(fixture_tree):
    name, root, _ = fixture_tree
    data = open_dataset(name, root, next(iter(SPLIT_SIZES[name])))
    k = NUM_CLASSES[name]
    assert data.num_classes == k == len(data.class_names) == len(set(data.class_names))
    assert data.palette.shape == (k, 3) and data.palette.dtype == np.uint8
    assert data.ignore_index == 255
    assert data.meta == {"name": name, "num_classes": k, "class_names": list(data.class_names),
                         "palette": data.palette.tolist(), "ignore_index": 255}
    assert data.train_split in data.splits and data.eval_split in data.splits


def test_class_names():
    names = {name: DATASETS[name].class_names for name in REAL}
    assert names["cityscapes"][:3] == ("road", "sidewalk", "building") and names["cityscapes"][-1] == "bicycle"
    assert names["voc_aug"][0] == "background" and names["voc_aug"][15] == "person"
    assert names["voc_aug"][-1] == "tvmonitor"
    assert names["camvid"] == ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                               "Pedestrian", "Bicyclist")
    assert names["ade20k"][:3] == ("wall", "building", "sky") and names["ade20k"][-1] == "flag"
    assert names["ade20k"][7] == "bed"  # no stray whitespace
    assert names["pascal_context59"][0] == "aeroplane" and names["pascal_context59"][-1] == "wood"
    assert "background" not in names["pascal_context59"]
    assert names["coco_stuff10k"][0] == "person" and names["coco_stuff10k"][80] == "banner"
    assert names["coco_stuff10k"][-1] == "wood"


def test_cityscapes_tables_come_from_cityscapesscripts(tmp_path):
    data_cls = DATASETS["cityscapes"]
    assert tuple(data_cls.palette[0]) == name2label["road"].color == (128, 64, 128)
    for train_id, (class_name, colour) in enumerate(zip(data_cls.class_names, data_cls.palette)):
        assert class_name == trainId2label[train_id].name and tuple(colour) == trainId2label[train_id].color
    # raw ids → train ids, spelled out for a few of them
    root = write_fixture("cityscapes", tmp_path, counts={"val": 1}).folder
    folder = root / "gtFine" / "val" / "aachen"
    raw = np.array([[7, 8, 0, 1, 26], [33, 9, 24, 3, 23]], dtype=np.uint8)
    Image.fromarray(raw).save(folder / "aachen_000000_000019_gtFine_labelIds.png")
    Image.fromarray(np.zeros((2, 5, 3), np.uint8)).save(
        root / "leftImg8bit" / "val" / "aachen" / "aachen_000000_000019_leftImg8bit.png")
    _, label = open_dataset("cityscapes", tmp_path, "val").load(0)
    np.testing.assert_array_equal(label, [[0, 1, 255, 255, 13], [18, 255, 11, 255, 10]])
    # a labelTrainIds map, when present, is read instead
    train_ids = np.array([[5, 255, 0, 18, 1], [2, 3, 4, 5, 6]], dtype=np.uint8)
    Image.fromarray(train_ids).save(folder / "aachen_000000_000019_gtFine_labelTrainIds.png")
    _, label = open_dataset("cityscapes", tmp_path, "val").load(0)
    np.testing.assert_array_equal(label, train_ids)


def test_voc_reads_palette_indices_not_colours(tmp_path):
    fixture = write_fixture("voc_aug", tmp_path)
    data = open_dataset("voc_aug", tmp_path, "val")
    path = data.items[0].label
    with Image.open(path) as png:
        assert png.mode == "P"
        rgb = np.asarray(png.convert("RGB"))
    raw = fixture.labels["val"][data.ids[0]]
    assert (raw[0] == 255).all() and (raw[:, -1] == 255).all()  # the void border
    _, label = data.load(0)
    np.testing.assert_array_equal(label, raw)
    np.testing.assert_array_equal(rgb, voc_colormap(256)[raw])
    cmap = voc_colormap(256)
    assert tuple(cmap[0]) == (0, 0, 0) and tuple(cmap[1]) == (128, 0, 0) and tuple(cmap[15]) == (192, 128, 128)
    assert tuple(cmap[255]) == (224, 224, 192)
    np.testing.assert_array_equal(data.palette, cmap[:21])


def test_voc_root_forms_and_train_aug_lists(tmp_path):
    fixture = write_fixture("voc_aug", tmp_path)
    for root in (tmp_path, tmp_path / "VOCdevkit", fixture.folder):
        assert len(open_dataset("voc_aug", root, "train_aug")) == 4
    sets = fixture.folder / "ImageSets" / "Segmentation"
    ids = open_dataset("voc_aug", tmp_path, "train_aug").ids
    (sets / "train_aug.txt").unlink()  # mmseg's converter writes aug.txt, plain ids
    (sets / "aug.txt").write_text("\n".join(ids) + "\n")
    assert open_dataset("voc_aug", tmp_path, "train_aug").ids == ids
    # a train_aug id without an SBD label falls back to its VOC label
    (fixture.folder / "SegmentationClassAug" / f"{ids[0]}.png").unlink()
    data = open_dataset("voc_aug", tmp_path, "train_aug")
    assert data.items[0].label == fixture.folder / "SegmentationClass" / f"{ids[0]}.png"
    np.testing.assert_array_equal(data.load(0)[1], fixture.labels["train"][ids[0]])


def test_items_are_transformed_like_segmentation_folder(tmp_path):
    write_fixture("ade20k", tmp_path)
    data = open_dataset("ade20k", tmp_path, "val", transform=eval_transform())
    item = data[0]
    assert item["id"] == data.ids[0]
    assert tuple(item["image"].shape) == (3, *data.size(0)) and tuple(item["label"].shape) == data.size(0)
    train = open_dataset("ade20k", tmp_path, "train", transform=train_transform(16))
    a, b = train[1, 7], train[1, 7]
    assert tuple(a["image"].shape) == (3, 16, 16)
    assert (a["image"] == b["image"]).all() and (a["label"] == b["label"]).all()  # seeded


def test_datasets_pickle_for_worker_processes(tmp_path):
    write_fixture("voc_aug", tmp_path)
    data = open_dataset("voc_aug", tmp_path, "val", transform=eval_transform())
    copy = pickle.loads(pickle.dumps(data))
    assert copy.ids == data.ids and (copy[0]["label"] == data[0]["label"]).all()


def test_embedded_and_folder_through_the_registry(tmp_path):
    embedded = open_dataset("embedded", tmp_path / "cache", "val", image_size=32, num_train=1, num_val=2)
    folder = open_dataset("folder", embedded.root, "val")
    assert folder.ids == embedded.ids and len(folder) == 2
    assert folder.num_classes == len(folder.class_names) == folder.palette.shape[0]
    assert folder.palette.dtype == np.uint8 and folder.size(0) == (32, 32)
    image, label = folder.load(0)
    assert image.shape == (32, 32, 3) and label.shape == (32, 32)
    with pytest.raises(ConfigError):
        open_dataset("folder", embedded.root, "val", image_size=32)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", REAL)
def test_missing_root_names_layout_and_path(name, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        open_dataset(name, missing, "train")
    text = one_line(err)
    assert f"missing {missing};" in text and DATASETS[name].layout in text
    assert not missing.exists()


INCOMPLETE = {  # a required entry of the val/test split, relative to the dataset folder
    "cityscapes": ("val", "gtFine/val"),
    "voc_aug": ("val", "ImageSets/Segmentation/val.txt"),
    "ade20k": ("val", "annotations/validation"),
    "camvid": ("test", "testannot"),
    "pascal_context59": ("val", "SegmentationClassContext"),
    "coco_stuff10k": ("test", "images/test2014"),
}


def test_incomplete_root_names_the_first_missing_entry(fixture_tree):
    name, root, fixture = fixture_tree
    split, entry = INCOMPLETE[name]
    path = fixture.folder / entry
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    before = tree_state(root)
    for where in (root, fixture.folder):
        with pytest.raises(DataError) as err:
            open_dataset(name, where, split)
        assert f"missing {path};" in one_line(err) and DATASETS[name].layout in str(err.value)
    assert tree_state(root) == before  # nothing written


def test_voc_parent_root_names_the_missing_folder_inside(tmp_path):
    fixture = write_fixture("voc_aug", tmp_path)
    shutil.rmtree(fixture.folder / "JPEGImages")
    with pytest.raises(DataError) as err:
        open_dataset("voc_aug", tmp_path, "val")
    assert f"missing {fixture.folder / 'JPEGImages'};" in one_line(err)


@pytest.mark.parametrize("lose", ["image", "label"])
def test_listed_id_without_its_image_or_label_names_both(fixture_tree, lose):
    name, root, fixture = fixture_tree
    split = next(iter(SPLIT_SIZES[name]))
    data = open_dataset(name, root, split)
    victim = data.items[1]
    (victim.image if lose == "image" else victim.label).unlink()
    before = tree_state(root)
    with pytest.raises(DataError) as err:
        open_dataset(name, root, split)
    text = one_line(err)
    assert str(victim.image) in text and str(victim.label) in text and repr(victim.id) in text
    assert f"{victim.image} ({'missing' if lose == 'image' else 'found'})" in text
    if data.listing:  # VOC, Context: the split file that lists the id
        assert f"(listed in {data.listing})" in text
    assert tree_state(root) == before


OUTSIDE = {"cityscapes": 34, "voc_aug": 21, "ade20k": 151, "camvid": 12, "pascal_context59": 60,
           "coco_stuff10k": 172}


def test_label_value_outside_the_value_set_names_file_and_value(fixture_tree):
    name, root, fixture = fixture_tree
    split = list(SPLIT_SIZES[name])[1]  # Cityscapes val: labelIds maps
    data = open_dataset(name, root, split)
    path = data.items[0].label
    with Image.open(path) as png:
        raw, palette = np.array(png), png.getpalette()
    raw[3, 4] = OUTSIDE[name]
    bad = Image.fromarray(raw)
    if palette:
        bad.putpalette(palette)
    bad.save(path)
    with pytest.raises(DataError) as err:
        data.load(0)
    text = one_line(err)
    assert str(path) in text and f"value {OUTSIDE[name]} " in text
    data.load(1)  # the others still load


def test_colour_label_and_size_mismatch_are_refused(tmp_path):
    write_fixture("camvid", tmp_path)
    data = open_dataset("camvid", tmp_path, "val")
    Image.fromarray(np.zeros((*data.size(0), 3), np.uint8)).save(data.items[0].label)
    with pytest.raises(DataError) as err:
        data.load(0)
    assert str(data.items[0].label) in one_line(err) and "mode RGB" in str(err.value)
    h, w = data.size(1)
    Image.fromarray(np.zeros((h + 1, w), np.uint8)).save(data.items[1].label)
    with pytest.raises(DataError) as err:
        data.load(1)
    assert str(data.items[1].label) in one_line(err) and "differs" in str(err.value)


def test_unreadable_image_and_empty_split(tmp_path):
    write_fixture("ade20k", tmp_path)
    data = open_dataset("ade20k", tmp_path, "val")
    data.items[0].image.write_bytes(b"not a jpeg")
    with pytest.raises(DataError) as err:
        data.load(0)
    assert str(data.items[0].image) in one_line(err)
    for folder in ("images", "annotations"):
        for path in (tmp_path / "ADEChallengeData2016" / folder / "training").iterdir():
            path.unlink()
    with pytest.raises(DataError) as err:
        open_dataset("ade20k", tmp_path, "train")
    assert "no images" in one_line(err)


def test_loaders_only_read(fixture_tree):
    name, root, _ = fixture_tree
    before = tree_state(root)
    os.chmod(root, 0o555)  # a read-only root still opens and loads
    try:
        for split in SPLIT_SIZES[name]:
            data = open_dataset(name, root, split)
            for i in range(len(data)):
                data.load(i), data.size(i)
    finally:
        os.chmod(root, 0o755)
    assert tree_state(root) == before


def _run_config(tmp_path, name, root, *overrides):
    from kdlab.config import dump_config, load_config

    cfg = load_config(["configs/student.yaml"], [f"data.name={name}", f"data.root={root}", f"out_dir={tmp_path}",
                                                 *overrides])
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "config.yaml").write_text(dump_config(cfg))
    return cfg


def test_the_training_and_evaluation_splits_can_be_chosen(tmp_path):
    from kdlab.engine import build_data

    fixture = write_fixture("voc_aug", tmp_path / "voc")
    usual = _run_config(tmp_path, "voc_aug", fixture.folder)
    assert len(build_data(usual)[0]) == SPLIT_SIZES["voc_aug"]["train_aug"]  # voc_aug's usual training split
    chosen = _run_config(tmp_path, "voc_aug", fixture.folder, "name=ppd", "data.train_split=train",
                         "data.eval_split=train")
    train_set, val_set, _ = build_data(chosen)
    assert train_set.ids == val_set.ids == fixture.ids("train")
    for key in ("train_split", "eval_split"):
        wrong = _run_config(tmp_path, "voc_aug", fixture.folder, f"name=wrong-{key}", f"data.{key}=trian")
        with pytest.raises(ConfigError, match=rf"^data\.{key}: voc_aug has no split 'trian'; choose one of train, "):
            build_data(wrong)


def test_costs_are_measured_at_the_datasets_test_size(tmp_path):
    from kdlab.inspection import test_size

    fixture = write_fixture("cityscapes", tmp_path / "cs", sizes=((20, 40),))
    assert test_size(_run_config(tmp_path, "cityscapes", fixture.folder).run_dir) == (20, 40)
    # keep-ratio into [100, 50]: x2.5 (the short side reaches 50 first)
    resized = _run_config(tmp_path, "cityscapes", fixture.folder, "name=resized", "eval.resize=[100, 50]")
    assert test_size(resized.run_dir) == (50, 100)
