"""Review fixes: PCGrad on truly shared parameters, leak-free PLE_stage rule stage, STAR's PN on tiny
scenario groups, a warning for hashed STAN users, known scenario values of Douban / AliExpress / KuaiRand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import mtlbench
from mtlbench.data.rows import build_tensors
from mtlbench.data.schema import DatasetSchema, Feature
from mtlbench.factory import create_weighting
from mtlbench.models import ModelOutput
from mtlbench.training.run import build_components

from conftest import FAST, compose_cfg


def two_task_table(n=32, seed=0):
    """user, item, scenario (3) and two tasks whose labels disagree (y and 1 - y): conflicting gradients."""
    rng = np.random.default_rng(seed)
    feats = [
        Feature("user", "categorical", 10, "user"),
        Feature("item", "categorical", 12, "item"),
        Feature("scenario", "categorical", 3),
    ]
    y = rng.integers(0, 2, n).astype(np.float32)
    cols = {
        "user": rng.integers(0, 10, n),
        "item": rng.integers(0, 12, n),
        "scenario": rng.integers(0, 3, n),
        "a": y,
        "b": 1.0 - y,
    }
    schema = DatasetSchema(
        "toy", feats, tasks=["a", "b"], user_field="user", item_field="item", scenario_field="scenario"
    )
    schema.validate(cols)
    return schema, build_tensors(schema, cols)


# -- 1. PCGrad: surgery on the parameters two or more tasks reach -------------------------------------------
def test_pcgrad_on_ple_projects_only_the_truly_shared_parameters():
    torch.manual_seed(0)
    schema, batch = two_task_table()
    model = mtlbench.create_model(
        "ple",
        schema,
        embedding_dim=4,
        num_levels=1,
        num_specific_experts=1,
        num_shared_experts=2,
        expert=(6,),
        tower=(4,),
    )
    out = ModelOutput(model(batch))
    losses = torch.stack(
        [
            nn.functional.binary_cross_entropy_with_logits(out.logits[t], batch["labels"][:, k], reduction="none")
            for k, t in enumerate(schema.tasks)
        ],
        dim=1,
    )
    mask = torch.ones_like(losses, dtype=torch.bool)
    names = dict(model.named_parameters())
    specific = {
        k: [
            n for n in names if n.startswith((f"backbone.levels.0.specific.{k}.", f"backbone.levels.0.task_gates.{k}."))
        ]
        for k in (0, 1)
    }
    shared = [n for n in names if n.startswith(("embedding.", "backbone.levels.0.shared."))]
    assert specific[0] and specific[1] and shared
    # each task's own gradient, by hand
    task_loss = losses.mean(0)
    own = [
        dict(zip(names, torch.autograd.grad(task_loss[k], list(names.values()), retain_graph=True, allow_unused=True)))
        for k in (0, 1)
    ]

    def flat(k, which):
        return torch.cat(
            [(own[k][n] if own[k][n] is not None else torch.zeros_like(names[n])).reshape(-1) for n in which]
        )

    g0, g1 = flat(0, shared), flat(1, shared)
    assert g0 @ g1 < 0  # the two tasks conflict on the shared parameters
    pc0 = g0 - (g0 @ g1) / (g1 @ g1) * g1  # PCGrad by hand on the shared-parameter vector (K = 2)
    pc1 = g1 - (g1 @ g0) / (g0 @ g0) * g0
    assert abs(float(pc0 @ g1)) < 1e-6 and abs(float(pc1 @ g0)) < 1e-6  # no conflict left

    w = create_weighting("pcgrad", schema.tasks)
    w.attach(model)
    model.zero_grad()
    w(losses, mask, batch, out).loss.backward()
    got = torch.cat([names[n].grad.reshape(-1) for n in shared])
    torch.testing.assert_close(got, pc0 + pc1, atol=1e-6, rtol=1e-5)
    for k in (0, 1):  # task-specific experts and gates: that task's own gradient, unprojected
        for n in specific[k]:
            torch.testing.assert_close(names[n].grad, own[k][n], atol=1e-7, rtol=1e-6)
    # the strategy's own view of what is shared
    assert {id(p) for p in w.shared_of(out)} == {id(names[n]) for n in shared}


# -- 3. STAR: partitioned normalisation of scenarios with a single row in the batch ---------------------------
def test_partitioned_norm_single_row_scenario_uses_running_stats_and_leaves_them_alone():
    from mtlbench.models.star import PartitionedNorm

    pn = PartitionedNorm(1, num_scenarios=3, momentum=0.5, eps=0.0)
    with torch.no_grad():
        pn.gamma.fill_(2.0)
        pn.beta_p.copy_(torch.tensor([[0.0], [10.0], [100.0]]))
        pn.running_mean.copy_(torch.tensor([[1.0], [4.0], [-1.0]]))
        pn.running_var.copy_(torch.tensor([[9.0], [16.0], [1.0]]))
    z = torch.tensor([[1.0], [3.0], [12.0]], requires_grad=True)
    p = torch.tensor([0, 0, 1])  # scenario 0: two rows (batch statistics); scenario 1: one row; 2: none
    out = pn(z, p)
    # scenario 0: mean 2, var 1 -> ∓1; scenario 1: its moving averages, (12 - 4) / sqrt(16) = 2
    want = torch.tensor([[2 * -1.0], [2 * 1.0], [2 * 2.0 + 10.0]])
    torch.testing.assert_close(out.detach(), want)
    assert out[2, 0].item() != pytest.approx(10.0)  # not normalised to zero (β + β_p alone)
    # moving averages: scenario 0 updated (unbiased var 2), scenario 1 (one row) and 2 (none) untouched
    torch.testing.assert_close(pn.running_mean[:, 0], torch.tensor([0.5 * 1 + 0.5 * 2, 4.0, -1.0]))
    torch.testing.assert_close(pn.running_var[:, 0], torch.tensor([0.5 * 9 + 0.5 * 2, 16.0, 1.0]))
    out.sum().backward()  # finite gradients even with eps = 0 and a zero-variance group
    assert torch.isfinite(z.grad).all() and z.grad[2, 0].item() == pytest.approx(2.0 / 4.0)


def test_partitioned_norm_whole_batch_of_one_row_and_min_rows_setting():
    from mtlbench.errors import ConfigError
    from mtlbench.models.star import PartitionedNorm

    pn = PartitionedNorm(2, num_scenarios=2, partition_stats=False, eps=0.0)
    with torch.no_grad():
        pn.running_mean.fill_(1.0)
        pn.running_var.fill_(4.0)
    out = pn(torch.tensor([[5.0, -3.0]]), torch.tensor([1]))
    torch.testing.assert_close(out, torch.tensor([[2.0, -2.0]]))
    assert pn.running_mean.tolist() == [[1.0, 1.0]] and pn.running_var.tolist() == [[4.0, 4.0]]
    pn3 = PartitionedNorm(1, num_scenarios=2, min_rows=3, eps=0.0)  # two rows are "too few" too
    pn3(torch.tensor([[0.0], [2.0]]), torch.tensor([0, 0]))
    assert pn3.running_mean.tolist() == [[0.0], [0.0]]
    with pytest.raises(ConfigError, match="min_rows"):
        PartitionedNorm(1, num_scenarios=2, min_rows=1)
    schema, batch = two_task_table(8)
    model = mtlbench.create_model("star", schema, embedding_dim=4, star=(4,), tower=(), aux=(4,), norm_min_rows=3)
    assert model.norm.min_rows == 3 and torch.isfinite(model(batch)["a"]).all()


# -- 2. PLE_stage's rule stage: strictly earlier training rows; entire-space CVR per click -------------------------
def rule_stage_of(rows, tasks, conditional=None, train=None, **settings):
    """rule_stage over ``rows`` = [(user, time, {task: label})], given in a scrambled file order."""
    from mtlbench.data.derived import compute_derived

    perm = np.random.default_rng(1).permutation(len(rows))
    rows = [rows[i] for i in perm]
    schema = DatasetSchema(
        "r",
        [Feature("u", vocab_size=10, role="user")],
        tasks=list(tasks),
        user_field="u",
        time_field="t",
        conditional_tasks=dict(conditional or {}),
    )
    cols = {"u": np.array([r[0] for r in rows]), "t": np.array([r[1] for r in rows])}
    for task in tasks:
        cols[task] = np.array([r[2][task] for r in rows], np.float32)
    train_rows = np.flatnonzero([(r[2].get("train", True)) for r in rows])
    stage = compute_derived("rule_stage", schema, cols, train_rows, **settings)
    back = np.empty_like(perm)
    back[perm] = np.arange(len(perm))
    return stage[back].tolist()  # in the order the rows were listed


def test_rule_stage_of_a_row_uses_only_strictly_earlier_training_rows_of_its_user():
    def r(u, t, c, s, train=True):
        return (u, t, {"c": c, "s": s, "train": train})

    rows = [
        r(0, 1, 1, 1),
        r(0, 2, 1, 1),  # whole (c, s) = (1, 1)
        r(1, 1, 0, 0),
        r(1, 2, 0, 0),  # (0, 0)
        r(2, 1, 1, 0),
        r(2, 2, 1, 0),  # (1, 0)
        r(3, 1, 0, 0),
        r(3, 2, 1, 1),
        r(3, 2, 1, 1),
        r(3, 3, 1, 0),  # (.75, .5); two rows at t = 2
        r(4, 1, 0, 0),
        r(4, 2, 0, 0),  # (0, 0)
        r(5, 1, 1, 1),
        r(5, 5, 0, 0, False),
        r(5, 6, 0, 0, False),
    ]  # one training row (1, 1), then test
    # medians over the six users' whole training rates: c of (1, 0, 1, .75, 0, 1) = .875; s of
    # (1, 0, 0, .5, 0, 1) = .25; two tasks: 0 New (low c), 1 Wander (high c, low s), 2 high on both, 4 no history
    stages = rule_stage_of(rows, ["c", "s"])
    assert stages == [
        4,
        2,
        4,
        0,
        4,
        1,
        4,
        0,
        0,
        0,  # t = 2: only the t = 1 row (not each other); t = 3: c = 2/3 <= .875
        4,
        0,
        4,
        2,
        2,
    ]  # its training row never sees its own label; test rows read training only
    # the leak of today's per-user constant: user 5's only training row was "high on both" from its own label
    assert stages[12] == 4


def test_rule_stage_conversion_rate_is_per_click_for_an_entire_space_conversion_task():
    def user(u, clicks, convs):  # four training impressions (staytime 1 when clicked), then a test row
        out = []
        for i in range(4):
            c = float(i < clicks)
            out.append((u, i, {"c": c, "s": c, "p": float(i < convs)}))
        return out + [(u, 10, {"c": 1.0, "s": 1.0, "p": 1.0, "train": False})]

    rows = user(0, 0, 0) + user(1, 0, 0) + user(2, 0, 0)  # never click: CTR 0 (New)
    rows += user(3, 2, 2) + user(4, 4, 3) + user(5, 4, 0)
    # CTR (0, 0, 0, .5, 1, 1): median .25; staytime the same; users 3-5 are high on both.
    # CVR per click: users 0-2 have none (undefined), 3: 2/2 = 1, 4: 3/4, 5: 0 -> median .75:
    # user 3 Loyal, user 4 (.75, not above) Stick, user 5 Stick. Per impression user 4 (3/4) would be above
    # the median 0 of (0, 0, 0, .5, .75, 0) and Loyal.
    test_rows = [4, 9, 14, 19, 24, 29]
    stages = rule_stage_of(rows, ["c", "s", "p"])
    assert [stages[i] for i in test_rows] == [0, 0, 0, 3, 2, 2]
    # the same conversions labelled on clicks only (NaN elsewhere, a conditional task) give the same stages
    conditional = [(u, t, {**y, "p": y["p"] if y["c"] == 1 else float("nan")}) for u, t, y in rows]
    stages = rule_stage_of(conditional, ["c", "s", "p"], conditional={"p": "c"})
    assert [stages[i] for i in test_rows] == [0, 0, 0, 3, 2, 2]


# -- 4. hash_buckets on the user field with STAN: one warning ------------------------------------------------------
SMALL = ["dataset.n_rows=1500", "dataset.n_users=200", "dataset.n_items=100", *FAST]


def hash_warnings(overrides):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_components(compose_cfg([*SMALL, *overrides]))
    return [str(w.message) for w in caught if "hash_buckets" in str(w.message)]


def test_hash_buckets_on_the_user_field_with_stan_warns_once_about_shared_stage_state():
    got = hash_warnings(["model=stan", "model.expert=[8]", "model.tower=[]", "hash_buckets=64"])
    assert len(got) == 1 and "'user_id'" in got[0] and "STAN's per-user stage state" in got[0]
    assert (
        len(hash_warnings(["model=stan", "model.expert=[8]", "model.tower=[]", "hash_buckets={user_id: 1000}"])) == 1
    )  # named explicitly: hashed whatever the size
    # no warning: users not hashed (vocabulary 200 <= 500; only items named), or no per-user stage state
    assert hash_warnings(["model=stan", "model.expert=[8]", "model.tower=[]", "hash_buckets=500"]) == []
    assert hash_warnings(["model=stan", "model.expert=[8]", "model.tower=[]", "hash_buckets={item_id: 16}"]) == []
    assert hash_warnings(["model=mmoe", "model.expert=[8]", "model.tower=[]", "hash_buckets=64"]) == []


# -- 5. known scenario values of Douban, AliExpress, KuaiRand -----------------------------------------------------
def write_lines(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


DOUBAN_HEADER = "user_id,item_id,rating,domain,living_place,join_time,time_bin"


def test_douban_domain_must_be_movie_book_or_music(tmp_path):
    from mtlbench.datasets.douban import Douban
    from mtlbench.errors import DataError

    good = [
        DOUBAN_HEADER,
        "1,10,1,movie,a,2007-07-10,3",
        "2,11,0,book,b,2008-01-03,1",
        "1,12,1,music,a,2007-07-10,2",
        "2,10,1, movie ,b,2008-01-03,4",
    ]
    schema, c = Douban(path=str(write_lines(tmp_path / "ok" / "d.csv", good))).build()
    assert schema.feature("domain").vocab_size == 3 and sorted(set(c["domain"].tolist())) == [0, 1, 2]
    bad = good[:3] + ["1,13,1,games,a,2007-07-10,5"] + good[3:]
    with pytest.raises(DataError, match=r"bad.d\.csv: line 4: column 'domain' has 'games'") as e:
        Douban(path=str(write_lines(tmp_path / "bad" / "d.csv", bad))).build()
    assert "\n" not in str(e.value) and "movie" in str(e.value)
    empty = good[:2] + ["1,13,1,,a,2007-07-10,5"]
    with pytest.raises(DataError, match=r"line 3: column 'domain' has ''"):
        Douban(path=str(write_lines(tmp_path / "empty" / "d.csv", empty))).build()


def aliexpress_file(path, seed=0):
    header = [
        "search_id",
        *(f"categorical_{i}" for i in range(1, 17)),
        *(f"numerical_{i}" for i in range(1, 64)),
        "click",
        "conversion",
    ]
    rng = np.random.default_rng(seed)
    rows = [
        ",".join(str(v) for v in [k, *rng.integers(0, 5, 16), *np.round(rng.random(63), 3), k % 2, 0]) for k in range(4)
    ]
    return write_lines(path, [",".join(header), *rows])


def test_aliexpress_country_must_be_a_published_country(tmp_path):
    from mtlbench.datasets.aliexpress import AliExpress
    from mtlbench.errors import DataError

    for country in ("NL", "US", "RU"):
        aliexpress_file(tmp_path / "ok" / f"AliExpress_{country}" / "train.csv")
    schema, c = AliExpress(path=str(tmp_path / "ok")).build()
    assert schema.scenario_field == "country" and schema.feature("country").vocab_size == 3
    aliexpress_file(tmp_path / "de" / "AliExpress_NL" / "train.csv")
    aliexpress_file(tmp_path / "de" / "AliExpress_DE" / "train.csv")
    with pytest.raises(DataError, match=r"AliExpress_DE.train\.csv: country 'DE'.*known: ES, FR, NL, RU, US"):
        AliExpress(path=str(tmp_path / "de")).build()
    schema, _ = AliExpress(path=str(tmp_path / "de"), countries=["nl"]).build()  # DE not selected: not read
    assert schema.scenario_field is None
    aliexpress_file(tmp_path / "anon" / "AliExpress_ES" / "train.csv")
    aliexpress_file(tmp_path / "anon" / "extra" / "train.csv")  # a second "country" named by its folder only
    with pytest.raises(DataError, match=r"extra.train\.csv: no AliExpress country in its name \(value 'extra'"):
        AliExpress(path=str(tmp_path / "anon")).build()


def test_kuairand_tab_must_be_in_the_documented_range(tmp_path):
    import shutil
    from pathlib import Path

    from mtlbench.datasets.kuairand import KuaiRand
    from mtlbench.errors import DataError

    fixtures = Path(__file__).resolve().parent / "fixtures" / "kuairand"
    for f in fixtures.glob("*.csv"):
        shutil.copy(f, tmp_path / f.name)
    log = tmp_path / "log_standard_4_22_to_5_08_pure.csv"
    lines = log.read_text().splitlines()
    schema, _ = KuaiRand(path=str(tmp_path)).build()
    assert schema.scenario_field == "tab"
    header = lines[0].split(",")
    for value, shown in (("15", "'15'"), ("-1", "'-1'"), ("", "''")):
        fields = lines[5].split(",")
        fields[header.index("tab")] = value
        log.write_text("\n".join([*lines[:5], ",".join(fields), *lines[6:]]) + "\n")
        with pytest.raises(DataError, match=rf"log_standard_4_22_to_5_08_pure\.csv: line 6: column 'tab' has {shown}"):
            KuaiRand(path=str(tmp_path)).build()
