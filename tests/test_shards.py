"""Shard layer: encoding, deterministic atomic writing, and the resumable fault-tolerant reader."""
from __future__ import annotations

import io
import os
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fourm.data.shard_reader import CorruptSampleError, ShardDataset, SkipStats, _scan_plain, _scan_tarfile, index_shard
from fourm.data.shards import (
    ShardWriter,
    decode_member,
    encode_sample,
    iter_tar_names,
    list_shards,
    read_metadata,
    write_metadata,
    write_shard,
)

SHARD_SIZES = (5, 5, 3)  # uneven on purpose: the last shard is partial
N = sum(SHARD_SIZES)


def make_sample(i: int, size: int = 4) -> dict:
    rng = np.random.default_rng(i)
    return {
        "rgb": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "semseg": rng.integers(0, 6, (size, size), dtype=np.uint8),
        "depth": rng.random((size, size), dtype=np.float32) * 10,
        "det": [{"box": [0.1, 0.2, 0.5, 0.75], "class": "cube"}],
        "caption": f"sample {i}: a small red cube left of a large ball",
    }


def write_set(out: Path, n: int = N, shard_size: int = 5, drop: dict[int, str] | None = None) -> list[str]:
    """Shards of n samples keyed 000000...; ``drop`` removes one field from some samples."""
    with ShardWriter(out, shard_size=shard_size) as w:
        for i in range(n):
            sample = make_sample(i)
            if drop and i in drop:
                del sample[drop[i]]
            w.write(f"{i:06d}", encode_sample(sample))
    return w.shards


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    write_set(out)
    return out


def keys(ds_or_loader) -> list[str]:
    return [s["__key__"] for s in ds_or_loader]


def batch_keys(batch: list[dict]) -> list[str]:  # module level: picklable collate_fn
    return [s["__key__"] for s in batch]


ALL_KEYS = [f"{i:06d}" for i in range(N)]


# ---- encoding -------------------------------------------------------------------------------


def test_encode_decode_round_trip_every_type():
    rng = np.random.default_rng(0)
    sample = make_sample(3, size=8)
    sample.update(
        objects=[{"color": "red", "shape": "cube", "size": "small", "xy": np.float32(0.5)}],
        tok_rgb=rng.integers(-300, 300, (4, 4), dtype=np.int16),  # int16 token grid
        tok_caption=np.array([5, 17, 2], dtype=np.int64),  # token id list
        ids_json=[1, 2, 3],
        note="générique",
        blob=b"\x00\x01raw",
        tensor=torch.arange(6, dtype=torch.int32).reshape(2, 3),
    )
    sample["mask.png"] = rng.integers(0, 2, (8, 8), dtype=np.uint8)
    members = encode_sample({**sample, "__key__": "ignored"})
    assert set(members) == {
        "rgb.png", "semseg.png", "depth.npy", "det.json", "caption.txt", "objects.json", "tok_rgb.npy",
        "tok_caption.npy", "ids_json.json", "note.txt", "blob.bin", "mask.png", "tensor.npy",
    }
    back = {s.partition(".")[0]: decode_member(s, b) for s, b in members.items()}
    for name in ("rgb", "semseg", "depth", "tok_rgb", "tok_caption", "mask"):
        src = sample[name if name != "mask" else "mask.png"]
        assert back[name].dtype == src.dtype and back[name].shape == src.shape, name
        np.testing.assert_array_equal(back[name], src)
    np.testing.assert_array_equal(back["tensor"], sample["tensor"].numpy())
    assert back["det"] == sample["det"] and back["caption"] == sample["caption"]
    assert back["objects"] == [{"color": "red", "shape": "cube", "size": "small", "xy": 0.5}]
    assert back["ids_json"] == [1, 2, 3] and back["note"] == "générique" and back["blob"] == b"\x00\x01raw"
    assert encode_sample(sample) == members  # deterministic bytes


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("rgb", np.zeros((4, 4, 3), np.float32), "field 'rgb'.*uint8"),
        ("rgb", np.zeros((4, 4), np.uint8), "field 'rgb'.*shape"),
        ("semseg", np.zeros((4, 4, 3), np.uint8), "field 'semseg'"),
        ("depth", np.zeros((4, 4), np.float64), "field 'depth'.*astype"),
        ("det", [[0, 0, 1, 1]], "field 'det'.*dicts"),
        ("caption", 3, "field 'caption'.*str"),
        ("weird", object(), "field 'weird'"),
        ("vals", [float("nan")], "field 'vals'"),
    ],
)
def test_encode_rejects_bad_values_naming_the_field(field, value, match):
    with pytest.raises((TypeError, ValueError), match=match):
        encode_sample({field: value})


