"""The fine-tuning planner: from a model's config.json and a recipe (no weights), the GPU memory each training
process needs, the scratch disk a recycle run needs, and whether the fine-tune fits a pool's GPUs.

Parameters are counted exactly: the model is built on the meta device (`accelerate.init_empty_weights`,
`AutoModelForCausalLM.from_config`) and counted by transformers (`num_parameters`); a LoRA adapter is added
as a fine-tune adds it (peft, `with_adapter`) and its trainable parameters counted by peft.

Bytes per parameter, per process (P parameters, L adapter parameters, N processes):

- full, one process or DDP: fp32 master weights (a bf16 AdamW would round most updates of a fine-tune away),
  as accelerate estimates them (`estimate_training_usage`): fp32 4 + 4 + 8, bf16 and fp16 (autocast over
  fp32 weights) 4 + 6 + 8 (the fp32 gradient plus its 16-bit copy).
- LoRA, one process or DDP: the frozen base in its load dtype (2 bytes in bf16, else 4), the adapter in
  fp32 with fp32 gradients and AdamW moments: weights 2P (or 4P) + 4L, gradients 4L, optimizer 8L.
- FSDP or ZeRO-3 over N: fp32 master shards, computing in bf16: weights 4P/N, gradients 4P/N, optimizer 8P/N
  (LoRA: weights (4P + 4L)/N, gradients 4L/N, optimizer 8L/N). The one unit gathered at a time is not counted.

Activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
Table 2 and Section 4.1), for a micro-batch of b sequences of s tokens, hidden size h, n layers, vocabulary V,
with 16-bit activations (fp32 recipes: twice the s·b·h terms):

- per layer 34·s·b·h bytes: the selective-recomputation figure, since transformers' SDPA attention keeps no
  a·s² attention scores;
- with gradient checkpointing, 2·s·b·h bytes per layer (its input) plus one layer's 34·s·b·h recomputed;
- after the layers, 4·s·b·h (final norm, output projection) plus 4·s·b·V (the fp32 logits of the loss).

A dpo stage (TRL's `DPOTrainer`) runs chosen and rejected answers in one forward, so its micro-batch holds 2·b
sequences, and it holds a reference model: when every weight trains, a second copy of the start's weights in the
policy's dtype (fp32, 4P; FSDP and ZeRO-3 shard it, 4P/N); with LoRA none, since the reference is the start model
with the adapter switched off. A staged recipe's figures are those of its hungriest stage.

Scratch disk of a recycle run: the start model (base + α·Δ) and the candidate, each in the base's dtype (and, for
a staged recipe, the model one stage leaves the next),
plus the candidate's Δ before the codec compresses it (4 bytes per parameter, 8 for a float32 base, whose Δ
the engine may widen to float64). The base's own download (the Hub cache) is not counted.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import FinetuneConfigError, ModelFolderError
from .recipe import Lora, Recipe, Stage

GIB = 2**30
SHARDED = frozenset({"fsdp", "deepspeed"})
"""The kinds of launch that shard fp32 master weights over the processes; DDP keeps a full copy on each."""
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs of a model: its parameters (and a LoRA adapter's), sizes, and saved dtype."""

    model_type: str
    params: int
    adapter_params: int
    lora: Lora
    hidden: int
    layers: int
    vocab: int
    dtype: str

    @property
    def dtype_bytes(self) -> int:
        """Bytes per parameter of the saved weights."""
        return _DTYPE_BYTES[self.dtype]


@dataclass(frozen=True)
class Setup:
    """One way to run the fine-tune: full or LoRA, on how many processes, sharded (FSDP, ZeRO-3) or not."""

    label: str
    lora: bool
    processes: int
    sharded: bool


@dataclass(frozen=True)
class Footprint:
    """GPU memory of one training process of a set-up, in bytes, by component."""

    setup: Setup
    weights: int
    gradients: int
    optimizer: int
    activations: int
    reference: int = 0
    """A dpo stage's reference model (0: none, as with LoRA, or no dpo stage)."""

    @property
    def total(self) -> int:
        """Everything one process holds."""
        return self.weights + self.gradients + self.optimizer + self.activations + self.reference


