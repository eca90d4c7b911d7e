"""Units of work: plain typed functions, handed paths, refs and config objects, returning paths and
records (no Prefect, no database, no settings). Each sub-package has one job:

| package | job |
| --- | --- |
| `engine` | Δ arithmetic: diff, apply, transfer; exactness; vocabulary alignment |
| `io` | model and diff folders on disk: safetensors streaming, shards, the codec (no arithmetic) |
| `training` | fine-tuning recipes, in one process or under accelerate |
| `testbed` | the CPU model family, its corpus, synthetic families (fixtures, not product) |
| `hub` | the Hugging Face Hub: releases, pinned downloads, publishing |
| `evaluate` | lm-eval suites in, eval records out |
| `gate` | the pure promotion decision |
| `starts` | `recycle.mode: auto`: the transferability pre-check, the starts M_i + α·Δ, the probes that pick one |

Inside, imports point one way: `engine` uses `io`; `training`, `evaluate`, `gate`, `hub` and `testbed`
use `io`'s public names at most, never `engine`'s internals; `starts` uses the engine, training and
evaluation, and the test bed builds its probe suite with it.
"""