# ---- writing --------------------------------------------------------------------------------


def test_identical_samples_give_byte_identical_tars(tmp_path):
    a = write_set(tmp_path / "a", n=7, shard_size=4)
    # Same samples with fields inserted in another order.
    with ShardWriter(tmp_path / "b", shard_size=4) as w:
        for i in range(7):
            w.write(f"{i:06d}", dict(reversed(list(encode_sample(make_sample(i)).items()))))
    assert [Path(p).name for p in a] == [Path(p).name for p in w.shards] == ["shard-00000.tar", "shard-00001.tar"]
    for pa, pb in zip(a, w.shards):
        assert Path(pa).read_bytes() == Path(pb).read_bytes()
    with tarfile.open(a[0]) as tf:
        infos = tf.getmembers()
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in infos} == {(0, 0, 0, "", "", 0o644)}
    names = [m.name for m in infos]
    assert names[:5] == [f"000000.{s}" for s in ("caption.txt", "depth.npy", "det.json", "rgb.png", "semseg.png")]


def test_shards_are_readable_by_webdataset(shard_dir):
    wds = pytest.importorskip("webdataset")
    got = list(wds.WebDataset(sorted(str(p) for p in shard_dir.glob("*.tar")), shardshuffle=False))
    assert [s["__key__"] for s in got] == ALL_KEYS
    assert {k for k in got[0] if not k.startswith("__")} == {"rgb.png", "semseg.png", "depth.npy", "det.json", "caption.txt"}
    np.testing.assert_array_equal(decode_member("rgb.png", got[2]["rgb.png"]), make_sample(2)["rgb"])


def test_reader_reads_tars_written_by_webdataset(tmp_path):
    wds = pytest.importorskip("webdataset")
    path = tmp_path / "w.tar"
    with wds.TarWriter(str(path)) as tw:
        for i in range(3):
            tw.write({"__key__": f"k{i}", **encode_sample(make_sample(i))})
    got = list(ShardDataset(path))
    assert keys(got) == ["k0", "k1", "k2"] and got[1]["rgb"].shape == (3, 4, 4)


def test_write_shard_is_atomic_when_the_items_fail(tmp_path):
    def items():
        for i in range(3):
            yield f"{i:06d}", encode_sample(make_sample(i))
        raise RuntimeError("generator died")

    with pytest.raises(RuntimeError, match="generator died"):
        write_shard(tmp_path / "shard-00000.tar", items())
    assert list(tmp_path.iterdir()) == []  # neither the final name nor the temporary file
    assert write_shard(tmp_path / "shard-00000.tar", ((f"{i}", encode_sample(make_sample(i))) for i in range(2))) == 2
    assert list(iter_tar_names(tmp_path / "shard-00000.tar"))[0] == "0.caption.txt"


def test_shard_writer_keeps_completed_shards_and_drops_the_partial_one(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, prefix="train", shard_size=2, start_shard=3) as w:
            for i in range(3):
                w.write(f"{i:06d}", encode_sample(make_sample(i)))
            raise RuntimeError("crash in the middle of shard 4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-00003.tar"]
    assert keys(ShardDataset(tmp_path)) == ["000000", "000001"]


def test_writer_validates_before_writing(tmp_path):
    with ShardWriter(tmp_path, shard_size=10) as w:
        w.write("000000", encode_sample(make_sample(0)))
        with pytest.raises(TypeError, match="member 'rgb.png'.*encode_sample"):
            w.write("000001", {"caption.txt": b"ok", "rgb.png": np.zeros(3)})
        with pytest.raises(ValueError, match="invalid sample key 'a.b'"):
            w.write("a.b", {"caption.txt": b"x"})
        with pytest.raises(ValueError, match="duplicate sample key '000000'"):
            w.write("000000", {"caption.txt": b"x"})
        w.write("000002", {"caption.txt": b"x"})
    assert keys(ShardDataset(tmp_path)) == ["000000", "000002"]  # nothing of the rejected samples


def test_writer_whose_only_write_was_rejected_leaves_nothing(tmp_path):
    with ShardWriter(tmp_path) as w:
        with pytest.raises(TypeError):
            w.write("000000", {"caption.txt": "not bytes"})
    assert w.shards == [] and list(tmp_path.iterdir()) == []


