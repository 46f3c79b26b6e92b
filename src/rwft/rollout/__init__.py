"""Environments, policies, judges, and the collection and labelling of episodes."""
