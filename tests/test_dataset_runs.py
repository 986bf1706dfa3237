"""`kdlab train` and `kdlab eval` run end to end on a tiny tree of every real dataset's format."""

import json

import pytest

from kdlab.cli import main
from kdlab.data.datasets.fixtures import write_fixture

REAL_DATASETS = ["cityscapes", "voc_aug", "ade20k", "camvid", "pascal_context59", "coco_stuff10k"]


@pytest.mark.parametrize("name", REAL_DATASETS)
def test_train_and_eval_on_a_fixture_tree(name, tmp_path, capsys):
    """Odd and mixed image sizes: training crops pad with ignore, evaluation batches images of one
    size together and pads each batch to the model's stride."""
    root = tmp_path / "data"
    write_fixture(name, root)
    data = [f"data.name={name}", f"data.root={root}"]
    assert main(["train", "-c", "configs/student.yaml", *data, f"out_dir={tmp_path}", "name=run", "data.crop_size=32",
                 "train.iterations=2", "train.batch_size=2", "train.eval_interval=0", "eval.batch_size=4"]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert len(results["class_names"]) == len(results["IoU"])
    assert main(["eval", str(tmp_path / "run"), "-c", "configs/student.yaml", *data,
                 "--out", str(tmp_path / "scores.json")]) == 0
    assert json.loads((tmp_path / "scores.json").read_text())["mIoU"] == pytest.approx(results["mIoU"])
