"""Streamed sources: shard listing, exact resume of the stateful loader (keys recorded), ranks reading
disjoint shards, bad records counted, text packed on the fly, and `mmssl prepare` round trips."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmssl.config import DataConfig
from mmssl.data.shards import expand_braces, list_files, read_tar
from mmssl.data.stream_sources import ImageTransform, PackTransform, collate_images, data_sources, wants_streaming
from mmssl.data.streaming import SampleStream, Source, Transform, make_loader, skipped_counts
from mmssl.errors import DataError
from mmssl.prepare import prepare


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _png(colour: tuple[int, int, int], size: int = 12) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(out, format="PNG")
    return out.getvalue()


def text_shards(root: Path, shards: int = 5, per: int = 23) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        _tar(root / f"shard-{s:03d}.tar", [(f"s{s}_{i:04d}.txt", f"caption {s} {i}".encode()) for i in range(per)])
    return list_files(str(root / f"shard-{{000..{shards - 1:03d}}}.tar"))


class Keys(Transform):
    def __call__(self, record):
        return [record["__key__"]]


def read(stream: SampleStream, workers: int, batches: int, state: dict | None = None) -> tuple[list[str], dict]:
    loader = make_loader(stream, 4, list, workers)
    if state is not None:
        loader.load_state_dict(state)
    keys: list[str] = []
    for i, batch in enumerate(loader):
        keys += batch
        if i + 1 == batches:
            return keys, loader.state_dict()
    return keys, loader.state_dict()


def test_brace_patterns_and_globs_list_shards_like_open_clip(tmp_path):
    assert expand_braces("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert expand_braces("{x,y}-{8..10}.tar") == ["x-8.tar", "x-9.tar", "x-10.tar", "y-8.tar", "y-9.tar", "y-10.tar"]
    files = text_shards(tmp_path / "s", shards=3, per=2)
    assert [Path(f).name for f in files] == ["shard-000.tar", "shard-001.tar", "shard-002.tar"]
    assert list_files(str(tmp_path / "s")) == list_files(str(tmp_path / "s" / "*.tar")) == files
    with pytest.raises(DataError, match=r"shard-003.tar.*does not exist"):
        list_files(str(tmp_path / "s" / "shard-{000..003}.tar"))
    with pytest.raises(DataError, match="no such file or folder"):
        list_files(str(tmp_path / "nothing"))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_restored_loader_yields_exactly_the_keys_an_unbroken_one_would(tmp_path, workers):
    """Shard order by (seed, pass), no shuffle buffer: stopping after 7 batches, saving the loader's state and
    restoring it in a new loader continues with exactly the next keys, across the end of a pass."""
    files = text_shards(tmp_path / "s")
    source = [Source(files, read_tar, "test")]
    unbroken, _ = read(SampleStream(source, Keys(), seed=3), workers, 50)
    head, state = read(SampleStream(source, Keys(), seed=3), workers, 7)
    tail, _ = read(SampleStream(source, Keys(), seed=3), workers, 50 - 7, state)
    assert head + tail == unbroken
    assert len(set(unbroken[:100])) > 90 and len(unbroken) == 200  # 115 samples a pass: the tail crossed into pass 2
    assert json.loads(json.dumps(state, default=str))  # plain data (saved with torch.save(weights_only))


def test_a_shuffle_buffer_loses_at_most_its_records_on_resume_and_repeats_none(tmp_path):
    files = text_shards(tmp_path / "s", shards=4, per=50)  # 200 samples a pass
    source = [Source(files, read_tar, "test")]
    unbroken, _ = read(SampleStream(source, Keys(), seed=1, shuffle_buffer=16), 0, 40)
    head, state = read(SampleStream(source, Keys(), seed=1, shuffle_buffer=16), 0, 10)
    tail, _ = read(SampleStream(source, Keys(), seed=1, shuffle_buffer=16), 0, 40, state)
    first_pass = head + tail[: 200 - len(head) - 16]
    assert len(set(first_pass)) == len(first_pass)  # nothing seen twice within the pass
    missing = set(unbroken[:200]) - set(head + tail[:200])
    assert 0 < len(missing) <= 16
    assert unbroken[:40] != sorted(unbroken[:40])  # the buffer does shuffle


@pytest.mark.parametrize("shards", [5, 1])
def test_each_process_reads_its_own_samples(tmp_path, shards):
    """Five shards on two processes: 3 + 2 shards, disjoint; one shard: split by example, still disjoint."""
    files = text_shards(tmp_path / "s", shards=shards, per=20)
    seen = []
    for rank in range(2):
        stream = SampleStream([Source(files, read_tar, "test")], Keys(), seed=0)
        stream.place(rank, 2)
        keys, _ = read(stream, 0, 30)  # a few passes
        seen.append(set(keys))
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == {f"shard-{s:03d}.tar/s{s}_{i:04d}" for s in range(shards) for i in range(20)}


def test_bad_records_are_skipped_counted_and_named(tmp_path):
    root = tmp_path / "s"
    root.mkdir()
    good = _png((200, 10, 10))
    _tar(root / "a.tar", [("k1.png", good), ("k1.txt", b"a red square"),
                          ("k2.png", b"\x89PNG not really"), ("k2.txt", b"broken image"),
                          ("k3.png", good),  # no caption
                          ("k4.png", good), ("k4.txt", b"another red square")])
    _tar(root / "b.tar", [(f"m{i}.{ext}", data) for i in range(3) for ext, data in (("png", good), ("txt", b"x"))])
    whole = (root / "b.tar").read_bytes()
    (root / "b.tar").write_bytes(whole[:4700])  # truncated inside the third image

    class Tokens:
        def __call__(self, captions):
            return torch.ones(len(captions), 4, dtype=torch.long)

    stream = SampleStream(data_sources(DataConfig(source="files", path=str(root)), "image_text"),
                          ImageTransform(8, {}, Tokens()), seed=0)
    loader = make_loader(stream, 2, collate_images, 0)
    batches = [b for _, b in zip(range(10), loader)]  # a few passes over both shards
    assert all(b["image"].shape == (2, 3, 8, 8) and b["image"].dtype == torch.uint8 for b in batches)
    counts, examples = skipped_counts(loader.state_dict())
    assert counts["no caption"] >= 1 and counts["unreadable"] >= 1 and counts["corrupt shard"] >= 1
    assert any("k2" in e for e in examples)


def test_text_is_packed_into_full_blocks_on_the_fly_with_the_carry_resumed(tmp_path):
    from mmssl.data.tokenizers import train_wordpiece

    texts = [f"the {c} {s} is {p}" for c in ("red", "blue") for s in ("circle", "square") for p in ("left", "up")] * 5
    (tmp_path / "c.txt").write_text("\n".join(texts) + "\n")
    tokenizer = train_wordpiece([texts], 200, 1, True)
    flat = [t for text in texts for t in tokenizer(text)["input_ids"]]
    sources = data_sources(DataConfig(source="files", path=str(tmp_path / "c.txt")), "text")

    def blocks(stream, count, state=None):
        loader = make_loader(stream, 1, lambda rows: rows[0]["input_ids"], 0)
        if state is not None:
            loader.load_state_dict(state)
        out = [b for _, b in zip(range(count), loader)]
        return out, loader.state_dict()

    def stream():
        return SampleStream(sources, PackTransform(tokenizer, 7, True, False), seed=0)

    unbroken, _ = blocks(stream(), 12)
    assert all(len(b) == 7 for b in unbroken) and torch.cat(unbroken).tolist() == flat[: 12 * 7]
    head, state = blocks(stream(), 5)
    assert state  # the carry (tokens short of a block) is in it
    tail, _ = blocks(stream(), 7, state)
    assert [b.tolist() for b in head + tail] == [b.tolist() for b in unbroken]


def test_auto_streams_large_local_data_only(tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("a line\n")
    assert not wants_streaming(DataConfig(source="files", path=str(small)))
    assert wants_streaming(DataConfig(source="files", path=str(small), streaming=True))
    assert not wants_streaming(DataConfig(source="world"))
    assert wants_streaming(DataConfig(source="files", path=f"{small}::{small}", weights=[1, 2]))
    from mmssl.errors import RecipeError

    with pytest.raises(RecipeError, match="only a stream reads; set data.streaming to true or auto"):
        wants_streaming(DataConfig(source="files", path=f"{small}::{small}", streaming=False))


def test_prepare_writes_shards_that_stream_back_the_same_images_and_is_idempotent(tmp_path):
    folder = tmp_path / "photos"
    for name, colour in (("cat", (250, 0, 0)), ("dog", (0, 0, 250))):
        (folder / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 16), colour).save(folder / name / f"{i}.png")
    (folder / "dog" / "bad.jpg").write_bytes(b"not a jpeg")
    data = DataConfig(source="files", path=str(folder), format="imagefolder")
    summary = prepare(data, str(tmp_path / "shards"), "images", shard_size=4)
    assert summary["samples"] == 6 and summary["skipped"] == {"unreadable": 1}
    sizes = json.loads((tmp_path / "shards" / "sizes.json").read_text())
    assert sum(sizes.values()) == 6 and all(n <= 4 for n in sizes.values())
    again = prepare(data, str(tmp_path / "shards"), "images", shard_size=4)
    assert again["unchanged"] and again["samples"] == 6

    stream_cfg = DataConfig(source="files", path=str(tmp_path / "shards"), streaming=True)
    sources = data_sources(stream_cfg, "images")
    assert sum(s.num_samples or 0 for s in sources) == 6  # known from sizes.json
    loader = make_loader(SampleStream(sources, ImageTransform(8, {}), seed=0), 6, collate_images, 0)
    images = next(iter(loader))["image"]
    reds = sorted(int(img[0].float().mean()) for img in images)
    assert reds == [0, 0, 0, 250, 250, 250]

    with pytest.raises(DataError, match="prepared from other data or settings"):
        prepare(data, str(tmp_path / "shards"), "images", shard_size=2)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        prepare(data, str(tmp_path / "mine"), "images")
    from mmssl.errors import RecipeError

    with pytest.raises(RecipeError, match="never writes over"):
        prepare(data, str(folder / "cat"), "images")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_weighted_sources_are_drawn_in_proportion(tmp_path):
    """Two sources joined with '::' and weighted 1:3: the stream draws from them in about that proportion."""
    text_shards(tmp_path / "a", shards=2, per=200)
    for f in text_shards(tmp_path / "b", shards=2, per=200):
        Path(f).rename(Path(f).with_name("other-" + Path(f).name))
    cfg = DataConfig(source="files", path=f"{tmp_path / 'a'}::{tmp_path / 'b'}", weights=[1.0, 3.0])
    sources = data_sources(cfg, "text")
    assert [len(s.shards) for s in sources] == [2, 2] and [s.weight for s in sources] == [1.0, 3.0]
    keys, _ = read(SampleStream(sources, Keys(), seed=0), 0, 100)
    share = sum(k.startswith("other-") for k in keys) / len(keys)
    assert 0.65 < share < 0.85, share


def test_resampled_passes_draw_shards_with_replacement(tmp_path):
    files = text_shards(tmp_path / "s", shards=6, per=4)
    plain, _ = read(SampleStream([Source(files, read_tar, "t")], Keys(), seed=0), 0, 6)
    resampled, _ = read(SampleStream([Source(files, read_tar, "t")], Keys(), seed=0, resampled=True), 0, 6)
    shards = [{k.split("/")[0] for k in keys} for keys in (plain, resampled)]  # one pass: 6 shards x 4 samples
    assert len(shards[0]) == 6 and len(shards[1]) < 6
    assert len(resampled) == 24 and len(set(resampled)) < 24  # a shard drawn twice gives its samples twice


@pytest.mark.parametrize("strategy, workers", [("alternate", 0), ("sample", 2), ("sum", 2)])
def test_a_mixed_stream_of_steps_resumes_exactly_and_keeps_its_shares(tmp_path, strategy, workers):
    """A combined recipe's streams as one stream of steps: restored mid-way (with two workers making every
    other step), it continues with exactly the steps an unbroken one makes; alternate/sample keep 1:2."""
    from mmssl.data.streams import MixedStream

    x = text_shards(tmp_path / "x", shards=4, per=20)
    y = [str(Path(f).rename(Path(f).with_name("y-" + Path(f).name))) for f in text_shards(tmp_path / "y", shards=4, per=20)]

    def mixed():
        streams = {"x": SampleStream([Source(x, read_tar, "x")], Keys(), seed=0),
                   "y": SampleStream([Source(y, read_tar, "y")], Keys(), seed=0)}
        return MixedStream(streams, {"x": list, "y": list}, [1.0, 2.0], strategy, 3, seed=0)

    def steps(count, state=None):
        loader = make_loader(mixed(), None, lambda step: step, workers)
        if state is not None:
            loader.load_state_dict(state)
        out = [(sorted(s["parts"]), [k for part in s["parts"].values() for k in part]) for _, s in zip(range(count), loader)]
        return out, loader.state_dict()

    unbroken, _ = steps(30)
    head, state = steps(11)
    tail, _ = steps(19, state)
    assert head + tail == unbroken
    runs = [labels for labels, _ in unbroken]
    if strategy == "sum":
        assert all(labels == ["x", "y"] for labels in runs)
    else:
        assert all(len(labels) == 1 for labels in runs)
        share = sum(labels == ["y"] for labels in runs) / len(runs)
        assert (share == pytest.approx(2 / 3)) if strategy == "alternate" else 0.45 < share < 0.9
    assert all(len(keys) == 3 * len(labels) for labels, keys in unbroken)
