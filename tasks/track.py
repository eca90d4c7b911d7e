"""Tracks: one continuous-development line each, declared in YAML and validated here.

```yaml
name: testbed-demo                 # letters, digits, '-', '_', '.'
source:                            # where releases come from; one of:
  kind: local                      #   local:     each sub-folder of release_dir is a release
  release_dir: releases/           #   hub-repos: author + name_pattern (new repos)
                                   #   hub-refs:  repo + ref_pattern (new branches/tags, OLMo style)
finetune:
  data: data/train.jsonl           # {"prompt": ..., "completion": ...} or {"messages": [...]} per line
  recipe: {steps: 100, learning_rate: 1.0e-3}
  # stages, each from the model the one before left (none: one sft stage on `data`):
  #   recipe: {steps: 50, stages: [{kind: sft}, {kind: dpo, data: prefs.jsonl, steps: 100, beta: 0.1}]}
  launch: {processes: 1}           # > 1: accelerate with distributed: fsdp | deepspeed
# or the team's own trainer instead of the recipe (tasks/training/command.py):
#   command: {argv: [python, train.py, "{start}", "{output}", "{data}", "{processes}"], timeout_minutes: 120}
recycle: {mode: iterative, carry: previous, alpha: 1.0}   # iterative | source | none | auto; previous | champion
# auto: per release, a pre-check of the weights, then a probe of base and base + α·Δ (Δ^iter, Δ^source) for each α:
#   recycle: {mode: auto, probe: {alphas: [0.5, 0.75, 1.0], kind: zero_shot, examples: 100}, probe_suite: {...}}
eval:                              # an lm-eval suite: task names and local task folders, and how to run it
  tasks: [testbed_addition]
  task_dirs: [tasks/]
  device: auto                     #   auto | cpu | cuda | cuda:N
  batch_size: 64                   #   N | auto | auto:N
  backend: hf                      #   hf | vllm (the `vllm` extra)
  dtype: auto                      #   auto | bfloat16 | float16 | float32
# or a suite file, whose fields the track's own override:
#   eval: {suite: ../suites/paper.yaml, device: cuda, batch_size: auto, dtype: bfloat16}
gate:
  metrics: [{task: testbed_addition, metric: exact_match}]
  min_primary: 0.5
channel: production
publish: {repo: org/model, tag_format: "{track}-{release}"}   # optional
```
Relative paths are taken from the YAML file's folder; `~` is the user's home.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from string import Formatter
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ..errors import SuiteError, TrackError
from ..terms import CarryRule, RecycleMode
from .gate import GateRules
from .sources import Source
from .starts.spec import Probe, ProbeKind, ProbeScore
from .suite import Suite, load_suite
from .training.command import TrainerCommand
from .training.data import read_examples, read_preferences
from .training.launch import Launch
from .training.recipe import Recipe

TAG_FIELDS = frozenset({"track", "release"})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_ENUM_REPR = re.compile(r"<\w+\.\w+: ('[^']*')>")  # how pydantic names an enum member: <RecycleMode.AUTO: 'auto'>


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class FinetuneSpec(_Spec):
    """The fine-tuning data and recipe (0 steps makes every candidate a pure transfer), or the track's own
    training `command` instead of the recipe; and how many GPU processes train (more than one: accelerate with
    FSDP or DeepSpeed ZeRO-3, or the command's `{processes}`)."""

    data: Path
    recipe: Recipe = Field(default_factory=lambda: Recipe.model_validate({}))
    command: TrainerCommand | None = None
    launch: Launch = Field(default_factory=lambda: Launch.model_validate({}))

    @model_validator(mode="after")
    def _recipe_or_command(self) -> FinetuneSpec:
        if self.command is not None and self.recipe != Recipe.model_validate({}):
            raise ValueError(
                "a track's finetune has a recipe (the built-in trainer) or a command (its own), not both; "
                "drop one of them"
            )
        return self


class RecycleSpec(_Spec):
    """How the previous fine-tuning is carried over to a new release (Algorithm 1's modes)."""

    mode: RecycleMode = Field(
        default=RecycleMode.ITERATIVE,
        description="Which Δ: iterative (Δ^iter: that candidate's own), source (its lineage's first), none.",
    )
    carry: CarryRule = Field(
        default=CarryRule.PREVIOUS,
        description="Whose Δ: the previous release's in the track's order (Algorithm 1), or the champion's.",
    )
    alpha: float = Field(
        default=1.0,
        description="Scale of the diff vector: base + alpha·Δ. Any finite value: a negative one subtracts Δ "
        "(undoes the fine-tuning it holds), which some users want; 0 carries nothing.",
    )
    probe: Probe = Field(
        default=Probe(), description="auto: the α grid of the starts and how each is scored before the fine-tune."
    )
    probe_suite: Suite | None = Field(
        default=None,
        description="auto with probe kind zero_shot: an eval suite whose documents are not the gate's (other tasks).",
    )

    @model_validator(mode="after")
    def _probe_has_its_suite(self) -> RecycleSpec:
        zero_shot = self.probe.kind is ProbeKind.ZERO_SHOT or (
            self.probe.kind is ProbeKind.SHORT_FINETUNE and self.probe.score_by is ProbeScore.ZERO_SHOT
        )
        if self.mode is RecycleMode.AUTO and zero_shot and self.probe_suite is None:
            raise ValueError(
                "the zero_shot probe scores each start on a probe suite: set recycle.probe_suite (tasks whose "
                "documents are not the gate's), or use probe: {kind: heldout_loss}"
            )
        return self

    @field_validator("mode", mode="before")
    @classmethod
    def _renamed(cls, mode: object) -> object:
        if mode == "direct":
            raise ValueError(
                "'direct' is now called 'source' (it carries the first Δ of the lineage, not the paper's Δ^dir); "
                "write mode: source"
            )
        return mode


class PublishSpec(_Spec):
    """Where a promoted candidate is published on the Hub."""

    repo: str
    tag_format: str = Field(
        default="{track}-{release}", description="Fields: {track}, {release} (the base's short sha)."
    )
    private: bool = True

    @field_validator("tag_format")
    @classmethod
    def _known_fields(cls, tag_format: str) -> str:
        try:
            fields = {name for _, name, _, _ in Formatter().parse(tag_format) if name is not None}
        except ValueError as e:
            raise ValueError(f"{tag_format!r} is not a format string ({e})") from None
        unknown = sorted(fields - TAG_FIELDS)
        if unknown:
            raise ValueError(
                f"{tag_format!r} names {', '.join('{' + f + '}' for f in unknown)}; "
                f"it may use {', '.join('{' + f + '}' for f in sorted(TAG_FIELDS))}"
            )
        return tag_format


class TrackSpec(_Spec):
    """A validated track."""

    name: str
    source: Source
    finetune: FinetuneSpec
    recycle: RecycleSpec = Field(default_factory=RecycleSpec)
    eval: Suite
    gate: GateRules
    channel: str = "production"
    publish: PublishSpec | None = None

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError("use letters, digits, '-', '_' and '.', starting with a letter or digit")
        return name

    @model_validator(mode="after")
    def _probe_is_not_the_gate(self) -> TrackSpec:
        probe = self.recycle.probe_suite
        shared = sorted(set(probe.tasks) & set(self.eval.tasks)) if probe is not None else []
        if shared:
            raise ValueError(
                f"recycle.probe_suite scores starts on {shared}, which the gate evaluates too: a probe must not see "
                "the gate's documents; give it other tasks (a held-out split of the same skill)"
            )
        return self

    @model_validator(mode="after")
    def _short_probes_train_one_stage(self) -> TrackSpec:
        short = self.recycle.mode is RecycleMode.AUTO and self.recycle.probe.kind is ProbeKind.SHORT_FINETUNE
        if short and self.finetune.recipe.stages:
            raise ValueError(
                "recycle.probe short_finetune trains each start with a share of the recipe's steps, and a staged "
                "recipe's stages have steps of their own; use probe kind zero_shot or heldout_loss with stages"
            )
        return self


def spec_digest(spec: TrackSpec) -> str:
    """The hash a spec version is known by: the sha256 of the spec's canonical form, its JSON with sorted keys
    and every field still at its default left out. So a field added later with a default leaves every older
    spec's version as it was, and writing a default out in the YAML changes nothing."""
    canonical = spec.model_dump(mode="json", exclude_defaults=True)
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def spec_yaml(spec: TrackSpec) -> str:
    """The spec as the YAML a person writes: the fields still at their defaults left out (its canonical form,
    the one `spec_digest` hashes), in the schema's order."""
    return yaml.safe_dump(spec.model_dump(mode="json", exclude_defaults=True), sort_keys=False)


def parse_track(data: Any, *, base_dir: Path, origin: str) -> TrackSpec:
    """Validate a track given as plain data; relative paths are resolved against `base_dir`, and an
    `eval: {suite: FILE}` is read into the track (the spec holds the whole suite, not the file's name).

    Raises:
        TrackError: naming each invalid field and the reason, or the suite file and what is wrong with it.
    """
    if not isinstance(data, dict):
        raise TrackError(f"{origin}: a track is a mapping of fields, not {type(data).__name__}.", track=origin)
    try:
        spec = TrackSpec.model_validate(_with_suite_file(data, base_dir=base_dir.resolve(), origin=origin))
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'track'}: {_plain(err['msg'])}" for err in e.errors()
        )
        raise TrackError(f"{origin} is not a valid track: {problems}", track=origin) from None
    return _resolved(spec, base_dir.resolve())


