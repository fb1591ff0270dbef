"""Analyses run after training, e.g. how well learned user representations recover lifecycle stages (STAN RQ3)."""
