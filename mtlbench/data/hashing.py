"""Hashing of high-cardinality ids into a fixed number of buckets, in integer arithmetic only."""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from mtlbench.data.schema import PAD, DatasetSchema
from mtlbench.errors import ConfigError

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def hash_ids(values: np.ndarray, buckets: int, salt: int = 0) -> np.ndarray:
    """splitmix64(id XOR salt) mod buckets, as int64; ``PAD`` stays ``PAD``.

    Ids stay 64-bit integers throughout: no float conversion, so ids above 2**24 never collide the way
    they would through float32.
    """
    v = np.asarray(values)
    x = v.astype(np.uint64) ^ np.uint64(salt)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        x = x ^ (x >> np.uint64(31))
    out = (x % np.uint64(buckets)).astype(np.int64)
    return np.where(v == PAD, PAD, out) if v.ndim == 2 else out


def hash_plan(schema: DatasetSchema, hash_buckets: int | dict | None) -> dict[str, int]:
    """{categorical field: buckets} of the fields ``hash_buckets`` hashes in ``schema``.

    ``hash_buckets``: an int hashes every categorical field with a larger vocabulary into that many
    buckets; a dict ``{field: buckets}`` names fields explicitly.
    """
    if not hash_buckets:
        return {}
    if isinstance(hash_buckets, int):
        return {f.name: hash_buckets for f in schema.categorical if f.vocab_size > hash_buckets}
    plan = {str(k): int(v) for k, v in dict(hash_buckets).items()}
    unknown = sorted(set(plan) - {f.name for f in schema.categorical})
    if unknown:
        raise ConfigError(f"hash_buckets names unknown categorical field(s) {unknown} of dataset {schema.name!r}")
    return plan


def apply_hashing(
    schema: DatasetSchema, columns: dict[str, np.ndarray], hash_buckets: int | dict | None
) -> tuple[DatasetSchema, dict[str, np.ndarray]]:
    """Hash categorical fields (and sequences sharing their table) whose vocabulary is too large (see
    :func:`hash_plan`)."""
    plan = hash_plan(schema, hash_buckets)
    if not plan:
        return schema, columns
    columns = dict(columns)
    features = []
    for f in schema.features:
        owner = f.name if f.kind == "categorical" else f.embedding
        if owner in plan:
            columns[f.name] = hash_ids(columns[f.name], plan[owner], salt=zlib.crc32(owner.encode()))
            if f.kind == "categorical":
                f = dataclasses.replace(f, vocab_size=plan[owner])
        features.append(f)
    return dataclasses.replace(schema, features=features), columns
