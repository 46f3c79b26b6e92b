"""Whole pipelines built from the stages: bootstrap, compare."""
