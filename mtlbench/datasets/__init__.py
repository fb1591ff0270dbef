"""Datasets, one module each (imported by the registry, which registers them), and the readers they share.

Readers: :mod:`~mtlbench.datasets.files` finds a dataset's files, :mod:`~mtlbench.datasets.csv_reading` and
:mod:`~mtlbench.datasets.parquet_reading` read their columns into a :mod:`~mtlbench.datasets.raw_file` whose
checks name the file, line and column of a bad value, :mod:`~mtlbench.datasets.vocabulary` re-indexes
categorical columns, :mod:`~mtlbench.datasets.features` builds features (joins, histories, time order), and
:mod:`~mtlbench.datasets.progress` draws the progress bars.
"""
