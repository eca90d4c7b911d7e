"""Must-hold 2: two processes registering the same release or diff at once get one row, and no error."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from sqlalchemy import func, select

from graftwork.storage import Registry
from graftwork.storage.db import session_scope
from graftwork.storage.models import Diff, DiffFile, Release

ROOT = Path(__file__).parents[2]

RELEASE = """
    from graftwork.storage import registry as rows
    from graftwork.storage.releases import Found, record
    from graftwork.storage.db import ensure_schema, session_scope
    ensure_schema(engine)
    wait_for_go()
    with session_scope(engine) as session:
        track = rows.get_track(session, name="t")
        found = Found(repo_id="org/model", revision="c" * 40, ref=None, path=None, position="1", content_key="c")
        release, new = record(session, track=track, found=found)
        result = {"id": release.id, "new": new}
"""

DIFF = """
    from graftwork.operations import diffs as ops
    from graftwork.storage import Registry
    from graftwork.storage.blobs import BlobStore
    from graftwork.storage.db import ensure_schema
    ensure_schema(engine)
    reg = Registry(engine=engine, store=BlobStore(BLOB_URL))
    wait_for_go()
    done = ops.register_diff(reg, diff_dir=Path(DIFF_DIR), track="t")
    result = {"id": done.id, "new": done.new}
"""

PRELUDE = """
    import json, sys, time
    from pathlib import Path
    from graftwork.storage.db import make_engine
    engine = make_engine(DATABASE_URL)

    def wait_for_go():
        Path(READY).touch()
        while not Path(GO).exists():
            time.sleep(0.001)
"""


def _race(body: str, registry: Registry, tmp_path: Path, **values: str) -> list[dict[str, object]]:
    """Run `body` in two processes released at the same instant; return what each printed."""
    go = tmp_path / "go"
    children = []
    for i in range(2):
        constants = {
            "DATABASE_URL": registry.engine.url.render_as_string(hide_password=False),
            "BLOB_URL": registry.store.url,
            "READY": str(tmp_path / f"ready-{i}"),
            "GO": str(go),
            **values,
        }
        header = "".join(f"{k} = {v!r}\n" for k, v in constants.items())
        script = header + textwrap.dedent(PRELUDE) + textwrap.dedent(body) + "print(json.dumps(result))\n"
        children.append(subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True))
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{i}").exists() for i in range(2)):
        assert all(c.poll() is None for c in children), "a racer died before the start"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    go.touch()
    results = []
    for child in children:
        stdout, _ = child.communicate(timeout=120)
        assert child.returncode == 0, f"a racer failed: {stdout}"
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return results


def test_two_processes_record_the_same_release_once(registry: Registry, tmp_path: Path) -> None:
    results = _race(RELEASE, registry, tmp_path)
    assert results[0]["id"] == results[1]["id"]
    assert sorted(r["new"] for r in results) == [False, True]
    with session_scope(registry.engine) as session:
        assert session.scalar(select(func.count()).select_from(Release)) == 1


def test_two_processes_register_the_same_diff_once(registry: Registry, diff_dir: Path, tmp_path: Path) -> None:
    results = _race(DIFF, registry, tmp_path, DIFF_DIR=str(diff_dir))
    assert results[0]["id"] == results[1]["id"]
    assert sorted(r["new"] for r in results) == [False, True]
    with session_scope(registry.engine) as session:
        assert session.scalar(select(func.count()).select_from(Diff)) == 1
        files = session.scalar(select(func.count()).select_from(DiffFile))
    assert files == len([p for p in diff_dir.rglob("*") if p.is_file()])
    assert list(registry.store.temporaries()) == []
