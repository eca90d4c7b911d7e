"""A Hub webhook delivery as Graftwork reads it: the wire format (payload version 3, validated field by field),
the refs that can hold a release, and the key that identifies a delivery however often it is sent."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from ..errors import WebhookPayloadError
from ..tasks.sources.hub_refs import BRANCH_AND_TAG_PREFIXES

_JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}
_Sha = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40}$")]
_Name = Annotated[str, StringConstraints(min_length=1, max_length=400)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _WireEvent(_Wire):
    action: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    scope: Annotated[str, StringConstraints(min_length=1, max_length=200)]


class _WireRepo(_Wire):
    type: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    name: _Name
    head_sha: _Sha | None = Field(default=None, alias="headSha")


class _WireRef(_Wire):
    ref: _Name
    new_sha: _Sha | None = Field(default=None, alias="newSha")


class _WirePayload(_Wire):
    event: _WireEvent
    repo: _WireRepo
    updated_refs: list[_WireRef] | None = Field(default=None, alias="updatedRefs", max_length=10_000)


class HubEvent(BaseModel):
    """What Graftwork reads from a Hub webhook delivery (payload version 3).

    `head_sha` is the raw `repo.headSha`, which huggingface_hub's `WebhookPayload` drops;
    `updated_refs` are the `(ref, newSha)` pairs of `updatedRefs` (newSha is None for a deleted ref).
    `payload` is the delivery as it came, recorded with it.
    """

    model_config = ConfigDict(frozen=True)

    repo_type: str
    repo_id: str
    action: str
    scope: str
    head_sha: str | None
    updated_refs: tuple[tuple[str, str | None], ...]
    payload: dict[str, Any] = Field(repr=False)

    @classmethod
    def from_json(cls, body: bytes | str) -> HubEvent:
        """Parse a delivery's body.

        Raises:
            WebhookPayloadError: the body is not JSON, or not a Hub webhook payload (the message says why).
        """
        try:
            payload = json.loads(body, parse_constant=_not_json, parse_float=_finite)
        except (ValueError, RecursionError) as e:
            raise WebhookPayloadError(f"the body is not JSON ({e}); the Hub sends a JSON object.", field="body") from e
        return cls.from_payload(payload)

    @classmethod
    def from_payload(cls, payload: object) -> HubEvent:
        """Read a delivery's decoded JSON.

        Raises:
            WebhookPayloadError: `payload` is not a Hub webhook payload; the message names each field at fault.
        """
        if not isinstance(payload, dict):
            kind = _JSON_KINDS.get(type(payload), type(payload).__name__)
            raise WebhookPayloadError(
                f"the payload is a JSON {kind}, not an object; the Hub sends an object.", field="payload"
            )
        try:
            wire = _WirePayload.model_validate(payload)
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in err['loc']) or 'payload'}: {err['msg']}" for err in e.errors()
            )
            raise WebhookPayloadError(
                f"not a Hub webhook payload: {problems}. Expected {{event: {{action, scope}}, "
                "repo: {type, name, headSha}, updatedRefs: [{ref, newSha}]}.",
                field=".".join(str(p) for p in e.errors()[0]["loc"]) or "payload",
            ) from None
        return cls(
            repo_type=wire.repo.type,
            repo_id=wire.repo.name,
            action=wire.event.action,
            scope=wire.event.scope,
            head_sha=wire.repo.head_sha,
            updated_refs=tuple((r.ref, r.new_sha) for r in wire.updated_refs or ()),
            payload=payload,
        )

    @property
    def new_refs(self) -> list[str] | None:
        """The refs this delivery creates or moves (None when it names no refs at all)."""
        if not self.updated_refs:
            return None
        return release_refs([ref for ref, sha in self.updated_refs if sha is not None])


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not a JSON value (RFC 8259)")


def _finite(number: str) -> float:
    value = float(number)
    if not math.isfinite(value):
        raise ValueError(f"{number} is beyond a double, not a JSON number this receiver reads")
    return value


def release_refs(refs: Collection[str]) -> list[str]:
    """The refs that can hold a release: branches and tags (`refs/heads/*`, `refs/tags/*`, or a bare
    name), not pull requests (`refs/pr/*`) or the Hub's own (`refs/convert/*`)."""
    return [ref for ref in refs if ref.startswith(BRANCH_AND_TAG_PREFIXES) or not ref.startswith("refs/")]


def delivery_key(event: HubEvent) -> str:
    """A stable key for a delivery: the sha256 of its repo, event, head commit and sorted updated refs.

    The same delivery, replayed or sent twice, gives the same key; the order of `updatedRefs` does not matter.
    """
    refs = sorted(event.updated_refs, key=lambda r: (r[0], r[1] or ""))
    what = [event.repo_type, event.repo_id, event.action, event.scope, event.head_sha, refs]
    return hashlib.sha256(json.dumps(what, separators=(",", ":")).encode()).hexdigest()