def test_metadata_round_trip(tmp_path):
    meta = {"generator": "shapes_world", "version": "1.0", "seed": 7, "num_samples": 13, "image_size": 64, "sizes": [5, 5, 3]}
    path = write_metadata(tmp_path, meta)
    assert path == tmp_path / "metadata.json"
    assert read_metadata(tmp_path) == meta == read_metadata(path)
    assert [p.name for p in tmp_path.iterdir()] == ["metadata.json"]
    with pytest.raises(FileNotFoundError, match="other.json"):
        read_metadata(tmp_path, name="other.json")


def test_list_shards(shard_dir):
    names = [f"shard-{k:05d}.tar" for k in range(3)]
    expect = [os.path.normpath(shard_dir / n) for n in names]
    assert list_shards(shard_dir) == expect
    assert list_shards(str(shard_dir / "*.tar")) == expect
    assert list_shards(str(shard_dir / "shard-{00000..00002}.tar")) == expect
    assert list_shards([shard_dir / names[2], str(shard_dir / names[0]), shard_dir / names[2]]) == [expect[0], expect[2]]
    with pytest.raises(FileNotFoundError, match="shard-00003.tar"):
        list_shards(str(shard_dir / "shard-{00000..00003}.tar"))
    with pytest.raises(FileNotFoundError):
        list_shards(str(shard_dir / "nothing-*.tar"))


# ---- reading: content and order -------------------------------------------------------------


def test_reader_yields_tensors_and_objects(shard_dir):
    got = list(ShardDataset(shard_dir))
    assert keys(got) == ALL_KEYS  # no shuffle: shard order, then stored order
    s, ref = got[6], make_sample(6)
    assert s["__shard__"].endswith("shard-00001.tar") and s["__index__"] == 6
    assert s["rgb"].dtype == torch.uint8 and s["rgb"].shape == (3, 4, 4)
    assert torch.equal(s["rgb"], torch.from_numpy(ref["rgb"]).permute(2, 0, 1))
    assert s["semseg"].dtype == torch.uint8 and torch.equal(s["semseg"], torch.from_numpy(ref["semseg"]))
    assert s["depth"].dtype == torch.float32 and torch.equal(s["depth"], torch.from_numpy(ref["depth"]))
    assert s["det"] == ref["det"] and s["caption"] == ref["caption"]
    raw = next(iter(ShardDataset(shard_dir, decode=False)))
    assert raw["rgb"] == encode_sample(make_sample(0))["rgb.png"]
    only = next(iter(ShardDataset(shard_dir, fields=["caption"], optional=["det", "objects"])))
    assert set(only) == {"__key__", "__shard__", "__index__", "caption", "det"}


def test_shuffle_is_fixed_per_seed_and_epoch(shard_dir):
    def order(seed, epoch):
        return keys(ShardDataset(shard_dir, shuffle=True, seed=seed, epoch=epoch))

    a = order(0, 0)
    assert a == order(0, 0)
    assert sorted(a) == ALL_KEYS and a != ALL_KEYS
    assert order(1, 0) != a and order(0, 1) != a
    ds = ShardDataset(shard_dir, shuffle=True, seed=0)
    ds.set_epoch(1)
    assert keys(ds) == order(0, 1)


@pytest.mark.parametrize("shuffle", [False, True])
def test_same_order_for_0_1_2_workers(shard_dir, shuffle):
    def run(workers, batch_size=None):
        ds = ShardDataset(shard_dir, shuffle=shuffle, seed=3, batch_size=batch_size)
        if batch_size is None:
            return keys(DataLoader(ds, batch_size=None, num_workers=workers))
        return list(DataLoader(ds, batch_size=None, num_workers=workers, collate_fn=batch_keys))

    ref = run(0)
    assert sorted(ref) == ALL_KEYS  # nothing duplicated or dropped
    assert run(1) == ref and run(2) == ref
    batches = run(0, batch_size=3)
    assert [k for b in batches for k in b] == ref and [len(b) for b in batches] == [3, 3, 3, 3, 1]
    assert run(2, batch_size=3) == batches


@pytest.mark.parametrize("workers", [0, 2])
def test_ranks_are_disjoint_and_cover_everything(shard_dir, workers):
    per_rank = [
        keys(DataLoader(ShardDataset(shard_dir, shuffle=True, rank=r, world_size=2), batch_size=None, num_workers=workers))
        for r in range(2)
    ]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == ALL_KEYS
    assert (len(per_rank[0]), len(per_rank[1])) == (7, 6)
    assert ShardDataset(shard_dir, rank=1, world_size=2).num_samples() == 6


