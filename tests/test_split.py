import pandas as pd
import pytest

from zoomorph.data.split import make_split, read_manifest, reuse_or_make, write_manifest


def ids_and_strata(n_a=80, n_b=20):
    ids = pd.Series([str(100000 + i) for i in range(n_a + n_b)])
    strata = pd.Series(["a"] * n_a + ["b"] * n_b)
    return ids, strata


def test_stratified_fractions_and_no_overlap():
    ids, strata = ids_and_strata()
    split = make_split(ids, strata, val=0.2, test=0.1, seed=1)
    assert split.index.tolist() == ids.tolist()
    by = pd.crosstab(strata.to_numpy(), split.to_numpy())
    assert by.loc["a"].to_dict() == {"test": 8, "train": 56, "val": 16}
    assert by.loc["b"].to_dict() == {"test": 2, "train": 14, "val": 4}


def test_seeded_and_order_independent():
    ids, strata = ids_and_strata()
    a = make_split(ids, strata, seed=3)
    shuffled = ids.sample(frac=1, random_state=0)
    b = make_split(shuffled, strata[shuffled.index], seed=3)
    assert a.equals(b.reindex(a.index))
    assert not a.equals(make_split(ids, strata, seed=4))


def test_manifest_is_reused_and_hash_stable(tmp_path):
    ids, strata = ids_and_strata()
    split = make_split(ids, strata, seed=0)
    h1 = write_manifest(tmp_path / "split.csv", split)
    assert read_manifest(tmp_path / "split.csv").reindex(split.index).equals(split)
    more = pd.concat([ids, pd.Series(["200000", "200001"])], ignore_index=True)
    again, fresh = reuse_or_make(tmp_path / "split.csv", more, pd.concat([strata, pd.Series(["a", "b"])],
                                                                          ignore_index=True), seed=99)
    assert fresh == 2 and again[split.index].equals(split)  # known ids keep their split despite a new seed
    assert write_manifest(tmp_path / "again.csv", split) == h1


def test_bad_fractions_refused():
    ids, strata = ids_and_strata()
    with pytest.raises(ValueError):
        make_split(ids, strata, val=0.6, test=0.5)
