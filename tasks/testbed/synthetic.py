"""Synthetic Llama-shaped model families, built from a seed, streamed to disk tensor by tensor.

A family is three model folders sharing one architecture: `base` (m_s, weights ~ N(0, 0.02)),
`finetuned` (m'_s = m_s + N(0, finetune_std), a fine-tuning-like change) and `target`
(m_t = m_s + N(0, drift_std), a later release). Used by the engine benchmark, the demo and the
memory tests; it never holds more than one tensor in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ...fs import atomic_output_dir, write_json
from ..io.shards import PlannedTensor, ShardedWriter
from ..io.stfile import numel
from ..io.torchbits import DTYPE_CODES, as_array

ROLES = ("base", "finetuned", "target")


@dataclass(frozen=True)
class FamilySpec:
    """Shape of a synthetic Llama family."""

    vocab_size: int = 32000
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    dtype: torch.dtype = torch.bfloat16
    finetune_std: float = 1e-3
    drift_std: float = 5e-3

    @classmethod
    def with_params(cls, params: float, **overrides: int) -> FamilySpec:
        """The default shape with as many layers as come closest to `params` parameters."""
        spec = cls(**overrides)  # type: ignore[arg-type]
        per_layer = sum(numel(s) for _, s in _layer_tensors(spec, 0))
        fixed = 2 * spec.vocab_size * spec.hidden_size + spec.hidden_size
        layers = max(1, round((params - fixed) / per_layer))
        return cls(**{**spec.__dict__, "num_layers": layers})

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """Every tensor's name and shape, in Hugging Face Llama naming."""
        out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (self.vocab_size, self.hidden_size))]
        for i in range(self.num_layers):
            out.extend(_layer_tensors(self, i))
        out += [("model.norm.weight", (self.hidden_size,)), ("lm_head.weight", (self.vocab_size, self.hidden_size))]
        return out

    @property
    def params(self) -> int:
        """Number of parameters."""
        return sum(numel(s) for _, s in self.tensors())

    def config(self) -> dict[str, object]:
        """A `LlamaConfig`-compatible config.json."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_heads,
            "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
            "torch_dtype": str(self.dtype).removeprefix("torch."),
        }


def _layer_tensors(spec: FamilySpec, i: int) -> list[tuple[str, tuple[int, ...]]]:
    h, f, p = spec.hidden_size, spec.intermediate_size, f"model.layers.{i}."
    return [
        (p + "self_attn.q_proj.weight", (h, h)),
        (p + "self_attn.k_proj.weight", (h, h)),
        (p + "self_attn.v_proj.weight", (h, h)),
        (p + "self_attn.o_proj.weight", (h, h)),
        (p + "mlp.gate_proj.weight", (f, h)),
        (p + "mlp.up_proj.weight", (f, h)),
        (p + "mlp.down_proj.weight", (h, f)),
        (p + "input_layernorm.weight", (h,)),
        (p + "post_attention_layernorm.weight", (h,)),
    ]


def build_family(out: Path, *, spec: FamilySpec, seed: int = 0, max_shard_bytes: int = 2**30) -> dict[str, Path]:
    """Write `base`, `finetuned` and `target` model folders under `out`; return their paths.

    A folder that exists already is kept as it is (the build is deterministic for a seed).
    """
    paths = {role: Path(out) / role for role in ROLES}
    if all((p / "config.json").is_file() for p in paths.values()):
        return paths
    planned = [PlannedTensor(n, s, numel(s) * spec.dtype.itemsize) for n, s in spec.tensors()]
    stds = {"base": 0.0, "finetuned": spec.finetune_std, "target": spec.drift_std}
    for role, path in paths.items():
        with atomic_output_dir(path, overwrite=True) as tmp:
            write_json(tmp / "config.json", spec.config())
            writer = ShardedWriter(
                tmp, prefix="model", tensors=planned, max_shard_bytes=max_shard_bytes, metadata={"format": "pt"}
            )
            for k, (name, shape) in enumerate(spec.tensors()):
                writer.begin_tensor(name, DTYPE_CODES[spec.dtype], shape)
                tensor = _tensor(seed, k, shape, std=stds[role], role_seed=ROLES.index(role), dtype=spec.dtype)
                writer.write(as_array(tensor))
            writer.close()
    return paths


def _tensor(
    seed: int, k: int, shape: tuple[int, ...], *, std: float, role_seed: int, dtype: torch.dtype
) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + k)
    if len(shape) == 1:
        w = torch.ones(shape)
    else:
        w = torch.randn(shape, generator=g).mul_(0.02)
    if std:
        g.manual_seed(seed * 1_000_003 + k + 7919 * role_seed)
        w.add_(torch.randn(shape, generator=g).mul_(std))
    return w.to(dtype)
