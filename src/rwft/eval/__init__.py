"""Evaluation of a policy: metrics, intervals and reports."""
