"""A shard folder whose metadata.json does not describe its shards is refused by the reader: shards
of two writers mixed in one folder (other seeds, other sizes), a shard copied in or missing; a
truncated shard stays the reader's business (its damaged tail is skipped and counted)."""
from __future__ import annotations

import json
import shutil

import pytest

from fourm.data import shapes_world as sw
from fourm.data.commands import write_shapes
from fourm.data.shard_metadata import RECORDS_KEY, ShardMetadataError
from fourm.data.shard_reader import ShardDataset


def _write(out, num_samples: int, seed: int, image_size: int) -> dict:
    return write_shapes(out, num_samples, seed, sw.WorldConfig(image_size=image_size), shard_size=2, progress=False)


@pytest.fixture
def two_sets(tmp_path):
    """Set a (seed 0, 32 px, 3 shards) and set b (seed 1, 64 px, 2 shards), as two writers leave them."""
    _write(tmp_path / "a", 6, seed=0, image_size=32)
    _write(tmp_path / "b", 4, seed=1, image_size=64)
    return tmp_path / "a", tmp_path / "b"


def test_the_writer_records_every_shard_and_the_reader_accepts_an_intact_folder(two_sets):
    a, _ = two_sets
    meta = json.loads((a / "metadata.json").read_text())
    assert sorted(meta[RECORDS_KEY]) == ["shard-00000.tar", "shard-00001.tar", "shard-00002.tar"]
    assert all(set(r) == {"bytes", "head_sha256"} for r in meta[RECORDS_KEY].values())
    assert len(list(ShardDataset(a))) == 6


def test_shards_of_another_seed_or_size_under_the_metadata_are_refused(two_sets):
    a, b = two_sets
    shutil.copy(b / "shard-00001.tar", a / "shard-00001.tar")  # the other writer's shard 1 won the race
    with pytest.raises(ShardMetadataError, match=r"shard folder .*/a: 'shard-00001.tar' is not the shard that was "
                                                 r"written under that name .*another seed or image size.*metadata.json"):
        ShardDataset(a)


def test_unlisted_and_missing_shards_are_refused(two_sets):
    a, b = two_sets
    shutil.copy(b / "shard-00000.tar", a / "shard-00007.tar")
    with pytest.raises(ShardMetadataError, match=r"1 shard\(s\) not listed in metadata.json, e.g. 'shard-00007.tar'"):
        ShardDataset(a)
    (a / "shard-00007.tar").unlink()
    (a / "shard-00002.tar").unlink()
    with pytest.raises(ShardMetadataError, match=r"1 listed shard\(s\) missing, e.g. 'shard-00002.tar'"):
        ShardDataset(a)
    assert len(list(ShardDataset(str(a / "shard-0000[01].tar")))) == 4  # a glob picks shards on purpose


def test_a_truncated_shard_is_read_up_to_its_damage(two_sets):
    a, _ = two_sets
    path = a / "shard-00002.tar"
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    ds = ShardDataset(a)
    assert len(list(ds)) == 5 and ds.stats.counts["truncated"] == 1
