"""Collecting run directories into tables."""
