"""Image-caption loading: tables, image folders, WebDataset shards; bad images skipped and counted; modes to RGB."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmssl.data.image_sources import raw_rows
from mmssl.data.image_text import load_image_text
from mmssl.data.images import BadImage, open_image, to_rgb
from mmssl.errors import DataError, RecipeError
from mmssl.config import DataConfig, WorldConfig


def _png(path: Path, image: Image.Image) -> str:
    image.save(path)
    return path.name


def _rgb(colour=(200, 30, 30), size=(12, 10)) -> Image.Image:
    return Image.new("RGB", size, colour)


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    """Six good images in awkward modes and four bad ones, listed in a jsonl file."""
    rows = []
    rows.append({"image": _png(tmp_path / "rgb.png", _rgb()), "caption": "a red block", "label": "red"})
    palette = _rgb((10, 200, 10)).convert("P", palette=Image.Palette.ADAPTIVE)
    rows.append({"image": _png(tmp_path / "palette.png", palette), "caption": "a green block", "label": "green"})
    rgba = Image.new("RGBA", (8, 8), (0, 0, 255, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    rows.append({"image": _png(tmp_path / "rgba.png", rgba), "caption": "mostly transparent", "label": "blue"})
    sixteen = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))
    sixteen.putpixel((0, 0), 32896)
    assert sixteen.mode.startswith("I")
    rows.append({"image": _png(tmp_path / "sixteen.png", sixteen), "caption": "a white 16-bit image", "label": "red"})
    rows.append({"image": _png(tmp_path / "gray.png", Image.new("L", (8, 8), 77)), "caption": ["gray", "grey"],
                 "label": "green"})
    la = Image.new("LA", (8, 8), (0, 0))
    rows.append({"image": _png(tmp_path / "la.png", la), "caption": "transparent gray", "label": "blue"})
    # bad ones
    (tmp_path / "empty.png").write_bytes(b"")
    rows.append({"image": "empty.png", "caption": "zero bytes", "label": "red"})
    buf = io.BytesIO()
    _rgb(size=(64, 64)).save(buf, format="PNG")
    (tmp_path / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    rows.append({"image": "truncated.png", "caption": "cut off", "label": "red"})
    (tmp_path / "text.png").write_bytes(b"this is not an image at all")
    rows.append({"image": "text.png", "caption": "garbage", "label": "red"})
    rows.append({"image": "missing.png", "caption": "not there", "label": "red"})
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return tmp_path


def test_bad_images_are_skipped_and_counted(mixed_folder: Path):
    cfg = DataConfig(source="files", path=str(mixed_folder / "data.jsonl"), eval_fraction=0.0)
    splits = load_image_text(cfg, size=8)
    table = splits.train
    assert len(table) == 6
    assert table.skipped == 4
    assert table.skipped_reasons == {"empty": 1, "missing file": 1, "unreadable": 2}
    assert table.images.dtype == torch.uint8 and table.images.shape == (6, 3, 8, 8)
    assert splits.class_names == ["blue", "green", "red"]
    assert table.labels.tolist() == [2, 1, 0, 2, 1, 0]
    assert table.captions[4] == ["gray", "grey"]


def test_modes_convert_to_rgb(mixed_folder: Path):
    rgba = open_image(mixed_folder / "rgba.png")
    assert rgba.mode == "RGB"
    assert rgba.getpixel((0, 0)) == (0, 0, 255)  # opaque pixel kept
    assert rgba.getpixel((5, 5)) == (255, 255, 255)  # transparent -> white, not the hidden blue
    sixteen = open_image(mixed_folder / "sixteen.png")
    assert sixteen.getpixel((3, 3)) == (255, 255, 255)
    assert sixteen.getpixel((0, 0)) == (128, 128, 128)  # scaled, not clipped to 255
    assert open_image(mixed_folder / "gray.png").getpixel((1, 1)) == (77, 77, 77)
    assert open_image(mixed_folder / "la.png").getpixel((1, 1)) == (255, 255, 255)
    palette = open_image(mixed_folder / "palette.png")
    assert palette.mode == "RGB" and max(abs(a - b) for a, b in zip(palette.getpixel((0, 0)), (10, 200, 10))) <= 8
    pal_alpha = Image.new("P", (4, 4), 1)
    pal_alpha.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal_alpha.info["transparency"] = 1
    assert to_rgb(pal_alpha).getpixel((0, 0)) == (255, 255, 255)
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))
    assert to_rgb(cmyk).getpixel((0, 0)) == (255, 0, 0)


def test_open_image_reasons(tmp_path: Path):
    (tmp_path / "z.jpg").write_bytes(b"")
    with pytest.raises(BadImage, match="empty"):
        open_image(tmp_path / "z.jpg")
    with pytest.raises(BadImage, match="missing"):
        open_image(tmp_path / "nope.jpg")
    with pytest.raises(BadImage, match="empty"):
        open_image(b"")
    with pytest.raises(BadImage, match="unreadable"):
        open_image(b"GIF89a\x00")


def test_all_bad_is_a_clear_error(tmp_path: Path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "d.csv").write_text("image,caption\na.png,zero\nb.png,missing\n")
    with pytest.raises(DataError, match="no usable image-caption examples"):
        load_image_text(DataConfig(source="files", path=str(tmp_path / "d.csv"), eval_fraction=0.0), size=8)


def test_csv_with_several_caption_columns_and_eval_split(tmp_path: Path):
    lines = ["path,c1,c2,label"]
    for i in range(30):
        lines.append(f"img{i}.png,first {i},second {i},{i % 3}")
        _png(tmp_path / f"img{i}.png", _rgb((i * 8, 0, 0)))
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    cfg = DataConfig(source="files", path=str(tmp_path / "d.csv"), columns={"captions": "c1,c2"}, eval_fraction=0.2)
    splits = load_image_text(cfg, size=8, class_names=["zero", "one", "two"])
    assert len(splits.train) == 24 and len(splits.eval) == 6
    assert all(len(c) == 2 and c[0].startswith("first") for c in splits.train.captions)
    assert set(splits.train.labels.tolist()) <= {0, 1, 2}
    with pytest.raises(DataError, match="data.columns.captions"):
        load_image_text(DataConfig(source="files", path=str(tmp_path / "d.csv"), columns={"captions": "nope"}), size=8)


def test_images_resized_like_open_clip_eval(tmp_path: Path):
    from open_clip.transform import image_transform

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (30, 45, 3), dtype=np.uint8))
    _png(tmp_path / "x.png", image)
    (tmp_path / "d.jsonl").write_text(json.dumps({"image": "x.png", "caption": "noise"}) + "\n")
    table = load_image_text(DataConfig(source="files", path=str(tmp_path / "d.jsonl"), eval_fraction=0.0), size=16).train
    reference = image_transform(16, is_train=False, mean=(0, 0, 0), std=(1, 1, 1))(image)
    assert torch.allclose(table.images[0].float() / 255, reference, atol=1e-6)


def test_imagefolder_with_metadata_and_with_class_folders(tmp_path: Path):
    meta = tmp_path / "meta"
    meta.mkdir()
    _png(meta / "a.png", _rgb())
    _png(meta / "b.png", _rgb((0, 0, 200)))
    (meta / "metadata.jsonl").write_text(
        json.dumps({"file_name": "a.png", "text": "red"}) + "\n" + json.dumps({"file_name": "b.png", "text": "blue"}) + "\n")
    splits = load_image_text(DataConfig(source="files", path=str(meta), format="imagefolder", eval_fraction=0), size=8)
    assert splits.train.captions == [["red"], ["blue"]]

    classes = tmp_path / "classes"
    for name in ("golden_retriever", "tabby_cat"):
        (classes / name).mkdir(parents=True)
        for i in range(2):
            _png(classes / name / f"{i}.png", _rgb())
    splits = load_image_text(DataConfig(source="files", path=str(classes), eval_fraction=0), size=8)
    assert splits.class_names == ["golden retriever", "tabby cat"]
    assert splits.train.captions[0] == ["golden retriever"] and splits.train.labels.tolist() == [0, 0, 1, 1]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards_stream_and_skip_bad_samples(tmp_path: Path):
    buf = io.BytesIO()
    _rgb().save(buf, format="PNG")
    png = buf.getvalue()
    for shard in range(2):
        with tarfile.open(tmp_path / f"shard-{shard:05d}.tar", "w") as tar:
            for i in range(3):
                key = f"s{shard}_{i}"
                _add(tar, f"{key}.png", png if i != 2 else b"")  # third sample's image is empty
                _add(tar, f"{key}.txt", f"caption {key}".encode())
                _add(tar, f"{key}.cls", str(i % 2).encode())
    with tarfile.open(tmp_path / "shard-00002.tar", "w") as tar:
        _add(tar, "j.jpg", png)
        _add(tar, "j.json", json.dumps({"caption": "from json"}).encode())
    cfg = DataConfig(source="files", path=str(tmp_path), eval_fraction=0)
    rows = raw_rows(cfg)
    assert len(rows.rows) == 7
    table = load_image_text(cfg, size=8).train
    assert len(table) == 5 and table.skipped == 2
    assert table.captions[0] == ["caption s0_0"] and table.captions[-1] == ["from json"]


def test_world_image_text_table():
    cfg = DataConfig(world=WorldConfig(num_scenes=40, num_colours=2, num_shapes=2))
    splits = load_image_text(cfg, size=32)
    assert len(splits.train) == 40 and len(splits.eval) == 8
    assert splits.class_names == ["red circle", "red square", "green circle", "green square"]
    assert all(len(c) == 5 for c in splits.train.captions)
    assert splits.train.zero_shot.any() and not splits.train.zero_shot.all()


def test_images_on_disk_equal_images_in_memory(mixed_folder: Path, tmp_path: Path):
    """store=disk: the same table, its images backed by a memory-mapped file whose name is already gone
    (nothing left behind, even after a kill); bad images skipped the same way."""
    cfg = DataConfig(source="files", path=str(mixed_folder / "data.jsonl"), eval_fraction=0.0)
    memory = load_image_text(cfg, size=8).train
    store = tmp_path / "store"
    disk = load_image_text(cfg, size=8, store="disk", store_dir=store).train
    assert torch.equal(disk.images, memory.images) and disk.captions == memory.captions
    assert disk.skipped_reasons == memory.skipped_reasons and torch.equal(disk.labels, memory.labels)
    assert list(store.iterdir()) == []                          # unlinked at once
    mapped = [line for line in Path("/proc/self/maps").read_text().splitlines() if str(store) in line]
    assert mapped and all("(deleted)" in line for line in mapped)  # ... yet the images are mapped from it
    with pytest.raises(ValueError, match="store_dir"):
        load_image_text(cfg, size=8, store="disk")


def test_duplicate_class_names_are_an_error(tmp_path: Path):
    _png(tmp_path / "a.png", _rgb())
    (tmp_path / "d.jsonl").write_text(json.dumps({"image": "a.png", "caption": "x", "label": 0}) + "\n")
    cfg = DataConfig(source="files", path=str(tmp_path / "d.jsonl"), eval_fraction=0)
    with pytest.raises(RecipeError, match="duplicate class names"):
        load_image_text(cfg, size=8, class_names=["cat", "dog", "Cat"])


def test_parquet_with_embedded_image_bytes_and_hub_style_folder(tmp_path: Path):
    import datasets

    images = [_rgb((i * 40, 0, 0)) for i in range(4)] + [None]
    ds = datasets.Dataset.from_dict({"image": images, "caption": [f"red {i}" for i in range(5)]})
    ds = ds.cast_column("image", datasets.Image())
    folder = tmp_path / "hub"
    folder.mkdir()
    ds.to_parquet(str(folder / "train.parquet"))
    table = load_image_text(DataConfig(source="files", path=str(folder / "train.parquet"), eval_fraction=0), size=8).train
    assert len(table) == 4 and table.skipped == 1  # the missing image
    assert table.images[2, 0, 0, 0] == 80
    hub = load_image_text(DataConfig(source="hub", path=str(folder), eval_fraction=0), size=8).train
    assert torch.equal(hub.images, table.images) and hub.captions == table.captions
