"""Diff folders: Δ as safetensors shards, with a `diff.json` manifest of provenance and norms.

```
diff.json                          manifest: inputs, dtypes, per-tensor stored dtype/shape/L2 norm
diff-00001-of-0000N.safetensors    Δ, one tensor per model tensor (vocabulary rows the fine-tuning
diff.safetensors.index.json          added are stored as they are, after the Δ rows)
base_tokenizer/, finetuned_tokenizer/   the inputs' tokenizers, for aligning and carrying rows
```
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, ValidationError

from ...errors import ModelFolderError
from ...fs import write_json
from .layout import TOKENIZER_FILES
from .stfile import TensorInfo, read_header
from .tokenizers import Tokenizer

DIFF_PREFIX = "diff"
MANIFEST = "diff.json"
FORMAT = "graftwork.diff"
FORMAT_VERSION = 1


class _Record(BaseModel):
    """A part of `diff.json`: fields it does not name are kept (newer writers may add some)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class ModelProvenance(_Record):
    """One input of a diff: where it was, its revision, type, vocabulary and hashes."""

    path: str | None = None
    revision: str | None = None
    model_type: str | None = None
    vocab_size: int | None = None
    content_hash: str | None = None
    tokenizer_digest: str | None = None


class TensorRecord(_Record):
    """One Δ tensor: its stored and source dtypes, shape and L2 norm."""

    dtype: str
    source_dtype: str
    shape: list[NonNegativeInt]
    l2_norm: NonNegativeFloat


class DiffManifest(_Record):
    """What `diff.json` must hold for a diff folder to be applied, registered or exported."""

    format: Literal["graftwork.diff"]
    format_version: Literal[1]
    graftwork_version: str
    finetuned: ModelProvenance
    base: ModelProvenance
    tensor_count: NonNegativeInt
    vocab: dict[str, int | None] | None = None
    tied_embeddings: bool = False
    tokenizers: dict[str, str | None] = Field(default_factory=dict)
    tensors: dict[str, TensorRecord]


@dataclass(frozen=True)
class DiffFolder:
    """An opened diff folder."""

    path: Path
    manifest: dict[str, Any]
    tensors: dict[str, TensorInfo]

    def tokenizer_files(self, role: str) -> list[Path]:
        """Tokenizer files stored for `role` ("base" or "finetuned"), in the folder the manifest names."""
        folder = self.path / ((self.manifest.get("tokenizers") or {}).get(role) or tokenizer_folder(role))
        return [folder / n for n in TOKENIZER_FILES if (folder / n).is_file()]

    def tokenizer(self, role: str) -> Tokenizer:
        """The stored tokenizer of `role`, with the digest recorded when the diff was made."""
        files = self.tokenizer_files(role)
        key = "finetuned" if role == "finetuned" else "base"
        return Tokenizer(folder=files[0].parent if files else None, digest=self.manifest[key].get("tokenizer_digest"))


def tokenizer_folder(role: str) -> str:
    """The sub-folder of a diff folder that holds the tokenizer of `role` ("base" or "finetuned")."""
    return f"{role}_tokenizer"


def open_diff_folder(path: Path, *, headers: Callable[[Path], list[TensorInfo]] | None = None) -> DiffFolder:
    """Open a diff folder written by `graft diff` (or exported by the registry).

    `headers` gives a shard's tensors when its file is not there yet (a registered diff streamed from the blob
    store, whose shards are decoded as they are read); by default they are read from the shards' files.

    Raises:
        ModelFolderError: the folder, its manifest (`DiffManifest`: the message names each wrong field) or
            its shards are missing or malformed.
    """
    path = Path(path).resolve()
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ModelFolderError(
            f"{path} is not a diff folder: it has no {MANIFEST}. Make one with `graft diff`.", path=path
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"{manifest_path} is not valid JSON: {exc}", path=manifest_path) from None
    if not isinstance(manifest, dict):
        raise ModelFolderError(
            f"{manifest_path} must hold a JSON object, not {type(manifest).__name__}; make the diff again with "
            "`graft diff`.",
            path=manifest_path,
        )
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ModelFolderError(
            f"{manifest_path} is not a version-{FORMAT_VERSION} Graftwork diff manifest "
            f"(format={manifest.get('format')!r}, format_version={manifest.get('format_version')!r}).",
            path=manifest_path,
        )
    try:
        DiffManifest.model_validate(manifest)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ModelFolderError(
            f"{manifest_path} is not a valid diff manifest: {problems}. Make the diff again with `graft diff`.",
            path=manifest_path,
        ) from None
    index_path = path / f"{DIFF_PREFIX}.safetensors.index.json"
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError) as exc:
        raise ModelFolderError(f"{path}: cannot read the shard index {index_path.name}: {exc}", path=path) from None
    tensors: dict[str, TensorInfo] = {}
    for shard in dict.fromkeys(weight_map.values()):
        if headers is None and not (path / shard).is_file():
            raise ModelFolderError(f"{path}: shard {shard} listed in {index_path.name} is missing.", path=path)
        tensors.update((i.name, i) for i in (headers or _file_header)(path / shard))
    expected = set(manifest.get("tensors", {}))
    if set(tensors) != expected:
        raise ModelFolderError(
            f"{path}: the shards hold {len(tensors)} tensors but {MANIFEST} lists {len(expected)}; "
            "the folder is incomplete.",
            path=path,
        )
    return DiffFolder(path=path, manifest=manifest, tensors=tensors)


def _file_header(path: Path) -> list[TensorInfo]:
    return read_header(path)[0]


def write_manifest(
    folder: Path,
    *,
    finetuned: dict[str, Any],
    base: dict[str, Any],
    tensors: dict[str, dict[str, Any]],
    vocab: dict[str, int | None] | None,
    tied_embeddings: bool,
    tokenizers: dict[str, str | None],
    version: str,
) -> None:
    """Write `diff.json` into `folder`."""
    write_json(
        folder / MANIFEST,
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "graftwork_version": version,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "finetuned": finetuned,
            "base": base,
            "dtype": sorted({t["source_dtype"] for t in tensors.values()}),
            "tensor_count": len(tensors),
            "vocab": vocab,
            "tied_embeddings": tied_embeddings,
            "tokenizers": tokenizers,
            "tensors": tensors,
        },
    )
