"""What the engine checks before it writes anything: one architecture, one tensor set, float dtypes
and matching shapes (vocabulary tensors may differ in rows; those are aligned by token)."""

from __future__ import annotations

from ...errors import ArchitectureMismatchError, ShapeMismatchError, TensorSetMismatchError
from ..io.checkpoints import ModelFolder
from ..io.difffolder import DiffFolder
from ..io.stfile import TensorInfo
from .vocab import is_vocab_tensor


def check_architectures(models: dict[str, ModelFolder]) -> None:
    """Raise ArchitectureMismatchError unless every model shares model_type, architectures, tying."""
    (ref_role, ref), *rest = models.items()
    for role, m in rest:
        for key in ("model_type", "architectures"):
            if ref.config.get(key) != m.config.get(key):
                raise ArchitectureMismatchError(
                    f"the {ref_role} model ({ref.path}) has {key}={ref.config.get(key)!r} but the {role} model "
                    f"({m.path}) has {m.config.get(key)!r}; diff vectors only carry over between models of one "
                    "architecture.",
                    path=m.path,
                )
        if ref.ties_embeddings != m.ties_embeddings:
            raise ArchitectureMismatchError(
                f"the {ref_role} model {'ties' if ref.ties_embeddings else 'does not tie'} its input and output "
                f"embeddings but the {role} model {'does' if m.ties_embeddings else 'does not'}; set "
                "tie_word_embeddings consistently.",
                path=m.path,
            )


def check_diff_architecture(df: DiffFolder, target: ModelFolder) -> None:
    model_type = df.manifest["base"].get("model_type")
    if model_type != target.config.get("model_type"):
        raise ArchitectureMismatchError(
            f"the diff {df.path} was made on a {model_type!r} model but the target ({target.path}) is "
            f"{target.config.get('model_type')!r}; diff vectors only carry over between models of one architecture.",
            path=target.path,
        )
    if bool(df.manifest.get("tied_embeddings")) != target.ties_embeddings:
        raise ArchitectureMismatchError(
            f"the diff {df.path} and the target ({target.path}) disagree on tied input/output embeddings.",
            path=target.path,
        )


def check_tensors(tensor_sets: dict[str, dict[str, TensorInfo]]) -> list[str]:
    """Check that every model has the same tensors, float and of matching shapes; return the names.

    Vocabulary tensors may differ in their first dimension (rows are aligned later).

    Raises:
        TensorSetMismatchError: a tensor is missing from one model or extra in it.
        UnsupportedDtypeError: a tensor is not a float tensor.
        ShapeMismatchError: a tensor's shapes differ and it is not a vocabulary tensor.
    """
    (ref_role, ref), *rest = tensor_sets.items()
    for role, tensors in rest:
        missing = [n for n in ref if n not in tensors]
        extra = [n for n in tensors if n not in ref]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"lacks {_names(missing)} that the {ref_role} model has")
            if extra:
                parts.append(f"has {_names(extra)} that the {ref_role} model lacks")
            raise TensorSetMismatchError(
                f"the {role} model {' and '.join(parts)}; the models must share one architecture and layout.",
                tensor=(missing or extra)[0],
            )
    for name, info in ref.items():
        shapes = {role: tensors[name].shape for role, tensors in tensor_sets.items()}
        for tensors in tensor_sets.values():
            tensors[name].array_dtype  # noqa: B018 - raises UnsupportedDtypeError for a non-float tensor
        if len(set(shapes.values())) > 1:
            same_rest = len({s[1:] for s in shapes.values()}) == 1
            if not (is_vocab_tensor(name, info.shape) and same_rest):
                desc = ", ".join(f"{list(s)} in the {r} model" for r, s in shapes.items())
                raise ShapeMismatchError(
                    f"tensor {name!r} has shape {desc}; shapes must match.", tensor=name, shapes=shapes
                )
    return list(ref)


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:5])
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return f"tensor{'s' if len(names) > 1 else ''} {shown}{more}"
