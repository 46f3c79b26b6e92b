"""Built-in conversation environments (see ``base`` for the interface)."""

from rwft.rollout.envs.base import Environment, Episode, Task, env_names, make_env, register

__all__ = ["Environment", "Episode", "Task", "env_names", "make_env", "register"]
