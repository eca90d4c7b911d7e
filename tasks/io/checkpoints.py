"""Hugging Face model folders: opening them for streaming, and writing them atomically.

A model folder holds `config.json`, weights as one `model.safetensors` or shards listed by
`model.safetensors.index.json`, and optionally tokenizer and generation-config files. Pickle weights
are refused unless the caller opts in; then they are converted to safetensors in a scratch folder
(loaded with `weights_only=True`, memory-mapped) so that one reading path serves every input.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ModelFolderError, PickleWeightsError
from ...fs import file_sha256
from .layout import PICKLE_INDEX, SAFETENSORS_INDEX, SAFETENSORS_SINGLE, TOKENIZER_FILES
from .stfile import ShardWriter, TensorInfo, read_header

OUTPUT_EMBEDDING_ALIASES = ("lm_head.weight",)
_SNAPSHOT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class ModelFolder:
    """An opened model folder: its config and where each of its tensors lives.

    `tensors` is canonical: when the model ties its input and output embeddings, the output
    embedding's name (`tied_alias`) is left out, so the shared matrix is handled once.
    """

    path: Path
    config: dict[str, Any]
    tensors: dict[str, TensorInfo]
    weight_files: tuple[Path, ...]
    tied_alias: str | None = None
    revision: str | None = None
    _hash: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def ties_embeddings(self) -> bool:
        """Whether the input and output embeddings are one matrix."""
        return _ties(self.config, self.tensors)

    @property
    def vocab_size(self) -> int | None:
        """`vocab_size` from the config (top level or `text_config`), if present."""
        size = self.config.get("vocab_size", (self.config.get("text_config") or {}).get("vocab_size"))
        return int(size) if size is not None else None

    def tokenizer_files(self) -> list[Path]:
        """The tokenizer files this folder has, in a fixed order."""
        return [self.path / n for n in TOKENIZER_FILES if (self.path / n).is_file()]

    def tokenizer_digest(self) -> str | None:
        """sha256 over the tokenizer files, or None when the folder has none."""
        files = self.tokenizer_files()
        if not files:
            return None
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode() + b"\0" + file_sha256(f).encode())
        return h.hexdigest()

    def content_hash(self) -> str:
        """sha256 over the weight files' own sha256 digests (computed once per folder)."""
        if "content" not in self._hash:
            h = hashlib.sha256()
            for f in sorted(self.weight_files, key=lambda p: p.name):
                h.update(f.name.encode() + b"\0" + file_sha256(f).encode())
            self._hash["content"] = h.hexdigest()
        return self._hash["content"]

    def describe(self) -> dict[str, Any]:
        """Provenance of this folder: path, revision, model type and vocabulary size."""
        return {
            "path": str(self.path),
            "revision": self.revision,
            "model_type": self.config.get("model_type"),
            "vocab_size": self.vocab_size,
        }


def open_model_folder(path: Path, *, allow_pickle: bool = False, scratch: Path | None = None) -> ModelFolder:
    """Open a local Hugging Face model folder for streaming.

    Args:
        path: the folder.
        allow_pickle: accept `*.bin` / `*.pt` weights (converted to safetensors under `scratch`).
        scratch: where converted pickle weights go; required with `allow_pickle`.

    Raises:
        ModelFolderError: the folder, its config or its weights are missing or malformed.
        PickleWeightsError: the folder holds only pickle weights and `allow_pickle` is false.
    """
    path = Path(path).resolve()
    if not path.is_dir():
        raise ModelFolderError(
            f"{path} is not a model folder (expected a directory with config.json and weights).", path=path
        )
    config = _read_json(path / "config.json", what="model config")
    if (path / SAFETENSORS_INDEX).is_file():
        files = _indexed_files(path, path / SAFETENSORS_INDEX)
    elif (path / SAFETENSORS_SINGLE).is_file():
        files = [path / SAFETENSORS_SINGLE]
    else:
        pickles = _pickle_files(path)
        if not pickles:
            raise ModelFolderError(
                f"{path} has no weights: expected {SAFETENSORS_SINGLE} or {SAFETENSORS_INDEX} with its shards.",
                path=path,
            )
        if not allow_pickle:
            names = ", ".join(p.name for p in pickles)
            raise PickleWeightsError(
                f"{path} holds pickle weights ({names}). Loading pickle can run arbitrary code, so it is "
                "refused by default. Convert the model to safetensors, or pass --allow-pickle if you trust it.",
                path=path,
            )
        if scratch is None:
            raise ValueError("allow_pickle needs a scratch folder for the converted weights")
        files = [_convert_pickle(pickles, scratch / f"converted-{uuid.uuid4().hex}.safetensors")]
    tensors: dict[str, TensorInfo] = {}
    for f in files:
        for info in read_header(f)[0]:
            if info.name in tensors:
                raise ModelFolderError(
                    f"{path}: tensor {info.name!r} is stored twice ({tensors[info.name].path.name}, {f.name}).",
                    path=path,
                )
            tensors[info.name] = info
    tied_alias = None
    if _ties(config, tensors):
        for alias in OUTPUT_EMBEDDING_ALIASES:
            if tensors.pop(alias, None) is not None:
                tied_alias = alias
    return ModelFolder(
        path=path,
        config=config,
        tensors=tensors,
        weight_files=tuple(files),
        tied_alias=tied_alias,
        revision=_revision_of(path),
    )


