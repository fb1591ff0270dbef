"""Datasets. Every module in this package is imported by the registry and registers its datasets."""