@pytest.mark.parametrize("world_size,workers", [(1, 0), (2, 0), (1, 2)])
def test_resume_with_start_gives_the_tail(shard_dir, world_size, workers):
    def stream(start):
        ds = ShardDataset(shard_dir, shuffle=True, seed=5, epoch=2, rank=world_size - 1, world_size=world_size, start=start)
        return list(DataLoader(ds, batch_size=None, num_workers=workers))

    full = stream(0)
    assert [s["__index__"] for s in full] == list(range(len(full)))
    for k in (1, 4, len(full)):
        assert keys(stream(k)) == keys(full)[k:]
    # A consumer that stopped after the sample with __index__ = j resumes at j + 1.
    resumed = ShardDataset(shard_dir, shuffle=True, seed=5, rank=world_size - 1, world_size=world_size)
    resumed.set_epoch(2, start=full[2]["__index__"] + 1)
    assert keys(resumed) == keys(full)[3:]


def test_set_epoch_reaches_persistent_workers(shard_dir):
    ds = ShardDataset(shard_dir, shuffle=True, seed=0)
    loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)
    first = keys(loader)
    ds.set_epoch(1)
    second = keys(loader)
    assert first == keys(ShardDataset(shard_dir, shuffle=True, seed=0, epoch=0))
    assert second == keys(ShardDataset(shard_dir, shuffle=True, seed=0, epoch=1)) != first


def test_fast_header_scan_agrees_with_tarfile(tmp_path, shard_dir):
    wds = pytest.importorskip("webdataset")
    foreign = tmp_path / "wds.tar"
    with wds.TarWriter(str(foreign)) as tw:
        for i in range(3):
            tw.write({"__key__": f"dir/k{i}", **encode_sample(make_sample(i))})
    for path in [*sorted(shard_dir.glob("*.tar")), foreign]:
        with open(path, "rb") as f:
            fast, (slow, clean) = _scan_plain(f), _scan_tarfile(f)
            assert clean and len(slow) == 5 * len(index_shard(f))
        assert fast == slow or (fast is None and path == foreign)
    with open(shard_dir / "shard-00000.tar", "rb") as f:
        assert _scan_plain(f) is not None  # what ShardWriter writes takes the fast path


# ---- faults ---------------------------------------------------------------------------------


def truncate_inside(shard: str, key: str, suffix: str = "depth.npy", keep: int = 3) -> None:
    """Cut the file ``keep`` bytes into the data of member ``key.suffix``."""
    with tarfile.open(shard) as tf:
        m = tf.getmember(f"{key}.{suffix}")
    with open(shard, "r+b") as f:
        f.truncate(m.offset_data + keep)


def test_truncated_tar_keeps_the_complete_head(tmp_path):
    shards = write_set(tmp_path)
    truncate_inside(shards[1], "000007")
    ds = ShardDataset(tmp_path)
    got = keys(ds)
    assert got == [k for k in ALL_KEYS if k not in ("000007", "000008", "000009")]
    assert ds.stats.counts["truncated"] == 1 and ds.stats.total == 1
    (event,) = ds.stats.events
    assert (event.shard, event.key, event.reason) == (shards[1], "000007", "truncated")
    with pytest.raises(CorruptSampleError, match="shard-00001.tar.*key '000007'.*truncated") as e:
        keys(ShardDataset(tmp_path, strict=True))
    assert (e.value.shard, e.value.key) == (shards[1], "000007")


