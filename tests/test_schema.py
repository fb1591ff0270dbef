import numpy as np
import pytest

from mtlbench.data.schema import DatasetSchema, Feature
from mtlbench.errors import DataError


def schema() -> DatasetSchema:
    return DatasetSchema(
        "toy",
        [
            Feature("user", "categorical", 3, "user"),
            Feature("x", "numeric"),
            Feature("hist", "sequence", max_len=2, embedding="user"),
        ],
        tasks=["click"],
        user_field="user",
    )


def columns(**over):
    c = {
        "user": np.array([0, 1, 2]),
        "x": np.zeros(3, np.float32),
        "hist": np.array([[-1, -1], [0, -1], [1, 0]]),
        "click": np.array([0, 1, np.nan], np.float32),
    }
    c.update(over)
    return c


def test_valid_columns_pass_and_nan_label_means_missing():
    from mtlbench.data.rows import build_tensors

    schema().validate(columns())  # raises on any problem
    labels = build_tensors(schema(), columns())["labels"]
    assert labels.isnan().sum() == 1 and labels[2, 0].isnan()


def test_non_finite_numeric_feature_is_named():
    with pytest.raises(DataError, match=r"numeric column 'x' has nan at row 1"):
        schema().validate(columns(x=np.array([0.0, np.nan, 1.0], np.float32)))


@pytest.mark.parametrize(
    "over, words",
    [
        ({"click": np.array([0, 2, 1], np.float32)}, ["'click'", "value 2.0", "row 1"]),
        ({"user": np.array([0, 3, 1])}, ["'user'", "row 1", "[0, 3)"]),
        ({"user": np.array([0, -1, 1])}, ["'user'", "row 1"]),
        ({"hist": np.array([[-1, -1], [0, 5], [1, 0]])}, ["'hist'", "row 1"]),
        ({"user": np.array([0.0, 1.0, 2.0])}, ["'user'", "integer ids"]),
    ],
)
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


def funnel(**roles) -> DatasetSchema:
    return DatasetSchema(
        "funnel",
        [Feature("user", "categorical", 3, "user")],
        tasks=["ctr", "cvr", "ctcvr"],
        conditional_tasks={"cvr": "ctr"},
        task_roles=roles,
    )


def test_task_roles_are_checked_and_resolve_role_references():
    from mtlbench.data.schema import select_tasks

    s = funnel(click="ctr", conversion="ctcvr", conversion_given_click="cvr")
    assert select_tasks(s, ["role:click"]).tasks == ["ctr"]
    narrowed = select_tasks(s, ["role:click", "role:conversion"])
    assert narrowed.tasks == ["ctr", "ctcvr"] and narrowed.task_roles == {"click": "ctr", "conversion": "ctcvr"}
    with pytest.raises(DataError, match=r"declares no 'conversion' task role .*instead of 'role:conversion'"):
        select_tasks(funnel(click="ctr"), ["role:conversion"])
    with pytest.raises(DataError, match="unknown task role 'purchase'"):
        funnel(purchase="ctcvr")
    with pytest.raises(DataError, match="task role 'click' names 'clk', which is not a task"):
        funnel(click="clk")
    with pytest.raises(DataError, match="labels over every impression; \\['cvr'\\] is conditional"):
        funnel(conversion="cvr")
    with pytest.raises(DataError, match="plays conversion_given_click but is not listed in conditional_tasks"):
        funnel(conversion_given_click="ctcvr")