def _with_suite_file(data: dict[str, Any], *, base_dir: Path, origin: str) -> dict[str, Any]:
    """The track's data with `eval: {suite: FILE, ...}` replaced by the suite FILE (relative to `base_dir`)
    read and overridden by the other fields of `eval`.

    Raises:
        TrackError: the suite file cannot be read or is not a suite.
    """
    given = data.get("eval")
    if not isinstance(given, dict) or "suite" not in given:
        return data
    overrides = {k: v for k, v in given.items() if k != "suite"}
    try:
        suite = load_suite(path=base_dir / Path(str(given["suite"])).expanduser())
    except SuiteError as e:
        raise TrackError(f"{origin}: eval.suite: {e}", track=origin) from None
    return {**data, "eval": {**suite.model_dump(mode="json"), **overrides}}


def _plain(message: str) -> str:
    return _ENUM_REPR.sub(r"\1", message)


def check_files(spec: TrackSpec) -> None:
    """Check that the files a track names exist and parse: its fine-tuning data (one prompt/completion
    object per line), each stage's (a dpo stage's preference pairs) and its eval suite's task folders.

    Raises:
        FinetuneDataError: some fine-tuning data is missing or malformed (the message names the line).
        TrackError: a task folder does not exist.
    """
    if spec.finetune.command is None:
        for stage in spec.finetune.recipe.staged():
            read = read_preferences if stage.kind == "dpo" else read_examples
            read(data=stage.data or spec.finetune.data)
    elif not spec.finetune.data.exists():
        raise TrackError(
            f"track {spec.name}: finetune.data {spec.finetune.data} does not exist; its training command reads it.",
            track=spec.name,
        )
    for folder in spec.eval.task_dirs:
        if not folder.is_dir():
            raise TrackError(
                f"track {spec.name}: eval task folder {folder} does not exist; fix eval.task_dirs.", track=spec.name
            )


