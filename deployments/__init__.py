"""How the flows are served: deployments, schedules and their default parameters."""
