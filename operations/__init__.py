"""What Graftwork does with its registry and with the Prefect run it is in, as plain functions: the named
operations that need both `tasks` and `storage` (register, export and verify a diff; promote and roll back;
a track's registered spec; whether a track's fine-tune fits the pool), how a run shows itself in Prefect (its
names, progress, report and events; a candidate awaiting approval; a release's run state), and the settings.
Flows' steps and the CLI call them; nothing here defines a Prefect flow or task."""