def test_tar_cut_at_a_member_boundary_drops_only_the_cut_sample(tmp_path):
    shards = write_set(tmp_path)
    with tarfile.open(shards[0]) as tf:
        end = tf.getmember("000003.rgb.png")
    with open(shards[0], "r+b") as f:  # cut right after a member: no end-of-archive blocks
        f.truncate(end.offset_data + ((end.size + 511) // 512) * 512)
    ds = ShardDataset(tmp_path)
    assert keys(ds) == [k for k in ALL_KEYS if k not in ("000003", "000004")]
    assert str(ds.stats) == "1 skipped (truncated: 1)"


def test_missing_member_is_skipped_and_counted(tmp_path):
    shards = write_set(tmp_path, drop={4: "depth", 11: "caption"})
    ds = ShardDataset(tmp_path, fields=["rgb", "depth", "semseg"])
    assert keys(ds) == [k for k in ALL_KEYS if k != "000004"]  # caption is not required
    assert ds.stats.counts["missing_field"] == 1
    assert [(e.key, e.reason) for e in ds.stats.events] == [("000004", "missing_field")]
    assert keys(ShardDataset(tmp_path)) == ALL_KEYS  # no required fields: nothing is incomplete
    with pytest.raises(CorruptSampleError, match=r"shard-00000.tar.*key '000004'.*missing.*'depth'") as e:
        keys(ShardDataset(tmp_path, fields=["rgb", "depth"], strict=True))
    assert (e.value.shard, e.value.key, e.value.reason) == (shards[0], "000004", "missing_field")


def test_undecodable_member_and_unreadable_shard(tmp_path):
    write_set(tmp_path, n=4)
    with ShardWriter(tmp_path, shard_size=10, start_shard=1) as w:
        w.write("bad000", {**encode_sample(make_sample(0)), "rgb.png": b"\x89PNG garbage"})
        w.write("ok0001", encode_sample(make_sample(1)))
    (tmp_path / "shard-00002.tar").write_bytes(b"this is not a tar" * 100)
    ds = ShardDataset(tmp_path)
    assert keys(ds) == ["000000", "000001", "000002", "000003", "ok0001"]
    assert ds.stats.counts == {"unreadable": 1, "truncated": 0, "bad_member": 0, "missing_field": 0, "decode": 1}
    assert keys(ShardDataset(tmp_path, decode=False)) == keys(ds)[:4] + ["bad000", "ok0001"]
    with pytest.raises(CorruptSampleError, match="key 'bad000': decode: member 'rgb.png'"):
        keys(ShardDataset(tmp_path, strict=True))
    with pytest.raises(CorruptSampleError, match="shard-00002.tar': unreadable"):
        keys(ShardDataset(tmp_path / "shard-00002.tar", strict=True))


def test_bad_member_names_and_duplicate_fields_are_skipped(tmp_path):
    path = tmp_path / "foreign.tar"
    members = [("a.caption.txt", b"x"), ("b.caption.txt", b"y"), ("b.caption.json", b'"z"'), ("README", b"hi"),
               ("c.caption.txt", b"w")]
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    ds = ShardDataset(path)
    assert [(s["__key__"], s["caption"]) for s in ds] == [("a", "x"), ("c", "w")]
    assert ds.stats.counts["bad_member"] == 2
    assert {(e.key, e.reason) for e in ds.stats.events} == {("b", "bad_member"), ("README", "bad_member")}
    with pytest.raises(CorruptSampleError, match="key 'b': bad_member: field 'caption' stored twice"):
        keys(ShardDataset(path, strict=True))


@pytest.fixture
def faulty_dir(tmp_path: Path) -> Path:
    write_set(tmp_path, drop={1: "depth", 8: "rgb"})
    truncate_inside(str(tmp_path / "shard-00002.tar"), "000011")
    (tmp_path / "shard-00001b.tar").write_bytes(bytes(100))  # unreadable, between shards 1 and 2
    return tmp_path


GOOD = [k for k in ALL_KEYS if k not in ("000001", "000008", "000011", "000012")]


@pytest.mark.parametrize("workers,world_size", [(2, 1), (2, 2), (1, 1)])
def test_faults_with_workers_and_ranks_are_counted_once(faulty_dir, workers, world_size):
    seen, totals = [], Counter()
    for rank in range(world_size):
        ds = ShardDataset(faulty_dir, fields=["rgb", "depth"], shuffle=True, rank=rank, world_size=world_size)
        seen += keys(DataLoader(ds, batch_size=None, num_workers=workers))
        totals.update(ds.stats.counts)  # read in the main process after the workers have exited
    assert sorted(seen) == GOOD
    assert +totals == Counter(missing_field=2, truncated=1, unreadable=1)


def test_skip_counts_reach_the_main_process_from_spawned_workers(faulty_dir):
    ds = ShardDataset(faulty_dir, fields=["rgb", "depth"])
    got = keys(DataLoader(ds, batch_size=None, num_workers=1, multiprocessing_context="spawn"))
    assert got == GOOD
    assert isinstance(ds.stats, SkipStats) and ds.stats.total == 4
    ds.reset_stats()
    assert ds.stats.total == 0


def test_bad_arguments_are_rejected(shard_dir):
    with pytest.raises(ValueError, match="rank"):
        ShardDataset(shard_dir, rank=2, world_size=2)
    with pytest.raises(ValueError, match="'rgb.png'.*'rgb'"):
        ShardDataset(shard_dir, fields=["rgb.png"])
    with pytest.raises(TypeError, match="list of names"):
        ShardDataset(shard_dir, fields="rgb")
    with pytest.raises(ValueError, match="batch_size"):
        ShardDataset(shard_dir, batch_size=0)