@dataclass(frozen=True)
class Scratch:
    """Disk a recycle run writes, in bytes: the start model, the candidate, and the candidate's Δ."""

    start: int
    candidate: int
    delta: int
    stage: int = 0
    """A staged recipe's model between two stages, kept until the next stage has written its own (0: one stage)."""

    @property
    def total(self) -> int:
        """All of it."""
        return self.start + self.candidate + self.delta + self.stage


@dataclass(frozen=True)
class FinetunePlan:
    """The footprints of the standard set-ups and of the track's own (`track`, one of `rows`), the scratch
    disk, and the pool they are checked against."""

    shape: ModelShape
    recipe: Recipe
    rows: tuple[Footprint, ...]
    track: Footprint
    scratch: Scratch
    pool_gpus: int
    gpu_memory_gib: float

    def fits(self, row: Footprint) -> bool:
        """Whether a set-up's processes fit the pool: no more than its GPUs, each under its memory."""
        return row.setup.processes <= self.pool_gpus and row.total < self.gpu_memory_gib * GIB

    @property
    def track_fits(self) -> bool:
        """Whether the track's own set-up fits the pool."""
        return self.fits(self.track)


def read_config(*, path: Path) -> dict[str, Any]:
    """The config.json of a model folder (or the file itself) as a mapping.

    Raises:
        ModelFolderError: there is no config.json, or it is not a JSON object.
    """
    file = Path(path) / "config.json" if Path(path).is_dir() else Path(path)
    try:
        config = json.loads(file.read_text())
    except OSError as exc:
        raise ModelFolderError(
            f"{path} has no readable config.json ({exc.strerror}); pass a Hugging Face model folder.", path=path
        ) from None
    except json.JSONDecodeError as exc:
        raise ModelFolderError(f"{file} is not JSON ({exc}); pass a model's own config.json.", path=file) from None
    if not isinstance(config, dict):
        raise ModelFolderError(f"{file} is not a JSON object; pass a model's own config.json.", path=file)
    return config


def model_shape(*, config: dict[str, Any], lora: Lora, origin: str) -> ModelShape:
    """Count a model's parameters, and those of `lora` on it, from its config alone (on the meta device).

    Args:
        config: the model's config.json.
        lora: the adapter to count.
        origin: where the config came from, for error messages.

    Raises:
        ModelFolderError: the config names no model type transformers knows, or not a causal LM, or a dtype
            other than float32, float16, bfloat16 or float64.
        FinetuneConfigError: `lora.target_modules` names no module of the model.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from .candidate import with_adapter

    fields = {k: v for k, v in config.items() if k != "model_type"}
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    if dtype not in _DTYPE_BYTES:
        raise ModelFolderError(
            f"{origin} declares dtype {dtype!r}; the planner knows {', '.join(sorted(_DTYPE_BYTES))}.", path=origin
        )
    try:
        parsed = AutoConfig.for_model(str(config.get("model_type")), **fields)
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(parsed)
    except ValueError as exc:
        raise ModelFolderError(
            f"{origin} does not describe a causal language model transformers can build ({exc}); pass the "
            "config.json of a model that `AutoModelForCausalLM` loads without trust_remote_code.",
            path=origin,
        ) from None
    params = int(model.num_parameters())
    try:
        with init_empty_weights(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peft asks transformers for a deprecated property
            adapter_params, _ = with_adapter(model, lora=lora).get_nb_trainable_parameters()
    except ValueError as exc:
        raise FinetuneConfigError(
            f"the LoRA target_modules {lora.target_modules} name no module of the model of {origin} ({exc}); "
            "name modules it has (e.g. [q_proj, v_proj]) or write all-linear.",
            field="peft.target_modules",
        ) from None
    text = parsed.get_text_config()
    return ModelShape(
        model_type=str(config["model_type"]),
        params=params,
        adapter_params=int(adapter_params),
        lora=lora,
        hidden=int(text.hidden_size),
        layers=int(text.num_hidden_layers),
        vocab=int(text.vocab_size),
        dtype=dtype,
    )


def activation_bytes(*, shape: ModelShape, recipe: Recipe) -> int:
    """Activation memory of one process for one micro-batch (Korthikanti et al. 2022, see the module)."""
    s, b, h = recipe.seq_len, recipe.batch_size, shape.hidden
    wide = 2 if recipe.precision == "fp32" else 1
    layer = 34 * s * b * h * wide
    head = 4 * s * b * h * wide + 4 * s * b * shape.vocab
    if recipe.gradient_checkpointing:
        return shape.layers * 2 * s * b * h * wide + layer + head
    return shape.layers * layer + head


def footprint(*, shape: ModelShape, recipe: Recipe, setup: Setup) -> Footprint:
    """GPU memory of one process of `setup` for `recipe`: its hungriest stage's (bytes per parameter, activations
    and a dpo stage's reference model as the module says)."""
    stages = (
        _stage_footprint(shape=shape, recipe=recipe.for_stage(s), setup=setup, dpo=s.kind == "dpo")
        for s in recipe.staged()
    )
    return max(stages, key=lambda row: row.total)


