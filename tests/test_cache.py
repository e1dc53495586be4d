import os

import numpy as np

from conftest import jpeg_bytes
from zoomorph.data import cache
from zoomorph.data.cache import build_cache, cache_key, drop_rows
from zoomorph.data.prepare import prepare
from zoomorph.io.decode import KAGGLE_SIZE, decode, load


def test_cache_equals_fresh_decode(kaggle_dir, tmp_path):
    sources = sorted(str(p) for p in (kaggle_dir / "images").glob("*.jpg"))
    result = build_cache(sources, tmp_path / "c.npy", size=48, fov=207, workers=2, progress=False)
    assert result.errors == {} and result.notes == {}
    cache = np.load(tmp_path / "c.npy", mmap_mode="r")
    assert cache.shape == (30, 48, 48, 3) and cache.dtype == np.uint8
    for i, s in enumerate(sources):
        np.testing.assert_array_equal(cache[i], load(s, 48, 207).pixels)


def test_workers_0_decodes_in_this_process(kaggle_dir, tmp_path, monkeypatch):
    sources = sorted(str(p) for p in (kaggle_dir / "images").glob("*.jpg"))
    build_cache(sources, tmp_path / "pool.npy", size=32, fov=256, workers=2, progress=False)

    def no_pool(*args):
        raise AssertionError("workers=0 started a process pool")

    monkeypatch.setattr(cache.mp, "get_context", no_pool)
    build_cache(sources, tmp_path / "here.npy", size=32, fov=256, workers=0, progress=False)
    np.testing.assert_array_equal(np.load(tmp_path / "here.npy"), np.load(tmp_path / "pool.npy"))


def test_decode_crops_the_central_field_of_view():
    data = jpeg_bytes()  # a centred blob of sigma 42 px
    whole = decode(data, 64, fov=KAGGLE_SIZE).pixels.astype(float)
    centre = decode(data, 64, fov=106).pixels.astype(float)
    assert centre.mean() > whole.mean() + 20  # the crop is mostly blob
    assert abs(centre[32, 32].mean() - whole[32, 32].mean()) < 10  # same centre


def test_cache_key_changes_with_inputs_and_settings(kaggle_dir):
    sources = sorted(str(p) for p in (kaggle_dir / "images").glob("*.jpg"))
    key = cache_key(sources, 64, 207)
    assert key == cache_key(sources, 64, 207)
    assert key != cache_key(sources, 48, 207) and key != cache_key(sources, 64, 424)
    assert key != cache_key(sources[:-1], 64, 207)
    os.utime(sources[0], ns=(1, 1))
    assert key != cache_key(sources, 64, 207)


def test_prepare_reuses_cache_and_split(kaggle_dir, tmp_path):
    first = prepare(kaggle_dir / "images", kaggle_dir / "solutions.csv", tmp_path / "p", progress=False)
    again = prepare(kaggle_dir / "images", kaggle_dir / "solutions.csv", tmp_path / "p", progress=False)
    assert not first.reused_cache and again.reused_cache
    assert first.data.split_hash == again.data.split_hash
    resized = prepare(kaggle_dir / "images", kaggle_dir / "solutions.csv", tmp_path / "p", size=32, progress=False)
    assert not resized.reused_cache and resized.data.images.shape[1:] == (32, 32, 3)
    assert resized.data.split_hash == first.data.split_hash  # the manifest outlives the cache


def test_drop_rows_compacts(tmp_path):
    from numpy.lib.format import open_memmap
    arr = open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.uint8, shape=(10, 2, 2, 3))
    arr[:] = np.arange(10)[:, None, None, None]
    arr.flush()
    del arr
    drop_rows(tmp_path / "x.npy", np.array([2, 7]), chunk=3)
    assert np.load(tmp_path / "x.npy")[:, 0, 0, 0].tolist() == [0, 1, 3, 4, 5, 6, 8, 9]
