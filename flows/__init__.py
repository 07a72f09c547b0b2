"""Prefect flows: each reads as a list of steps over the tasks in ``tasks/``.

Importing this package sets the project's embedded defaults for any variable the user has not
set (:func:`r1core.settings.configure_environment`), before any flow module imports Prefect.
"""

from r1core.settings import configure_environment

configure_environment()
