"""A run's log says a user error as the sentence it is: a `GraftError` that ends a task, a flow or the engine's
process is logged by Prefect with its traceback; here its traceback is dropped (the message already says what,
where and how to fix it), as the CLI does. A defect, any other exception, keeps its traceback."""

from __future__ import annotations

import logging

from ..errors import GraftError

RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs", "prefect.engine")
"""Where Prefect logs the exception that ends a task run, a flow run, and the process that ran one."""


class SentencesOnly(logging.Filter):
    """Drops the traceback of a record whose exception is a `GraftError`; lets every record through."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], GraftError):
            record.exc_info = None
            record.exc_text = None
        return True


_FILTER = SentencesOnly()


def user_errors_as_sentences() -> None:
    """Install `SentencesOnly` on Prefect's run loggers in this process (once)."""
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