def _stage_footprint(*, shape: ModelShape, recipe: Recipe, setup: Setup, dpo: bool) -> Footprint:
    p, a, n = shape.params, shape.adapter_params, setup.processes
    sequences = recipe.model_copy(update={"batch_size": 2 * recipe.batch_size}) if dpo else recipe
    activations = activation_bytes(shape=shape, recipe=sequences)
    reference = 0 if not dpo or setup.lora else _ceil(4 * p, n) if setup.sharded else 4 * p
    if setup.sharded:
        trained = a if setup.lora else p
        weights = 4 * p + 4 * a if setup.lora else 4 * p
        return Footprint(setup, _ceil(weights, n), _ceil(4 * trained, n), _ceil(8 * trained, n), activations, reference)
    if setup.lora:
        base = 2 if recipe.precision == "bf16" else 4
        return Footprint(setup, base * p + 4 * a, 4 * a, 8 * a, activations)
    from accelerate.commands.estimate import estimate_training_usage

    precision = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[recipe.precision]
    usage = estimate_training_usage(4 * p, precision)
    return Footprint(setup, usage["model"], usage["gradients"], usage["optimizer"], activations, reference)


def _ceil(n: int, d: int) -> int:
    return -(-n // d)


def plan_finetune(
    *, shape: ModelShape, recipe: Recipe, processes: int, distributed: str, pool_gpus: int, gpu_memory_gib: float
) -> FinetunePlan:
    """The plan of a fine-tune: full and LoRA in one process, FSDP and ZeRO-3 over the track's processes (the
    pool's GPUs when the track launches one), and the track's own set-up when it is none of these.

    Args:
        shape: the model (`model_shape`); its LoRA is the recipe's adapter, or the one the LoRA row shows.
        recipe: the track's recipe.
        processes: the track's launch processes.
        distributed: the track's kind of launch (`ddp`, `fsdp`, `deepspeed`).
        pool_gpus: GPUs of one worker of the pool.
        gpu_memory_gib: memory of each of them.
    """
    n = processes if processes > 1 else pool_gpus
    lora = f"LoRA r={shape.lora.r}"
    standard = [
        Setup("full", lora=False, processes=1, sharded=False),
        Setup(lora, lora=True, processes=1, sharded=False),
        Setup("FSDP", lora=False, processes=n, sharded=True),
        Setup("ZeRO-3", lora=False, processes=n, sharded=True),
    ]
    kind = {"fsdp": "FSDP", "deepspeed": "ZeRO-3", "ddp": "DDP"}[distributed] if processes > 1 else None
    what = lora if recipe.peft is not None else "full"
    sharded = kind is not None and distributed in SHARDED
    name = what if kind is None else kind if sharded and recipe.peft is None else f"{what}, {kind}"
    own = Setup(name, lora=recipe.peft is not None, processes=processes, sharded=sharded)
    if own not in standard:
        standard.append(own)
    rows = tuple(footprint(shape=shape, recipe=recipe, setup=setup) for setup in standard)
    model_bytes = shape.params * shape.dtype_bytes
    delta = shape.params * (8 if shape.dtype_bytes == 4 else 4)
    scratch = Scratch(model_bytes, model_bytes, delta, model_bytes if len(recipe.staged()) > 1 else 0)
    return FinetunePlan(
        shape=shape,
        recipe=recipe,
        rows=rows,
        track=rows[standard.index(own)],
        scratch=scratch,
        pool_gpus=pool_gpus,
        gpu_memory_gib=gpu_memory_gib,
    )


def render(plan: FinetunePlan, *, heading: str) -> str:
    """The plan as the table `graft plan` prints, under a first line `heading`; sizes in GiB (MiB, KiB for a
    small model: the unit of the largest figure)."""
    shape, recipe, scratch = plan.shape, plan.recipe, plan.scratch
    unit, scale = _unit(max(*(row.total for row in plan.rows), scratch.total))

    def size(n: int) -> str:
        return f"{n / scale:.2f}"

    modules = shape.lora.target_modules
    targets = modules if isinstance(modules, str) else ", ".join(modules)
    pool = f"{plan.pool_gpus} GPU(s) of {plan.gpu_memory_gib:g} GiB"
    dpo = any(stage.kind == "dpo" for stage in recipe.staged())
    lines = [
        heading,
        f"parameters: {shape.params:,} ({shape.model_type}, {shape.dtype}: {size(shape.params * shape.dtype_bytes)} "
        f"{unit}); LoRA r={shape.lora.r} on {targets}: {shape.adapter_params:,} trainable",
        f"recipe: {recipe.precision}, micro-batch {recipe.batch_size} x {recipe.seq_len} tokens, "
        f"gradient checkpointing {'on' if recipe.gradient_checkpointing else 'off'}",
        *([f"stages: {_stages(recipe)}; each row is the stage that needs most"] if recipe.stages else []),
        f"pool: {pool}",
        f"GPU memory per process, {unit}:",
        f"  {'set-up':<18}{'GPUs':>5}{'weights':>10}{'gradients':>11}{'optimizer':>11}{'activations':>13}"
        f"{'reference' if dpo else '':>{11 if dpo else 0}}{'total':>10}  fits",
    ]
    for row in plan.rows:
        figures = (row.weights, row.gradients, row.optimizer, row.activations, *([row.reference] if dpo else []))
        widths = (10, 11, 11, 13, *([11] if dpo else []))
        cells = "".join(f"{size(v):>{w}}" for v, w in zip((*figures, row.total), (*widths, 10), strict=True))
        mark, fits = "*" if row is plan.track else " ", "yes" if plan.fits(row) else "no"
        lines.append(f"{mark} {row.setup.label:<18}{row.setup.processes:>5}{cells}  {fits}")
    track = plan.track
    lines += [
        f"* the track's set-up: {size(track.total)} {unit} per process on {track.setup.processes} GPU(s): "
        f"{'fits' if plan.track_fits else 'does not fit'} the pool's {pool}",
        f"scratch disk per recycle run: {size(scratch.total)} {unit} = start model {size(scratch.start)} "
        f"+ candidate {size(scratch.candidate)} + Δ {size(scratch.delta)}"
        + (f" + a stage's model {size(scratch.stage)}" if scratch.stage else ""),
        "activations (Korthikanti et al. 2022; b x s tokens, hidden h, vocabulary V): 34·s·b·h bytes per layer,",
        "  or 2·s·b·h with gradient checkpointing plus one layer's 34·s·b·h; then 4·s·b·h + 4·s·b·V for the head",
        "  and the fp32 loss; fp32 recipes hold twice the s·b·h terms",
        *(
            [
                "dpo: chosen and rejected in one forward (2·b sequences); its reference model is a second copy of",
                "  the weights (4 bytes per parameter, sharded by FSDP and ZeRO-3), none with LoRA (adapter off)",
            ]
            if dpo
            else []
        ),
    ]
    return "\n".join(lines)


def _stages(recipe: Recipe) -> str:
    def one(stage: Stage) -> str:
        beta = f", beta {stage.dpo_beta:g}" if stage.kind == "dpo" else ""
        return f"{stage.kind} {recipe.for_stage(stage).steps} steps{beta}"

    return " -> ".join(one(stage) for stage in recipe.staged())


def _unit(largest: int) -> tuple[str, int]:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if largest >= scale:
            return unit, scale
    return "KiB", 2**10
