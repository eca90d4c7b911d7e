"""Prefect flows and their steps. A process that runs them logs a user error (a `GraftError`) that ends a run as
its sentence, without Prefect's traceback (`operations.runlogs`)."""

from ..operations.runlogs import user_errors_as_sentences

user_errors_as_sentences()
