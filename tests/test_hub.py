"""tasks/hub.py against a real Hub-compatible server: olah, serving git repos in offline mode.

What runs against olah (the real huggingface_hub client, real HTTP, real git repos): list_repo_refs
(discover_refs), repo info at a revision (resolve, discover_repos), snapshot_download pinned to a
commit with allow_patterns (download), the offline cache fallback, and not-found errors.

What olah lacks, and how it is covered instead (see tests/hub_fixtures.py): the model listing
(`list_models`, used by discover_repos) and the write API (create_repo, upload_folder, create_tag,
used by publish) come from `FakeHubWrites`, a small server that speaks the Hub's wire format and
commits into the same git repos; everything it writes is read back through olah. Not covered: LFS
and Xet uploads (the fake accepts every file as a regular upload) and the Hub's own permission
model beyond one bearer token.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, constants
from typer.testing import CliRunner

from graftwork.errors import (
    GraftError,
    HubNotFoundError,
    HubPermissionError,
    HubUnavailableError,
    ModelRefError,
    OutputExistsError,
)
from graftwork.flows import watch
from graftwork.operations.settings import Workspace
from graftwork.operations.tracks import load_spec
from graftwork.storage import registry as rows
from graftwork.storage import releases
from graftwork.storage.db import session_scope
from graftwork.tasks import hub
from graftwork.tasks.hub import HubRef, ReleaseRef
from graftwork.terms import ReleaseState
from tests.conftest import VOCAB, perturb, random_state, save_model
from tests.hub_fixtures import FakeHubWrites, OlahServer, commit_all, copy_model, git, init_repo
from tests.registry.conftest import digest, track_spec

pytestmark = pytest.mark.hub
pytest.importorskip("olah", reason="olah (a dev extra) serves the test Hub: pip install -e '.[dev]'")

TOKEN = "hf_graftworkTestTokenDoNotLeak0123456789"
MODEL_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
}


@dataclass(frozen=True)
class Mirror:
    """The repos olah serves and the shas the tests expect."""

    root: Path
    c1: str  # acme/tiny, first commit: config marked 1
    c2: str  # acme/tiny, second commit: config marked 2, plus README.md, a pickle and notes
    chat: str  # acme/tiny-chat main
    state: dict[str, torch.Tensor]


@dataclass(frozen=True)
class Hub:
    olah: OlahServer
    fake: FakeHubWrites
    mirror: Mirror
    cache: Path


def _marked(folder: Path, mark: int) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["graftwork_test_commit"] = mark
    (folder / "config.json").write_text(json.dumps(config, indent=2))


@pytest.fixture(scope="session")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Mirror:
    root = tmp_path_factory.mktemp("hub-mirrors")
    state = random_state(seed=11, vocab_size=len(VOCAB), dtype=torch.bfloat16)
    model = save_model(tmp_path_factory.mktemp("hub-model") / "m", state, shard_size="1GB")

    tiny = root / "models" / "acme" / "tiny"
    init_repo(tiny)
    copy_model(model, tiny)
    _marked(tiny, 1)
    c1 = commit_all(tiny, "step 1000")
    git(tiny, "tag", "stage1-step1000")
    git(tiny, "tag", "v0.1")
    git(tiny, "branch", "stage1-step200")
    _marked(tiny, 2)
    (tiny / "README.md").write_text("# tiny\n")
    (tiny / "pytorch_model.bin").write_bytes(b"\x80\x02pickle, never downloaded")
    (tiny / "notes.txt").write_text("not a model file\n")
    c2 = commit_all(tiny, "step 2000")
    git(tiny, "branch", "stage1-step2000")

    chat = root / "models" / "acme" / "tiny-chat"
    init_repo(chat)
    copy_model(model, chat)
    chat_sha = commit_all(chat, "chat")
    other = root / "models" / "other" / "tiny-other"
    init_repo(other)
    copy_model(model, other)
    commit_all(other, "other")
    return Mirror(root=root, c1=c1, c2=c2, chat=chat_sha, state=state)


@pytest.fixture(scope="session")
def olah(mirror: Mirror, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OlahServer]:
    server = OlahServer(mirrors=mirror.root, workdir=tmp_path_factory.mktemp("olah"))
    try:
        server.start(probe="/api/models/acme/tiny/refs")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def fake(mirror: Mirror) -> Iterator[FakeHubWrites]:
    server = FakeHubWrites(mirror.root, token=TOKEN)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def hf(olah: OlahServer, fake: FakeHubWrites, mirror: Mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Hub:
    """Point huggingface_hub at olah the Hub's own way, with a fresh cache, for one test.

    huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE when it is imported (conftest turns
    offline mode on for the whole suite), so the constants it read are patched alongside.
    """
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_ENDPOINT", olah.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", olah.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", olah.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    return Hub(olah=olah, fake=fake, mirror=mirror, cache=cache)


def test_discover_refs_finds_matching_branches_and_tags_with_their_shas(hf: Hub) -> None:
    m = hf.mirror
    releases = hub.discover_refs(repo_id="acme/tiny", ref_pattern="stage1-step*")
    assert [(r.ref, r.revision) for r in releases] == [
        ("stage1-step200", m.c1),  # branch; natural order puts step200 before step1000
        ("stage1-step1000", m.c1),  # tag
        ("stage1-step2000", m.c2),  # branch
    ]
    assert all(r.repo_id == "acme/tiny" and r.path is None for r in releases)
    as_regex = hub.discover_refs(repo_id="acme/tiny", ref_pattern=re.compile(r"stage1-step\d{4}"))
    assert [r.ref for r in as_regex] == ["stage1-step1000", "stage1-step2000"]
    assert hub.discover_refs(repo_id="acme/tiny", ref_pattern="nothing-*") == []


def test_a_commit_that_changes_no_model_file_is_recorded_as_skipped(
    hf: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watched branch moves three times, as the watcher sees it between passes: new weights, a README
    edit, a config change. The README edit changes none of the files Graftwork downloads, so it is
    recorded as skipped (and never run); the releases sort by their commits' times."""
    monkeypatch.delenv("GRAFT_DATABASE_URL", raising=False)
    monkeypatch.delenv("GRAFT_BLOB_URL", raising=False)
    where = Workspace.at(tmp_path / "data")
    source = {"kind": "hub-refs", "repo": "acme/moving", "ref_pattern": "main"}
    with session_scope(where.registry().engine) as session:
        rows.save_track(session, name="moving", spec=(given := track_spec("moving", source)), digest=digest(given))
    spec = load_spec(where.registry(), track="moving")
    repo = hf.mirror.root / "models" / "acme" / "moving"
    init_repo(repo)
    state = random_state(seed=3, vocab_size=len(VOCAB), dtype=torch.bfloat16)
    copy_model(save_model(tmp_path / "m", state, shard_size="1GB"), repo)
    day = datetime(2026, 3, 1, tzinfo=UTC)
    shas = [commit_all(repo, "weights", at=day)]
    (repo / "README.md").write_text("# moving\n\nNow with a model card.\n")
    shas.append(commit_all(repo, "model card", at=day + timedelta(days=1)))
    _marked(repo, 3)
    shas.append(commit_all(repo, "config", at=day + timedelta(days=2)))
    for sha in shas:
        git(repo, "checkout", "-q", sha)  # the branch as it was at that pass
        git(repo, "branch", "-f", "main", sha)
        watch.record_releases.fn(where, "moving", spec, hub.discover_refs(repo_id="acme/moving", ref_pattern="main"))
    with session_scope(where.registry().engine) as session:
        found = releases.in_order(session, track=rows.get_track(session, name="moving"))
        states = [(r.revision, releases.status(session, release=r).state) for r in found]
        skipped = releases.status(session, release=found[1])
        assert skipped.detail == f"its model files are those of release-{found[0].id} (main)"
        assert [r.position for r in found] == sorted(r.position or "" for r in found)
    assert states == [
        (shas[0], ReleaseState.DISCOVERED),
        (shas[1], ReleaseState.SKIPPED),
        (shas[2], ReleaseState.DISCOVERED),
    ]


