"""Progress lines of a step served by a Pipes worker reach the run's Dagster log: the
`avatarpipe.progress` records (the Anny cache build) travel as Pipes log messages
(`ops.worker.progress_to_pipes`), through the same session, context loader and message writer
the warm worker opens for each step."""

import logging

from dagster import AssetExecutionContext, DagsterInstance, MaterializeResult, asset, materialize
from dagster._core.pipes.utils import (
    PipesTempFileContextInjector,
    PipesTempFileMessageReader,
    open_pipes_session,
)
from dagster_pipes import (
    PipesContext,
    PipesDefaultContextLoader,
    PipesDefaultMessageWriter,
    PipesMappingParamsLoader,
)

from ops.worker import PROGRESS_LOGGER, progress_to_pipes

LINE = "avatarpipe: building the Anny model cache (one-off): phase 2/3, 41 s elapsed"


@asset
def step_with_progress(context: AssetExecutionContext) -> MaterializeResult:
    """Opens a Pipes session as `PipesWarmWorkerClient` does and plays the worker's side in
    this process (as `ops.warm_worker` does with the bootstrap parameters it is handed)."""
    with open_pipes_session(
        context=context,
        context_injector=PipesTempFileContextInjector(),
        message_reader=PipesTempFileMessageReader(),
    ) as session:
        loader = PipesMappingParamsLoader(session.get_bootstrap_env_vars())
        with PipesContext(loader, PipesDefaultContextLoader(), PipesDefaultMessageWriter()) as pipes:
            logging.getLogger(PROGRESS_LOGGER).info("before the step: not forwarded")
            with progress_to_pipes(pipes):
                logging.getLogger(PROGRESS_LOGGER).info(LINE)
            logging.getLogger(PROGRESS_LOGGER).info("after the step: not forwarded")
    return MaterializeResult()


def test_progress_of_a_pipes_step_is_in_the_dagster_log() -> None:
    with DagsterInstance.ephemeral() as instance:
        result = materialize([step_with_progress], instance=instance)
        assert result.success
        messages = [e.user_message for e in instance.all_logs(result.run_id)]
    assert LINE in messages
    assert not any("not forwarded" in m for m in messages)
    assert not logging.getLogger(PROGRESS_LOGGER).handlers  # the forwarder is removed afterwards
