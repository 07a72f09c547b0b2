"""How the flows are run and served: the ``r1`` command line (:mod:`deployments.cli`), the local
Prefect and MLflow servers (:mod:`deployments.servers`) and the deployments with their schedules
(:mod:`deployments.serve`).

Importing this package sets the project's embedded defaults for any variable the user has not
set (:func:`r1core.settings.configure_environment`), before any module of it imports Prefect.
"""

from r1core.settings import configure_environment

configure_environment()
