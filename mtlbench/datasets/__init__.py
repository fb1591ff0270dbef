"""Built-in datasets; importing this package registers them."""

from mtlbench.datasets import lifecycle, table  # noqa: F401
