"""Image-only loading (`load_images`): every source kind, labels where the data has them, bad images skipped
and counted, images without captions kept, clear errors for unusable paths."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmssl.config import DataConfig, WorldConfig
from mmssl.data.image_sources import data_description, load_images, streamed_image_splits
from mmssl.data.image_text import load_image_text
from mmssl.data.images import decode_images
from mmssl.errors import DataError


def _rgb(colour=(200, 30, 30), size=(12, 10)) -> Image.Image:
    return Image.new("RGB", size, colour)


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _files(**kw) -> DataConfig:
    return DataConfig(source="files", eval_fraction=0.0, **kw)


def test_class_folders_give_labels_and_a_corrupt_image_is_skipped_and_counted(tmp_path: Path):
    for name, colour in (("tabby_cat", (200, 0, 0)), ("dog", (0, 0, 200))):
        (tmp_path / name).mkdir()
        for i in range(3):
            _rgb(colour).save(tmp_path / name / f"{i}.png")
    (tmp_path / "dog" / "broken.png").write_bytes(b"not a png")
    splits = load_images(_files(path=str(tmp_path)), size=8)
    table = splits.train
    assert splits.class_names == ["dog", "tabby cat"] and splits.eval is None
    assert len(table) == 6 and table.images.shape == (6, 3, 8, 8) and table.images.dtype == torch.uint8
    assert table.skipped == 1 and table.skipped_reasons == {"unreadable": 1}
    assert "broken.png" in table.skipped_examples[0]
    assert table.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert table.images[0, 2, 0, 0] == 200 and table.images[3, 0, 0, 0] == 200  # dog blue, cat red


def test_flat_folder_has_no_labels(tmp_path: Path):
    for i in range(4):
        _rgb((i * 50, 0, 0)).save(tmp_path / f"{i}.jpg")
    splits = load_images(_files(path=str(tmp_path)), size=8)
    assert splits.class_names is None and len(splits.train) == 4
    assert splits.train.labels.tolist() == [-1] * 4
    with pytest.raises(DataError, match="has no caption"):  # CLIP still needs captions
        load_image_text(_files(path=str(tmp_path)), size=8)


def test_table_without_captions_keeps_every_image_and_labels_by_name(tmp_path: Path):
    rows = []
    for i in range(6):
        _rgb((0, i * 40, 0)).save(tmp_path / f"{i}.png")
        row = {"file": f"{i}.png", "label": ["cat", "dog"][i % 2]}
        if i < 3:
            row["caption"] = f"picture {i}"  # captions on some rows only: image-only loading ignores them
        rows.append(row)
    rows.append({"file": "missing.png", "label": "cat"})
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    splits = load_images(_files(path=str(tmp_path / "d.jsonl")), size=8)
    assert len(splits.train) == 6 and splits.train.skipped_reasons == {"missing file": 1}
    assert splits.class_names == ["cat", "dog"] and splits.train.labels.tolist() == [0, 1, 0, 1, 0, 1]
    clip = load_image_text(_files(path=str(tmp_path / "d.jsonl")), size=8).train
    assert len(clip) == 3 and clip.skipped_reasons == {"missing file": 1, "no caption": 3}


def test_csv_with_mapped_columns_and_a_seeded_eval_split(tmp_path: Path):
    lines = ["picture,kind"] + [f"{i}.png,{'ab'[i % 2]}" for i in range(30)]
    for i in range(30):
        _rgb((i * 8, 0, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    cfg = DataConfig(source="files", path=str(tmp_path / "d.csv"), columns={"image": "picture", "label": "kind"},
                     eval_fraction=0.2)
    splits = load_images(cfg, size=8, seed=3)
    assert len(splits.train) == 24 and len(splits.eval) == 6 and splits.class_names == ["a", "b"]
    reds = sorted(int(v) for v in torch.cat([splits.train.images, splits.eval.images])[:, 0, 0, 0])
    assert reds == [i * 8 for i in range(30)]  # every image once, in one split or the other
    again = load_images(cfg, size=8, seed=3)
    assert torch.equal(again.eval.images, splits.eval.images)
    assert not torch.equal(load_images(cfg, size=8, seed=4).eval.images, splits.eval.images)


def test_unlabelled_images_all_train_and_the_log_says_why_there_is_no_eval(tmp_path: Path, caplog):
    """No labels, nothing to evaluate by class: data.eval_fraction (5 % by default) holds nothing out."""
    for i in range(24):
        _rgb((i * 10, 0, 0), size=(4, 4)).save(tmp_path / f"{i}.png")
    with caplog.at_level(logging.INFO, logger="mmssl.data.image_sources"):
        splits = load_images(DataConfig(source="files", path=str(tmp_path)), size=4)
    assert len(splits.train) == 24 and splits.eval is None and splits.class_names is None
    assert data_description(DataConfig(source="files", path=str(tmp_path))) == f"local images ({tmp_path.name!r})"
    assert "24 training images, 0 eval images (no eval split: the images carry no class labels" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mmssl.data.image_sources"):  # streamed: unlabelled eval_path, same
        streamed = streamed_image_splits(DataConfig(source="files", path=str(tmp_path), eval_path=str(tmp_path),
                                                    streaming=True), size=4)
    assert len(streamed.train) == 24 and streamed.eval is None
    assert "no evaluation: they carry no class labels" in caplog.text


def test_table_without_an_image_column_is_one_clear_error(tmp_path: Path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"caption": "no picture", "label": 1}) + "\n")
    with pytest.raises(DataError, match=r"d.jsonl.*no image column.*data.columns.image"):
        load_images(_files(path=str(tmp_path / "d.jsonl")), size=8)


def test_folder_without_images_is_one_clear_error(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.md").write_text("nothing to see")
    with pytest.raises(DataError, match=rf"{tmp_path.name}.*no images .* in this folder"):
        load_images(_files(path=str(tmp_path)), size=8)
    with pytest.raises(DataError, match="no such file or folder"):
        load_images(_files(path=str(tmp_path / "nope.jsonl")), size=8)


def test_all_bad_is_a_clear_error(tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"no usable images \(all 1 skipped"):
        load_images(_files(path=str(tmp_path)), size=8)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards_without_captions(tmp_path: Path):
    png = _png_bytes(_rgb())
    with tarfile.open(tmp_path / "shard-00000.tar", "w") as tar:
        for i in range(4):
            _add(tar, f"s{i}.png", png if i != 1 else b"\x89PNG broken")
            if i < 3:
                _add(tar, f"s{i}.cls", str(i % 2).encode())
            else:
                _add(tar, f"s{i}.json", json.dumps({"other": 1}).encode())  # no label, no caption
    table = load_images(_files(path=str(tmp_path)), size=8).train
    assert len(table) == 3 and table.skipped_reasons == {"unreadable": 1}
    assert table.labels.tolist() == [0, 0, -1]


def test_hub_dataset_with_class_labels(tmp_path: Path):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["red", "blue"])})
    ds = datasets.Dataset.from_dict({"image": [_rgb((200, 0, 0)), _rgb((0, 0, 200)), None], "label": [0, 1, 1]},
                                    features=features)
    folder = tmp_path / "hub"
    folder.mkdir()
    ds.to_parquet(str(folder / "train.parquet"))
    splits = load_images(DataConfig(source="hub", path=str(folder), eval_fraction=0), size=8)
    assert splits.class_names == ["red", "blue"]
    assert len(splits.train) == 2 and splits.train.skipped == 1 and splits.train.labels.tolist() == [0, 1]


def test_world_gives_shape_labels():
    cfg = DataConfig(world=WorldConfig(num_scenes=60, num_colours=3, num_shapes=3, pair_fraction=0.0))
    splits = load_images(cfg, size=24)
    assert splits.class_names == ["circle", "square", "triangle"]
    assert len(splits.train) == 60 and len(splits.eval) == 12
    assert set(splits.train.labels.tolist()) == {0, 1, 2}
    pairs = load_images(DataConfig(world=WorldConfig(num_scenes=60, pair_fraction=1.0)), size=24).train
    assert (pairs.labels == -1).all()  # two shapes in one picture: no single shape label


def test_images_on_disk_equal_images_in_memory(tmp_path: Path):
    cfg = DataConfig(world=WorldConfig(num_scenes=20))
    memory = load_images(cfg, size=16)
    store = tmp_path / "store"
    disk = load_images(cfg, size=16, store="disk", store_dir=store)
    assert torch.equal(disk.train.images, memory.train.images) and torch.equal(disk.eval.images, memory.eval.images)
    assert torch.equal(disk.train.labels, memory.train.labels)
    assert list(store.iterdir()) == []
    with pytest.raises(ValueError, match="store_dir"):
        load_images(cfg, size=16, store="disk")


def test_decode_images_keeps_order_and_counts_drops():
    sources = [_rgb((10, 0, 0)), b"", _rgb((20, 0, 0)), _rgb((30, 0, 0))]
    out = decode_images(sources, 4, drop=[None, None, "no caption", None])
    assert out.kept == [0, 3] and out.images[:, 0, 0, 0].tolist() == [10, 30]
    assert out.skipped_reasons == {"empty": 1, "no caption": 1} and out.skipped == 2
