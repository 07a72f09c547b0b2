"""Prefect tasks (:mod:`tasks.stages`): one thin wrapper per r1core stage, with retries and the
cache policy in the decorator.

Importing this package sets the project's embedded defaults for any variable the user has not
set (:func:`r1core.settings.configure_environment`: ``PREFECT_HOME`` under the state folder,
MLflow on SQLite), before any module of it imports Prefect.
"""

from r1core.settings import configure_environment

configure_environment()
