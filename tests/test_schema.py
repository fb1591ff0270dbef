import numpy as np
import pytest

from mtlbench.data.schema import DatasetSchema, Feature
from mtlbench.errors import DataError


def schema() -> DatasetSchema:
    return DatasetSchema("toy", [Feature("user", "categorical", 3, "user"), Feature("x", "numeric"),
                                 Feature("hist", "sequence", max_len=2, embedding="user")],
                         tasks=["click"], user_field="user")


def columns(**over):
    c = {"user": np.array([0, 1, 2]), "x": np.zeros(3, np.float32),
         "hist": np.array([[-1, -1], [0, -1], [1, 0]]), "click": np.array([0, 1, np.nan], np.float32)}
    c.update(over)
    return c


def test_valid_columns_pass_and_nan_label_means_missing():
    from mtlbench.data.tensors import build_tensors

    schema().validate(columns())  # raises on any problem
    labels = build_tensors(schema(), columns())["labels"]
    assert labels.isnan().sum() == 1 and labels[2, 0].isnan()


def test_non_finite_numeric_feature_is_named():
    with pytest.raises(DataError, match=r"numeric column 'x' has nan at row 1"):
        schema().validate(columns(x=np.array([0.0, np.nan, 1.0], np.float32)))


@pytest.mark.parametrize("over, words", [
    ({"click": np.array([0, 2, 1], np.float32)}, ["'click'", "value 2.0", "row 1"]),
    ({"user": np.array([0, 3, 1])}, ["'user'", "row 1", "[0, 3)"]),
    ({"user": np.array([0, -1, 1])}, ["'user'", "row 1"]),
    ({"hist": np.array([[-1, -1], [0, 5], [1, 0]])}, ["'hist'", "row 1"]),
    ({"user": np.array([0.0, 1.0, 2.0])}, ["'user'", "integer ids"]),
])
def test_bad_values_name_column_and_row(over, words):
    with pytest.raises(DataError) as e:
        schema().validate(columns(**over), source="toy.csv")
    msg = str(e.value)
    assert "toy.csv" in msg and "\n" not in msg
    for w in words:
        assert w in msg


def test_missing_column_is_named():
    c = columns()
    del c["x"]
    with pytest.raises(DataError, match=r"missing column\(s\) \['x'\]"):
        schema().validate(c)


def test_schema_round_trips_through_dict():
    s = schema()
    assert DatasetSchema.from_dict(s.to_dict()) == s
