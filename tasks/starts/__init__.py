"""Where a release's fine-tune starts, for `recycle.mode: auto`: the transferability pre-check of a diff onto
a new release (`precheck`), the candidate starts (`make`), the probes that score them and the choice
(`probes`, asked for by a track's `spec.Probe`), the typed record of what was found and chosen (`choice`), and
the probe data kept apart from the gate's (`split`).

Import what you use from its module: the package itself loads none of them (the probes load the training and
evaluation stack, which a command that only reads a track's config does without)."""
