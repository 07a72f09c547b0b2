"""``CheckpointAlignedMLflowCallback``: transformers' MLflow callback made safe to resume
(change 6 of :class:`r1core.grpo.R1GRPOTrainer`).

It reads three attributes of transformers' ``MLflowCallback`` that are not public API
(``_initialized``, ``_ml_flow``: the ``mlflow`` module, ``_async_log``), pinned by
``transformers>=5,<6`` in ``pyproject.toml``.
"""

from __future__ import annotations

from transformers.integrations import MLflowCallback


class CheckpointAlignedMLflowCallback(MLflowCallback):
    """transformers' ``MLflowCallback`` made safe to resume: with checkpointing on
    (``save_strategy != "no"``), logged metrics are held back and committed synchronously just
    before each checkpoint is written (:meth:`commit`, called by :class:`r1core.grpo.R1GRPOTrainer`)
    and at the end of training; on (re)start, steps the MLflow run already holds are not logged again.

    A kill after the commit but before the checkpoint replays a few steps: they are skipped.
    A kill after the checkpoint loses only uncommitted steps, which the resumed run redoes.
    """

    def __init__(self):
        super().__init__()
        self._pending: list[tuple[int, dict]] = []
        self._committed_step = 0

    def setup(self, args, state, model):
        super().setup(args, state, model)
        self._async_log = False  # a commit must be on disk before the checkpoint is
        run = self._ml_flow.active_run()
        if run is not None and state.is_world_process_zero:
            from mlflow.tracking import MlflowClient

            history = MlflowClient().get_metric_history(run.info.run_id, "loss")
            self._committed_step = max((m.step for m in history), default=0)

    def on_log(self, args, state, control, logs, model=None, **kwargs):
        if not self._initialized:
            self.setup(args, state, model)
        if state.global_step <= self._committed_step:
            return  # replayed after a resume: already in the run
        if args.save_strategy in ("no", None) or str(args.save_strategy).endswith("NO"):
            return super().on_log(args, state, control, logs, model=model, **kwargs)
        self._pending.append((state.global_step, dict(logs)))

    def commit(self, args, state, control=None, model=None) -> None:
        """Write the held-back metrics to MLflow (synchronously)."""
        import copy

        for step, logs in self._pending:
            if step <= self._committed_step:
                continue
            at_step = copy.copy(state)
            at_step.global_step = step
            super().on_log(args, at_step, control, logs, model=model)
            self._committed_step = step
        self._pending.clear()

    def on_train_end(self, args, state, control, **kwargs):
        self.commit(args, state, control, kwargs.get("model"))
        return super().on_train_end(args, state, control, **kwargs)