def test_download_pinned_gives_that_commits_model_files_only(hf: Hub) -> None:
    m = hf.mirror
    old = hub.download(release=ReleaseRef("acme/tiny", m.c1))
    new = hub.download(release=ReleaseRef("acme/tiny", m.c2))
    assert old.name == m.c1 and new.name == m.c2
    assert json.loads((old / "config.json").read_text())["graftwork_test_commit"] == 1
    assert json.loads((new / "config.json").read_text())["graftwork_test_commit"] == 2
    # README.md, the pickle and notes.txt are in the second commit but not model files.
    assert {p.name for p in new.iterdir()} == MODEL_FILES
    assert {p.name for p in old.iterdir()} == MODEL_FILES
    assert (new / "model.safetensors").read_bytes() == (
        hf.mirror.root / "models/acme/tiny/model.safetensors"
    ).read_bytes()


def test_download_works_offline_from_the_cache(hf: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    release = ReleaseRef("acme/tiny", hf.mirror.c1)
    folder = hub.download(release=release)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub.download(release=release) == folder
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert hub.download(release=release, endpoint="http://127.0.0.1:9") == folder  # nothing listens there
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnavailableError, match="HF_HUB_OFFLINE"):
        hub.download(release=ReleaseRef("acme/tiny", hf.mirror.c2))