def _ties(config: dict[str, Any], tensors: dict[str, TensorInfo]) -> bool:
    tie = config.get("tie_word_embeddings", (config.get("text_config") or {}).get("tie_word_embeddings"))
    if tie is None:
        return not any(a in tensors for a in OUTPUT_EMBEDDING_ALIASES)
    return bool(tie)


def _read_json(path: Path, *, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ModelFolderError(
            f"{path.parent} has no {path.name} ({what}); is it a Hugging Face model folder?", path=path
        )
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"{path} is not valid JSON: {exc}", path=path) from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path} must hold a JSON object.", path=path)
    return data


def _indexed_files(folder: Path, index_path: Path) -> list[Path]:
    index = _read_json(index_path, what="shard index")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelFolderError(f"{index_path} has no weight_map.", path=index_path)
    for tensor, name in weight_map.items():
        if not isinstance(name, str) or not name or Path(name).name != name:
            raise ModelFolderError(
                f"{index_path}: weight_map maps tensor {tensor!r} to {name!r}, not to the name of a shard file in "
                f"{folder}; fix the index, or save the model again with `save_pretrained`.",
                path=index_path,
            )
    files = []
    for name in dict.fromkeys(weight_map.values()):
        f = folder / name
        if not f.is_file():
            raise ModelFolderError(f"{index_path} lists shard {name}, which is missing from {folder}.", path=index_path)
        files.append(f)
    return files


def _pickle_files(folder: Path) -> list[Path]:
    if (folder / PICKLE_INDEX).is_file():
        index = _read_json(folder / PICKLE_INDEX, what="pickle shard index")
        return [folder / n for n in dict.fromkeys((index.get("weight_map") or {}).values())]
    return sorted(p for p in folder.iterdir() if p.suffix in (".bin", ".pt") and p.is_file())


def _convert_pickle(files: list[Path], out: Path) -> Path:
    """Pickle weights as one safetensors file (the only engine path that loads torch: pickle needs it)."""
    import torch

    from .torchbits import DTYPE_CODES, as_array

    state: dict[str, torch.Tensor] = {}
    for f in files:
        loaded = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        if not isinstance(loaded, dict):
            raise ModelFolderError(f"{f} does not hold a state dict (found {type(loaded).__name__}).", path=f)
        state.update(loaded)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(out, planned=[(k, tuple(v.shape)) for k, v in state.items()], metadata={"format": "pt"})
    for name, t in state.items():
        code = DTYPE_CODES.get(t.dtype, str(t.dtype).removeprefix("torch.").upper())
        writer.begin_tensor(name, code, tuple(t.shape))
        writer.write(as_array(t))
    writer.close()
    return out


def _revision_of(path: Path) -> str | None:
    """The commit sha of a Hugging Face cache snapshot folder, else None."""
    for part in reversed(path.parts):
        if _SNAPSHOT.match(part):
            return part
    return None
