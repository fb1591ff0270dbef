"""Seeded user-lifecycle simulator: the default dataset of the benchmark.

Generative story (after the STAN paper, sec. 2.1):

* Users move through latent lifecycle stages 0..3 = New, Wander, Stick, Loyal along their own
  timeline. The stage process is a semi-Markov chain: a user stays in a stage for a geometric number of
  interactions (stay probability ``stage_persistence``, Loyal leaves slowest) and then jumps, mostly
  forward (New -> Wander/Stick -> Loyal) with some back-moves. Observation starts mid-life, so the
  first stage of a user is random, biased towards New.
* Each user has a heavy-tailed (lognormal) number of interactions summing to ``n_rows``, grouped into
  sessions of a few interactions; timestamps increase along each user's timeline and users interleave.
* The item shown depends on the stage: New users see popular items, Wanderers browse the long tail,
  Stick and Loyal users keep to their favourite category.
* Labels: ``click``; ``long_view``, a continuous log stay time binarised at its median over rows (equal
  frequency binning, as STAN does with staytime); ``purchase``, only possible after a click (entire
  space: purchase=1 implies click=1, 0 when not clicked). Each logit is a stage propensity (New: low
  click; Wander: high click, low stay; Stick: high click and stay, low purchase; Loyal: steady on all
  three) + a stage-scaled user x item latent affinity + scenario offset + item / demographic x category
  biases + Gaussian noise of std ``noise``.
* Observable features only hint at the stage: ``activity_level`` is a noisy function of it,
  ``tenure_bucket`` buckets the position along the user's timeline, ``hist_items`` holds the user's
  previous items (most recent first). The true stage is kept in the analysis field ``true_stage``.

Everything is vectorised with numpy; the only Python loops run over stage segments, stages and tasks.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.special import expit, ndtr

from mtlbench.data.schema import DatasetSchema, Feature
from mtlbench.data.source import DatasetSource
from mtlbench.datasets.features import recent_items
from mtlbench.errors import ConfigError
from mtlbench.registry import register_dataset

TASKS = ["click", "long_view", "purchase"]
STAGE_NAMES = ["New", "Wander", "Stick", "Loyal"]
N_STAGES = len(STAGE_NAMES)

# -- stage dynamics ----------------------------------------------------------------------------------
#: stage of a user's first observed interaction
INITIAL_STAGE_P = np.array([0.55, 0.20, 0.15, 0.10])
#: where a user goes when leaving a stage (rows: from, cols: to); mostly forward, some back-moves
JUMP_P = np.array(
    [
        [0.00, 0.55, 0.45, 0.00],  # New -> Wander / Stick
        [0.15, 0.00, 0.45, 0.40],  # Wander -> Stick / Loyal, sometimes back to New
        [0.05, 0.25, 0.00, 0.70],  # Stick -> Loyal, sometimes back to Wander
        [0.00, 0.30, 0.70, 0.00],  # Loyal -> back to Stick / Wander (fatigue)
    ]
)
#: multiplies ``1 - stage_persistence``: New is left quickly, Loyal slowly
LEAVE_FACTOR = np.array([1.5, 1.2, 1.0, 0.4])

# -- stage propensities (logits; long_view: mean log stay time) --------------------------------------
CLICK_LOGIT = np.array([-2.0, -0.3, -1.0, -1.2])
STAY_MEAN = np.array([0.15, -0.6, 0.6, 0.35])
CVR_LOGIT = np.array([-2.0, -1.4, -3.2, -1.6])
#: how strongly user x item affinity drives the labels per stage (Wanderers browse, Loyal users choose)
AFFINITY_SCALE = np.array([0.7, 0.4, 1.0, 1.3])
#: log stay time bonus of clicked impressions (couples the two tasks)
STAY_CLICK_BONUS = 0.5
#: residual std of log stay time (on top of ``noise``)
STAY_RESIDUAL = 1.0
#: purchase logit drop from the cheapest to the most expensive price bucket
PRICE_EFFECT = 1.0
#: click logit amplitude of the time-of-day cycle
HOUR_EFFECT = 0.3

# -- item choice per stage -------------------------------------------------------------------------------
#: Zipf exponent of the popularity-based item draw: New sees the head, Wander the long tail
ZIPF_EXPONENT = np.array([1.2, 0.6, 1.0, 1.0])
#: probability that an impression comes from the user's favourite category
FAVOURITE_P = np.array([0.0, 0.0, 0.5, 0.6])

# -- features ---------------------------------------------------------------------------------------
N_CATEGORIES = 30
N_BRANDS = 200
N_PRICE_BUCKETS = 10
N_AGE = 7
N_GENDER = 3
N_CITY = 50
N_ACTIVITY = 5
N_TENURE = 8  # log2 buckets of the position on the user's timeline
ACTIVITY_NOISE = 0.9  # std of activity_level around its stage mean
LATENT_DIM = 8
USER_COUNT_SIGMA = 1.0  # lognormal sigma of interactions per user
SESSION_MEAN_LEN = 4.0  # mean interactions per session
HORIZON_S = 30 * 86400  # observation window (s)
IN_SESSION_GAP_S = 40.0  # mean gap between interactions of a session (s)
DAY_S = 86400


class Simulation(NamedTuple):
    """Output of :meth:`LifecycleSimulator.simulate`: the dataset plus the true label probabilities."""

    schema: DatasetSchema
    columns: dict[str, np.ndarray]
    truth: dict[str, np.ndarray]  # task -> true P(label = 1) per row (oracle predictions)


@register_dataset("lifecycle")
class LifecycleSimulator(DatasetSource):
    """Synthetic multi-task, multi-scenario data whose label distributions follow latent user stages."""

    version = "3"  # 2: item_popularity from the catalogue rank (no future counts); 3: task roles

    def __init__(
        self,
        n_users: int = 5000,
        n_items: int = 5000,
        n_rows: int = 300000,
        seq_len: int = 10,
        n_scenarios: int = 3,
        seed: int = 0,
        stage_persistence: float = 0.97,
        noise: float = 0.5,
    ) -> None:
        """``stage_persistence``: per-interaction probability of staying in a stage (scaled by
        ``LEAVE_FACTOR``); ``noise``: std of the unobservable per-row Gaussian noise on every logit."""
        if min(n_users, n_items, n_rows, seq_len, n_scenarios) <= 0:
            raise ConfigError("lifecycle: n_users, n_items, n_rows, seq_len and n_scenarios must be positive")
        if not 0.0 <= stage_persistence < 1.0:
            raise ConfigError(f"lifecycle: stage_persistence must be in [0, 1), got {stage_persistence}")
        if noise < 0:
            raise ConfigError(f"lifecycle: noise must be >= 0, got {noise}")
        self.n_users, self.n_items, self.n_rows = int(n_users), int(n_items), int(n_rows)
        self.seq_len, self.n_scenarios, self.seed = int(seq_len), int(n_scenarios), int(seed)
        self.stage_persistence, self.noise = float(stage_persistence), float(noise)

    # -- contract -------------------------------------------------------------------------------------
    def build(self) -> tuple[DatasetSchema, dict[str, np.ndarray]]:
        sim = self.simulate()
        return sim.schema, sim.columns

    def make_schema(self) -> DatasetSchema:
        """The schema of this simulator's columns (vocabularies follow the settings)."""
        return DatasetSchema(
            name="lifecycle",
            features=[
                Feature("user_id", vocab_size=self.n_users, role="user"),
                Feature("age_bucket", vocab_size=N_AGE, role="user"),
                Feature("gender", vocab_size=N_GENDER, role="user"),
                Feature("city", vocab_size=N_CITY, role="user"),
                Feature("activity_level", vocab_size=N_ACTIVITY, role="user"),
                Feature("tenure_bucket", vocab_size=N_TENURE, role="user"),
                Feature("item_id", vocab_size=self.n_items, role="item"),
                Feature("category", vocab_size=N_CATEGORIES, role="item"),
                Feature("brand", vocab_size=N_BRANDS, role="item"),
                Feature("price_bucket", vocab_size=N_PRICE_BUCKETS, role="item"),
                Feature("scenario", vocab_size=self.n_scenarios, role="context"),
                Feature("item_popularity", kind="numeric", role="item"),
                Feature("hour", kind="numeric", role="context"),
                Feature("hist_items", kind="sequence", max_len=self.seq_len, embedding="item_id", role="user"),
            ],
            tasks=list(TASKS),
            user_field="user_id",
            item_field="item_id",
            scenario_field="scenario",
            time_field="timestamp",
            session_field="session_id",
            analysis_fields=["true_stage"],
            task_roles={"click": "click", "conversion": "purchase"},  # purchase: entire space (needs a click)
        )

    # -- simulation -----------------------------------------------------------------------------------
    def simulate(self) -> Simulation:
        """Generate all rows (sorted by timestamp), validated, plus the true label probabilities."""
        rng = np.random.default_rng(self.seed)
        n_users, n_items = self.n_users, self.n_items

        # static user and item attributes; latents partly explained by the observable attributes
        age = rng.integers(0, N_AGE, n_users)
        gender = rng.integers(0, N_GENDER, n_users)
        city = rng.integers(0, N_CITY, n_users)
        user_lat = (
            rng.normal(size=(N_AGE, LATENT_DIM))[age] * 0.6
            + rng.normal(size=(N_GENDER, LATENT_DIM))[gender] * 0.4
            + rng.normal(size=(n_users, LATENT_DIM)) * 0.7
        )
        user_bias = rng.normal(0.0, 0.4, n_users)
        cat_lat = rng.normal(size=(N_CATEGORIES, LATENT_DIM))
        category = rng.integers(0, N_CATEGORIES, n_items)
        brand = rng.integers(0, N_BRANDS, n_items)
        item_lat = cat_lat[category] * 0.7 + rng.normal(size=(n_items, LATENT_DIM)) * 0.7
        brand_bias = rng.normal(0.0, 0.3, N_BRANDS)
        log_price = rng.normal(0.0, 1.0, N_CATEGORIES)[category] + rng.normal(0.0, 0.5, n_items)
        price_bucket = _equal_frequency_buckets(log_price, N_PRICE_BUCKETS)
        item_bias = {t: rng.normal(0.0, 0.3, n_items) + brand_bias[brand] for t in TASKS}
        demo_cat = {t: rng.normal(0.0, 0.3, (N_AGE, N_GENDER, N_CATEGORIES)) for t in TASKS}
        task_dim_w = {t: rng.uniform(0.3, 1.7, LATENT_DIM) for t in TASKS}
        favourite = np.argmax(user_lat @ cat_lat.T, axis=1)
        item_of_rank = rng.permutation(n_items)  # popularity rank -> item id

        # interactions per user (heavy-tailed), rows laid out user-major in time order
        counts = self._user_counts(rng)
        n = int(counts.sum())
        user = np.repeat(np.arange(n_users), counts)
        user_start = np.cumsum(counts) - counts
        pos = np.arange(n) - np.repeat(user_start, counts)
        stage = self._stages(rng, counts, user_start)

        # items: stage-dependent Zipf draw, favourite category for Stick/Loyal
        item = np.empty(n, dtype=np.int64)
        u = rng.random(n)
        for s in range(N_STAGES):
            rows = np.flatnonzero(stage == s)
            cdf = np.cumsum((np.arange(n_items) + 1.0) ** -ZIPF_EXPONENT[s])
            ranks = np.minimum(np.searchsorted(cdf, u[rows] * cdf[-1], side="right"), n_items - 1)
            item[rows] = item_of_rank[ranks]
        fav_rows = np.flatnonzero(rng.random(n) < FAVOURITE_P[stage])
        picked = _uniform_item_of_category(rng, category, favourite[user[fav_rows]], N_CATEGORIES)
        ok = picked >= 0  # a category may have no items
        item[fav_rows[ok]] = picked[ok]

        # sessions and timestamps
        timestamp, session_id = self._timeline(rng, counts, user_start, pos)
        hour = ((timestamp % DAY_S) / DAY_S).astype(np.float32)

        # context and observable stage hints
        scen_p = 0.6 ** np.arange(self.n_scenarios)
        scenario = rng.choice(self.n_scenarios, size=n, p=scen_p / scen_p.sum())
        activity = np.clip(
            np.rint(stage * (N_ACTIVITY - 1) / (N_STAGES - 1) + rng.normal(0.0, ACTIVITY_NOISE, n)), 0, N_ACTIVITY - 1
        ).astype(np.int64)
        tenure = np.minimum(np.floor(np.log2(pos + 1.0)), N_TENURE - 1).astype(np.int64)

        # labels
        cat = category[item]
        aff_scale = AFFINITY_SCALE[stage]
        uv = user_lat[user] * item_lat[item] / np.sqrt(2.0 * LATENT_DIM)

        def base(t: str) -> np.ndarray:
            affinity = aff_scale * (uv @ task_dim_w[t])
            return affinity + item_bias[t][item] + demo_cat[t][age[user], gender[user], cat]

        def noisy(logit: np.ndarray) -> np.ndarray:
            return logit + rng.normal(0.0, self.noise, n)

        # the row noise is unobservable: oracle probabilities marginalise it (probit approximation)
        shrink = 1.0 / np.sqrt(1.0 + np.pi * self.noise**2 / 8.0)
        stay_std = np.sqrt(STAY_RESIDUAL**2 + self.noise**2)

        offsets = np.linspace(0.5, -0.5, self.n_scenarios) if self.n_scenarios > 1 else np.zeros(1)
        click_logit = (
            CLICK_LOGIT[stage]
            + offsets[scenario]
            + user_bias[user]
            + base("click")
            + HOUR_EFFECT * np.sin(2 * np.pi * hour)
        )
        click = rng.random(n) < expit(noisy(click_logit))
        stay_mean = STAY_MEAN[stage] + 0.5 * offsets[scenario] + base("long_view")
        log_stay = noisy(stay_mean) + STAY_CLICK_BONUS * click + rng.normal(0.0, STAY_RESIDUAL, n)
        threshold = np.median(log_stay)
        long_view = log_stay > threshold
        price = price_bucket[item] / (N_PRICE_BUCKETS - 1)
        cvr_logit = CVR_LOGIT[stage] - offsets[scenario] - PRICE_EFFECT * price + base("purchase")
        purchase = click & (rng.random(n) < expit(noisy(cvr_logit)))
        p_click, p_cvr = expit(shrink * click_logit), expit(shrink * cvr_logit)
        p_stay = p_click * ndtr((stay_mean + STAY_CLICK_BONUS - threshold) / stay_std) + (1 - p_click) * ndtr(
            (stay_mean - threshold) / stay_std
        )
        truth = {"click": p_click, "long_view": p_stay, "purchase": p_click * p_cvr}

        # history: previous seq_len items of the same user, most recent first (rows are user-major in time order)
        hist = recent_items(user, item, self.seq_len)

        # the item's a-priori catalogue popularity (its rank), not counts over all rows: those would leak
        # impressions of the validation and test periods into a training feature
        rank_of_item = np.empty(n_items, dtype=np.int64)
        rank_of_item[item_of_rank] = np.arange(n_items)
        popularity = (1.0 - np.log1p(rank_of_item) / np.log1p(n_items)).astype(np.float32)

        columns = {
            "user_id": user,
            "age_bucket": age[user],
            "gender": gender[user],
            "city": city[user],
            "activity_level": activity,
            "tenure_bucket": tenure,
            "item_id": item,
            "category": cat,
            "brand": brand[item],
            "price_bucket": price_bucket[item],
            "scenario": scenario,
            "item_popularity": popularity[item],
            "hour": hour,
            "hist_items": hist,
            "click": click,
            "long_view": long_view,
            "purchase": purchase,
            "timestamp": timestamp,
            "session_id": session_id,
            "true_stage": stage,
        }
        order = np.lexsort((pos, user, timestamp))  # global time order, ties broken by user then position
        columns = {k: _as_column(k, v[order]) for k, v in columns.items()}
        truth = {k: v[order].astype(np.float32) for k, v in truth.items()}
        schema = self.make_schema()
        schema.validate(columns, source="lifecycle simulator")
        return Simulation(schema, columns, truth)

    def _user_counts(self, rng: np.random.Generator) -> np.ndarray:
        """Heavy-tailed interactions per user summing to ``n_rows``; every user has one when possible."""
        weights = rng.lognormal(0.0, USER_COUNT_SIGMA, self.n_users)
        floor = 1 if self.n_rows >= self.n_users else 0
        return floor + rng.multinomial(self.n_rows - floor * self.n_users, weights / weights.sum())

    def _stages(self, rng: np.random.Generator, counts: np.ndarray, user_start: np.ndarray) -> np.ndarray:
        """Stage of every row: geometric dwell times, then a jump by ``JUMP_P``; loops over segments."""
        leave = np.clip((1.0 - self.stage_persistence) * LEAVE_FACTOR, 1e-9, 1.0)
        jump_cdf = np.cumsum(JUMP_P, axis=1)
        n = int(counts.sum())
        change = np.full(n, -1, dtype=np.int64)  # stage entered at this row, -1 = unchanged
        users = np.flatnonzero(counts > 0)
        cur = rng.choice(N_STAGES, size=len(users), p=INITIAL_STAGE_P)
        t = np.zeros(len(users), dtype=np.int64)
        while len(users):
            change[user_start[users] + t] = cur
            t = t + rng.geometric(leave[cur])
            alive = t < counts[users]
            users, cur, t = users[alive], cur[alive], t[alive]
            nxt = (rng.random(len(users))[:, None] > jump_cdf[cur]).sum(axis=1)
            cur = np.minimum(nxt, N_STAGES - 1)
        # forward fill within users: every user's first row holds a change
        last = np.maximum.accumulate(np.where(change >= 0, np.arange(n), 0))
        return change[last]

    def _timeline(
        self, rng: np.random.Generator, counts: np.ndarray, user_start: np.ndarray, pos: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Integer timestamps (strictly increasing per user) and globally unique session ids."""
        n = len(pos)
        new_session = (pos == 0) | (rng.random(n) < 1.0 / SESSION_MEAN_LEN)
        session_id = np.cumsum(new_session) - 1
        # gaps between a user's sessions are scaled to fill a random part of the horizon
        user = np.repeat(np.arange(self.n_users), counts)
        span = rng.uniform(0.2, 1.0, self.n_users) * HORIZON_S
        origin = rng.uniform(0.0, 1.0, self.n_users) * (HORIZON_S - span)
        session_gap = np.where(new_session & (pos > 0), rng.exponential(1.0, n), 0.0)
        total = np.bincount(user, weights=session_gap, minlength=self.n_users)
        session_gap *= (span / np.maximum(total, 1e-12))[user]
        gap = np.where(new_session, session_gap, rng.exponential(IN_SESSION_GAP_S, n))
        gap = np.floor(gap) + 1.0  # >= 1 s: strictly increasing within a user
        gap[pos == 0] = 0.0
        elapsed = np.cumsum(gap)
        elapsed -= elapsed[user_start[user]]  # first gap of a user is 0
        timestamp = (np.floor(origin)[user] + elapsed).astype(np.int64)
        return timestamp, session_id.astype(np.int64)


def _equal_frequency_buckets(x: np.ndarray, n_buckets: int) -> np.ndarray:
    """Bucket ids 0..n_buckets-1 by quantiles of ``x``."""
    edges = np.quantile(x, np.linspace(0.0, 1.0, n_buckets + 1)[1:-1])
    return np.searchsorted(edges, x, side="right").astype(np.int64)


def _uniform_item_of_category(
    rng: np.random.Generator, category: np.ndarray, wanted: np.ndarray, n_categories: int
) -> np.ndarray:
    """A uniformly random item of each wanted category (-1 where the category has no items)."""
    by_category = np.argsort(category, kind="stable")
    size = np.bincount(category, minlength=n_categories)
    start = np.cumsum(size) - size
    offset = np.floor(rng.random(len(wanted)) * size[wanted]).astype(np.int64)
    return np.where(size[wanted] > 0, by_category[np.minimum(start[wanted] + offset, len(category) - 1)], -1)


def _as_column(name: str, v: np.ndarray) -> np.ndarray:
    """Cast to the schema dtypes: float32 labels and numerics, int64 ids."""
    if name in TASKS or v.dtype.kind == "f":
        return np.ascontiguousarray(v, dtype=np.float32)
    return np.ascontiguousarray(v, dtype=np.int64)
