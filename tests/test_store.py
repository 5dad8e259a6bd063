import numpy as np
import pytest

from pipeline.core.store import (
    ArraySpec,
    RaggedStoreWriter,
    atomic_output,
    open_store,
    read_clip,
    read_index,
)


def test_ragged_store_roundtrip_and_shards(tmp_path):
    rng = np.random.default_rng(0)
    lengths = [5, 17, 1, 9, 20]
    clips = [rng.integers(0, 255, (n, 4, 4, 3), dtype=np.uint8) for n in lengths]
    vals = [rng.normal(size=(n, 3)).astype(np.float32) for n in lengths]
    ids = [f"c{i}" for i in range(len(lengths))]
    w = RaggedStoreWriter(tmp_path / "s.zarr", ids, lengths,
                          {"frames": ArraySpec((4, 4, 3), "uint8", ("y", "x", "rgb")),
                           "v": ArraySpec((3,), "float32", ("k",))},
                          attrs={"stage": "test"}, chunk_frames=4, shard_frames=8)
    for i, (f, v) in enumerate(zip(clips, vals)):
        w.write_clip(i, {"frames": f, "v": v})
    w.close()
    root = open_store(tmp_path / "s.zarr")
    assert root.attrs["stage"] == "test"
    assert root["frames"].shape == (52, 4, 4, 3)
    # 52 frames in shards of 8 -> 7 shard files per array
    assert len(list((tmp_path / "s.zarr" / "frames" / "c").iterdir())) == 7
    idx = read_index(tmp_path / "s.zarr")
    assert list(idx.stop - idx.start) == lengths
    got = read_clip(tmp_path / "s.zarr", "c3")
    np.testing.assert_array_equal(got["frames"], clips[3])
    np.testing.assert_array_equal(got["v"], vals[3])


def test_writer_refuses_out_of_order(tmp_path):
    w = RaggedStoreWriter(tmp_path / "s.zarr", ["a", "b"], [2, 2], {"v": ArraySpec((), "float32", ())},
                          attrs={}, chunk_frames=2, shard_frames=2)
    with pytest.raises(ValueError, match="in order"):
        w.write_clip(1, {"v": np.zeros(2)})


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.zarr"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.mkdir()
            (tmp / "x").write_text("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_output(target) as tmp:
        tmp.mkdir()
    assert target.is_dir()