def test_resolve_pins_branches_tags_and_short_shas(hf: Hub) -> None:
    m = hf.mirror
    assert hub.resolve(ref=HubRef("acme/tiny", "main")) == ReleaseRef("acme/tiny", m.c2, ref="main")
    assert hub.resolve(ref="acme/tiny@stage1-step1000") == ReleaseRef("acme/tiny", m.c1, ref="stage1-step1000")
    assert hub.resolve(ref=f"acme/tiny@{m.c1[:8]}") == ReleaseRef("acme/tiny", m.c1)
    # A full sha is pinned already: no request is made (this endpoint answers nothing).
    dead = HfApi(endpoint="http://127.0.0.1:9")
    assert hub.resolve(ref=f"acme/tiny@{m.c1}", api=dead) == ReleaseRef("acme/tiny", m.c1)
    with pytest.raises(ModelRefError, match="resolve"):
        ReleaseRef("acme/tiny", "main")


def test_a_hub_model_fetched_once_resolves_and_loads_offline(hf: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = hub.fetch_model("acme/tiny@stage1-step1000")
    assert folder.name == hf.mirror.c1
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub.fetch_model("acme/tiny@stage1-step1000") == folder
    with pytest.raises(HubUnavailableError, match="HF_HUB_OFFLINE"):
        hub.resolve(ref="acme/tiny@stage1-step2000")


def test_unknown_repos_and_refs_are_clear_graft_errors(hf: Hub) -> None:
    with pytest.raises(HubNotFoundError, match=r"acme/nope@main was not found .*HF_TOKEN") as caught:
        hub.resolve(ref="acme/nope@main")
    assert isinstance(caught.value, GraftError) and isinstance(caught.value, LookupError)
    with pytest.raises(HubNotFoundError, match="acme/tiny@no-such-branch"):
        hub.resolve(ref="acme/tiny@no-such-branch")
    with pytest.raises(HubNotFoundError, match="acme/nope"):
        hub.discover_refs(repo_id="acme/nope", ref_pattern="*")
    with pytest.raises(HubNotFoundError, match="acme/tiny@0000000000"):
        hub.download(release=ReleaseRef("acme/tiny", "0" * 40))
    with pytest.raises(HubNotFoundError, match="no local folder 'acme/nope' either"):
        hub.fetch_model("acme/nope")


def test_a_token_never_appears_in_errors_reprs_or_logs(
    hf: Hub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    for call in (
        lambda: hub.download(release=ReleaseRef("acme/nope", "1" * 40), token=TOKEN),
        lambda: hub.resolve(ref="acme/nope@main", api=HfApi(token=TOKEN)),
        lambda: hub.publish(
            folder=_model(tmp_path / "m", seed=1), repo_id="acme/leak", tag="t", token=TOKEN[::-1], api=_writes(hf)
        ),
    ):
        with pytest.raises(GraftError) as caught:
            call()
        errors.append(caught.value)
    assert isinstance(errors[-1], HubPermissionError)
    for exc in errors:
        for text in (str(exc), repr(exc), repr(exc.args)):
            assert TOKEN not in text and TOKEN[::-1] not in text
    assert TOKEN not in caplog.text and TOKEN[::-1] not in caplog.text


def test_discover_local_pins_each_complete_subfolder_by_content(tmp_path: Path) -> None:
    root = tmp_path / "releases"
    state = random_state(seed=3, vocab_size=len(VOCAB), dtype=torch.bfloat16)
    for name in ("step-1000", "step-200", ".step-3000.partial-123-abcd", "step-4000.incomplete"):
        save_model(root / name, state, vocab=None, shard_size="1GB")
    (root / "notes").mkdir()  # no weights: not a release
    (root / "README.md").write_text("a file, not a release\n")
    releases = hub.discover_local(release_dir=root)
    assert [r.ref for r in releases] == ["step-200", "step-1000"]
    assert all(re.fullmatch(r"[0-9a-f]{40}", r.revision) for r in releases)
    assert releases[0].revision == releases[1].revision  # same files, same hash
    assert releases[0].repo_id == f"local:{root.resolve()}"
    assert hub.download(release=releases[1]) == root.resolve() / "step-1000"
    assert hub.discover_local(release_dir=root) == releases  # deterministic
    _marked(root / "step-1000", 7)
    changed = hub.discover_local(release_dir=root)
    assert changed[0].revision == releases[0].revision and changed[1].revision != releases[1].revision
    with pytest.raises(GraftError, match="does not exist"):
        hub.discover_local(release_dir=tmp_path / "missing")


def test_parse_model_ref(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert hub.parse_model_ref("allenai/OLMo-2-1124-7B@stage1-step1000") == HubRef(
        "allenai/OLMo-2-1124-7B", "stage1-step1000"
    )
    assert hub.parse_model_ref("org/name") == HubRef("org/name", "main")
    assert hub.parse_model_ref("gpt2@v1.0") == HubRef("gpt2", "v1.0")
    assert hub.parse_model_ref("org/name@refs/pr/1") == HubRef("org/name", "refs/pr/1")
    assert hub.parse_model_ref(str(tmp_path)) == tmp_path
    assert hub.parse_model_ref("a/b/c") == Path("a/b/c")  # no such folder: the engine says so
    assert hub.parse_model_ref("./org/name") == Path("org/name")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert hub.parse_model_ref("org/name") == Path("org/name")  # an existing folder wins
    for bad in ("org/name@", "bad repo!/x@main", "a/b/c@main"):
        with pytest.raises(ModelRefError):
            hub.parse_model_ref(bad)


class _ListingFromFake(HfApi):
    """olah has no `GET /api/models`: list_models goes to the fake (same client code, the Hub's
    JSON), every other call (resolving each repo's main) to olah."""

    def __init__(self, *, olah: str, fake: str) -> None:
        super().__init__(endpoint=olah)
        self._lister = HfApi(endpoint=fake)

    def list_models(self, **kwargs):  # type: ignore[no-untyped-def,override]
        return self._lister.list_models(**kwargs)


def test_discover_repos_lists_an_author_and_pins_each_main(hf: Hub) -> None:
    api = _ListingFromFake(olah=hf.olah.url, fake=hf.fake.url)
    found = hub.discover_repos(author="acme", name_pattern="tiny*", api=api)
    assert found == [
        ReleaseRef("acme/tiny", hf.mirror.c2, ref="main"),
        ReleaseRef("acme/tiny-chat", hf.mirror.chat, ref="main"),
    ]
    assert hub.discover_repos(author="acme", name_pattern=re.compile(r"tiny-\w+"), api=api) == found[1:]
    assert "GET /api/models" in hf.fake.requests


def _model(path: Path, *, seed: int) -> Path:
    return save_model(path, random_state(seed=seed, vocab_size=len(VOCAB), dtype=torch.bfloat16), shard_size="1GB")


def _writes(h: Hub) -> HfApi:
    return HfApi(endpoint=h.fake.url)


def test_publish_then_download_the_tag_through_olah(hf: Hub, tmp_path: Path) -> None:
    folder = _model(tmp_path / "promoted", seed=21)
    (folder / "README.md").write_text("# promoted by graftwork\n")
    (folder / "scratch.bin").write_bytes(b"not published")
    sha = hub.publish(folder=folder, repo_id="acme/promoted", tag="candidate-1", token=TOKEN, api=_writes(hf))
    assert hub.resolve(ref="acme/promoted@candidate-1").revision == sha  # read back through olah
    got = hub.download(release=ReleaseRef("acme/promoted", sha))
    for name in MODEL_FILES:
        assert (got / name).read_bytes() == (folder / name).read_bytes(), name
    published = git(hf.mirror.root / "models/acme/promoted", "ls-tree", "--name-only", sha).split()
    assert "README.md" in published and "scratch.bin" not in published
    # A retried run publishes nothing new and gets the same commit; the tag cannot move elsewhere.
    assert hub.publish(folder=folder, repo_id="acme/promoted", tag="candidate-1", token=TOKEN, api=_writes(hf)) == sha
    other = _model(tmp_path / "other", seed=22)
    with pytest.raises(OutputExistsError, match="candidate-1"):
        hub.publish(folder=other, repo_id="acme/promoted", tag="candidate-1", token=TOKEN, api=_writes(hf))


def test_graft_transfer_takes_models_from_the_hub(hf: Hub, tmp_path: Path) -> None:
    from graftwork.deployments.cli import app

    finetuned = save_model(tmp_path / "ft", perturb(hf.mirror.state, seed=5, std=2e-3), shard_size="1GB")
    out = tmp_path / "out"
    args = ["transfer", "--finetuned", str(finetuned), "--base", "acme/tiny@stage1-step1000"]
    result = CliRunner().invoke(app, [*args, "--target", "acme/tiny@main", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "config.json").is_file()
    result = CliRunner().invoke(app, ["diff", str(finetuned), "acme/nope@main", "-o", str(tmp_path / "d")])
    assert result.exit_code == 1 and "acme/nope@main was not found" in result.stderr
