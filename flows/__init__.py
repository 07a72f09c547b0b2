"""Prefect flows: each reads as a list of steps over the tasks in ``tasks/``."""