def load_track(path: Path) -> TrackSpec:
    """Read and validate a track YAML file.

    Raises:
        TrackError: the file is missing, is not YAML, or is not a valid track.
    """
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise TrackError(f"cannot read track file {path}: {e.strerror}.", track=str(path)) from None
    except UnicodeDecodeError as e:
        raise TrackError(
            f"{path} is not UTF-8 text (byte {e.start} is {e.object[e.start : e.start + 1]!r}); save it as UTF-8.",
            track=str(path),
        ) from None
    except yaml.YAMLError as e:
        raise TrackError(f"{path} is not YAML: {e}", track=str(path)) from None
    return parse_track(data, base_dir=Path(path).parent, origin=str(path))


def _resolved(spec: TrackSpec, base: Path) -> TrackSpec:
    def where(path: Path) -> Path:
        return base / path.expanduser()

    def suite(given: Suite) -> Suite:
        return given.model_copy(update={"task_dirs": tuple(where(d) for d in given.task_dirs)})

    command = None if spec.finetune.command is None else spec.finetune.command.resolved(base)
    recipe = spec.finetune.recipe
    recipe = recipe.model_copy(update={"stages": tuple(stage.resolved(base) for stage in recipe.stages)})
    probe = spec.recycle.probe_suite
    recycle = spec.recycle.model_copy(update={"probe_suite": None if probe is None else suite(probe)})
    return spec.model_copy(
        update={
            "source": spec.source.resolved(base),
            "finetune": spec.finetune.model_copy(
                update={"data": where(spec.finetune.data), "command": command, "recipe": recipe}
            ),
            "recycle": recycle,
            "eval": suite(spec.eval),
        }
    )
