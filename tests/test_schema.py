import numpy as np
import pandas as pd
import pytest

from conftest import REAL_DATA, needs_real_data, random_solutions
from zoomorph import schema


def test_tree_shape():
    assert len(schema.QUESTIONS) == 11
    assert len(schema.ANSWER_COLUMNS) == 37
    assert schema.ANSWER_COLUMNS[0] == "Class1.1" and schema.ANSWER_COLUMNS[-1] == "Class11.6"
    # every parent is an answer of an earlier question (the tree can be walked in order)
    seen = set()
    for q in schema.QUESTIONS:
        assert q.parent is None or q.parent in seen
        seen.update(q.columns)
    assert schema.question(5).parent == "Class2.2" and schema.question(6).parent is None


def test_question_slices_cover_all_answers():
    slices = schema.question_slices()
    assert [s[0] for s in slices][0] == 0 and slices[-1][1] == 37
    assert all(a[1] == b[0] for a, b in zip(slices, slices[1:]))
    assert slices[6][2] == schema.ANSWER_COLUMNS.index("Class1.1")  # Q7 hangs off "smooth"


def test_conditional_roundtrip():
    cum = random_solutions(range(50))
    assert schema.validate(cum) == []
    cond = schema.to_conditional(cum)
    for q in schema.QUESTIONS:  # each question's shares sum to one
        np.testing.assert_allclose(cond[q.columns].sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(schema.to_cumulative(cond).to_numpy(), cum.to_numpy(), atol=1e-12)


def test_conditional_is_nan_where_nobody_answered():
    cum = random_solutions(range(3))
    cum.loc[:, ["Class1.1", "Class1.2", "Class1.3"]] = [[1.0, 0.0, 0.0]] * 3
    cum.loc[:, schema.question(2).columns] = 0.0
    cond = schema.to_conditional(cum)
    assert cond["Class2.1"].isna().all()  # nobody reached Q2: no share, not 0


def test_validate_reports_breaking_rows():
    cum = random_solutions(range(5))
    cum.iloc[2, cum.columns.get_loc("Class7.1")] += 0.3
    bad = schema.validate(cum)
    assert [(v.galaxy_id, v.question) for v in bad] == [(cum.index[2], 7)]
    assert bad[0].total - bad[0].expected == pytest.approx(0.3)


def test_partial_columns_are_converted_as_far_as_they_go():
    q1 = pd.DataFrame({"Class1.1": [1.0, 0.0], "Class1.2": [0.0, 1.0], "Class1.3": [0.0, 0.0]})
    assert list(schema.to_conditional(q1).columns) == ["Class1.1", "Class1.2", "Class1.3"]
    assert schema.validate(q1) == []


@needs_real_data
def test_real_solutions_obey_the_tree():
    df = pd.read_csv(REAL_DATA / "gz-kaggle-sample" / "solutions.csv", index_col="GalaxyID")
    assert list(df.columns) == schema.ANSWER_COLUMNS
    assert schema.validate(df, tolerance=1e-5) == []
