"""A Hub to test against: git repos served by olah (a Hub mirror server), and a small write-side fake.

olah in offline mode serves local git repositories (`<mirrors>/models/<org>/<name>`) through the
Hub's read API: refs, repo info at a revision, file trees and file downloads. It has no model
listing (`GET /api/models`) and no write API (create repo, commit, tag). `FakeHubWrites` supplies
exactly those, in the Hub's wire format, and commits into the same git repos, so that whatever it
writes is then read back through olah.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.service import free_port

GIT_ENV = {
    "GIT_AUTHOR_NAME": "graftwork-tests",
    "GIT_AUTHOR_EMAIL": "tests@graftwork.invalid",
    "GIT_COMMITTER_NAME": "graftwork-tests",
    "GIT_COMMITTER_EMAIL": "tests@graftwork.invalid",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run git in `repo` with a fixed identity, no user configuration and `env`; return its stdout."""
    environment = {**os.environ, **GIT_ENV, **(env or {})}
    done = subprocess.run(["git", *args], cwd=repo, env=environment, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def commit_all(repo: Path, message: str, *, at: datetime | None = None) -> str:
    """Commit every change in `repo` (dated `at`, by default now); return the new commit's sha."""
    git(repo, "add", "-A")
    dated = {} if at is None else {"GIT_AUTHOR_DATE": at.isoformat(), "GIT_COMMITTER_DATE": at.isoformat()}
    git(repo, "commit", "-q", "-m", message, env=dated)
    return git(repo, "rev-parse", "HEAD")


def init_repo(repo: Path) -> None:
    repo.mkdir(parents=True, exist_ok=True)
    git(repo, "init", "-q", "-b", "main")


def blob(repo: Path, rev: str, path: str) -> str | None:
    """The git blob id of `path` at `rev`, or None when it is not there."""
    done = subprocess.run(
        ["git", "rev-parse", "-q", "--verify", f"{rev}:{path}"], cwd=repo, capture_output=True, text=True
    )
    return done.stdout.strip() or None


@dataclass
class OlahServer:
    """olah serving `mirrors` on 127.0.0.1 in offline mode, as a subprocess."""

    mirrors: Path
    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "olah.out"

    def start(self, *, probe: str, timeout: float = 30.0) -> None:
        """Start olah and wait until `probe` (a path on it) answers 200."""
        config = self.workdir / "olah.toml"
        config.write_text(
            "[basic]\n"
            'host = "127.0.0.1"\n'
            f"port = {self.port}\n"
            f"repos-path = {json.dumps(str(self.workdir / 'cache'))}\n"
            f"mirrors-path = [{json.dumps(str(self.mirrors))}]\n"
            "metadata-cache-ttl = 0\n"
            "[accessibility]\n"
            "offline = true\n"
        )
        # `olah-cli` is `olah.server:cli`; run it with this interpreter so the venv's olah is used.
        command = [sys.executable, "-m", "olah.server", "-c", str(config), "--log-path", str(self.workdir / "logs")]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(command, cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"olah exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + probe, timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"olah did not answer {probe} within {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


class FakeHubWrites:
    """The parts of the Hub API olah lacks, over the same mirrors folder, in the Hub's wire format.

    - `GET /api/models?author=`: lists the repos under `<mirrors>/models/<author>/`.
    - `GET .../refs` and `GET .../revision/{rev}`, which huggingface_hub's writes ask for (whether a
      tag exists, the head commit when nothing changed); the tests read through olah, not these.
    - `POST /api/validate-yaml`: model card metadata, accepted as it is.
    - `POST /api/repos/create`, `POST /api/models/{org}/{name}/preupload|commit|tag/{rev}`: create a
      git repo (with a first commit, as the Hub does), accept files (every file as a "regular"
      upload: LFS and Xet transfers are not modelled), commit them on the branch, and tag.
    - `DELETE /api/models/{org}/{name}/tag/{tag}`: delete a tag (a channel's tag moves so).

    Every write needs `Authorization: Bearer <token>`; a wrong one gets a 401 like the Hub's, whose
    body does not repeat the token.
    """

    def __init__(self, mirrors: Path, *, token: str) -> None:
        self.mirrors = mirrors
        self.token = token
        self.port = free_port()
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self.app = self._build()
        self._server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake Hub did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def _repo(self, org: str, name: str) -> Path:
        return self.mirrors / "models" / org / name

    def _authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.token}"

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.middleware("http")
        async def record_and_authorize(request: Request, call_next):  # type: ignore[no-untyped-def]
            self.requests.append(f"{request.method} {request.url.path}")
            if request.method in ("POST", "DELETE") and not self._authorized(request):  # every write needs the token
                return JSONResponse({"error": "Invalid credentials in Authorization header"}, status_code=401)
            return await call_next(request)

        @app.get("/api/models")
        def list_models(author: str | None = None) -> JSONResponse:
            root = self.mirrors / "models"
            orgs = [root / author] if author else sorted(root.iterdir())
            items = [
                {"id": f"{org.name}/{repo.name}", "_id": f"{org.name}-{repo.name}", "author": org.name, "tags": []}
                for org in orgs
                if org.is_dir()
                for repo in sorted(org.iterdir())
                if (repo / ".git").is_dir()
            ]
            return JSONResponse(items)

        @app.post("/api/validate-yaml")
        def validate_yaml() -> JSONResponse:  # the model card's metadata: accepted as it is
            return JSONResponse({"errors": [], "warnings": []})

        @app.post("/api/repos/create")
        async def create_repo(request: Request) -> JSONResponse:
            body = await request.json()
            repo = self._repo(body["organization"], body["name"])
            url = f"{self.url}/{body['organization']}/{body['name']}"
            with self._lock:
                if repo.exists():  # the Hub's 409 carries the url too; huggingface_hub reads it
                    return JSONResponse({"error": "You already created this model repo", "url": url}, status_code=409)
                init_repo(repo)
                (repo / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
                commit_all(repo, "initial commit")
            return JSONResponse({"url": url})

        @app.post("/api/models/{org}/{name}/preupload/{rev}")
        async def preupload(org: str, name: str, rev: str, request: Request) -> JSONResponse:
            body = await request.json()
            repo = self._repo(org, name)
            with self._lock:  # `oid` (the git blob id at `rev`) lets the client skip unchanged files
                files = [
                    {
                        "path": f["path"],
                        "uploadMode": "regular",
                        "shouldIgnore": False,
                        "oid": blob(repo, rev, f["path"]),
                    }
                    for f in body["files"]
                ]
            return JSONResponse({"files": files, "commitOid": None})

        @app.get("/api/models/{org}/{name}/refs")
        def refs(org: str, name: str) -> JSONResponse:  # asked for when a tag exists already
            repo = self._repo(org, name)
            tags = [
                {"name": t, "ref": f"refs/tags/{t}", "targetCommit": git(repo, "rev-parse", f"{t}^{{commit}}")}
                for t in git(repo, "tag", "--list").split()
            ]
            return JSONResponse({"branches": [], "tags": tags, "converts": []})

        @app.get("/api/models/{org}/{name}/revision/{rev}")
        def repo_info(org: str, name: str, rev: str) -> JSONResponse:  # asked for when nothing changed
            sha = git(self._repo(org, name), "rev-parse", f"{rev}^{{commit}}")
            return JSONResponse({"id": f"{org}/{name}", "sha": sha, "private": False, "tags": [], "siblings": []})

        @app.post("/api/models/{org}/{name}/commit/{rev}")
        async def commit(org: str, name: str, rev: str, request: Request) -> JSONResponse:
            repo = self._repo(org, name)
            lines = [json.loads(line) for line in (await request.body()).splitlines() if line.strip()]
            with self._lock:
                git(repo, "checkout", "-q", rev)
                summary = "commit"
                for line in lines:
                    if line["key"] == "header":
                        summary = line["value"]["summary"]
                    elif line["key"] == "file":
                        target = repo / line["value"]["path"]
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(base64.b64decode(line["value"]["content"]))
                    else:
                        return JSONResponse({"error": f"not modelled: {line['key']}"}, status_code=400)
                if not git(repo, "status", "--porcelain"):
                    return JSONResponse({"error": "No files have been modified since last commit"}, status_code=400)
                sha = commit_all(repo, summary)
            return JSONResponse({"commitOid": sha, "commitUrl": f"{self.url}/{org}/{name}/commit/{sha}"})

        @app.post("/api/models/{org}/{name}/tag/{rev}")
        async def tag(org: str, name: str, rev: str, request: Request) -> JSONResponse:
            body = await request.json()
            repo = self._repo(org, name)
            with self._lock:
                if body["tag"] in git(repo, "tag", "--list").split():
                    return JSONResponse({"error": "Tag already exists"}, status_code=409)
                git(repo, "tag", body["tag"], rev)
            return JSONResponse({})

        @app.delete("/api/models/{org}/{name}/tag/{tag}")
        def delete_tag(org: str, name: str, tag: str) -> JSONResponse:
            repo = self._repo(org, name)
            with self._lock:
                if tag not in git(repo, "tag", "--list").split():
                    return JSONResponse({"error": f"Invalid rev id: {tag}"}, status_code=404)
                git(repo, "tag", "-d", tag)
            return JSONResponse({})

        return app


def copy_model(src: Path, repo: Path) -> None:
    """Copy a saved model folder's files into a git work tree (replacing what is there)."""
    for f in src.iterdir():
        shutil.copyfile(f, repo / f.name)


def sha(text: str) -> str:
    """A stand-in commit sha: the sha1 of `text`."""
    return hashlib.sha1(text.encode()).hexdigest()


def hub_payload(
    repo: str,
    *,
    refs: tuple[str, ...] = ("refs/heads/stage1-step1000-tokens5B",),
    action: str = "update",
    scope: str = "repo.content",
    repo_type: str = "model",
    head: str | None = None,
) -> dict[str, Any]:
    """A delivery as the Hub sends it (payload version 3) when `refs` are pushed to `repo` (at the commit
    `head`, by default a stand-in sha)."""
    head = head or sha(f"{repo}@{refs}")
    return {
        "event": {"action": action, "scope": scope},
        "repo": {
            "type": repo_type,
            "name": repo,
            "id": "6718e2c3c8f1b1c4f2d3a401",
            "private": False,
            "url": {"web": f"https://huggingface.co/{repo}", "api": f"https://huggingface.co/api/models/{repo}"},
            "headSha": head,
            "owner": {"id": "5e70f3648ce3c604d78fe132"},
        },
        "updatedRefs": [{"ref": ref, "oldSha": None, "newSha": head} for ref in refs],
        "webhook": {"id": "6790a1f2b3c4d5e6f7a8b9c0", "version": 3},
    }
