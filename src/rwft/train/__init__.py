"""The training skeleton and the trainers built on it."""
