"""Graftwork: carry fine-tuning over to new base-model releases with diff vectors.

The package's parts, and the one way their imports point (see docs/architecture.md):

    graftwork.deployments  →  graftwork.flows  →  graftwork.operations  →  graftwork.tasks, graftwork.storage
        →  the bottom

The bottom is this package's own modules: `errors` (the one error tree), `fs` (atomic outputs,
fsync, sizes) and `terms` (the domain's words as enums). Every layer may import them; they import
nothing of Graftwork's but each other.
"""
