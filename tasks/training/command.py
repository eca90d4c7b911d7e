"""A track's own training command: argv with placeholders, run where and as the built-in recipe would run, its
output checked and turned into a candidate like the recipe's.

```yaml
finetune:
  data: data/prefs.jsonl
  command:
    argv: [python, train_dpo.py, --model, "{start}", --out, "{output}", --data, "{data}", --nproc, "{processes}"]
    timeout_minutes: 120
  launch: {processes: 1}
```
`{start}` is the start model's folder (M_i + α·Δ, or M_i), `{output}` the folder to write (a model folder of the
start's architecture and tensor names, or a peft LoRA adapter, which is merged onto the start), `{data}` the
track's data path and `{processes}` its launch's process count. `{{` and `}}` write a brace. Each argument that
names a file (relative to the track's YAML, or absolute) is made absolute, and its sha256 becomes part of the
track's spec: a changed script is a new spec version, and a run refuses a script whose bytes changed since.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from string import Formatter
from typing import IO, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ...errors import TrainerCommandError
from ...fs import die_with_parent, file_sha256

PLACEHOLDERS = ("start", "output", "data", "processes")
REQUIRED = ("start", "output")
TAIL_LINES = 20
MAX_LINE = 4096
"""A longer line of the command's output is cut: its log, its tail in an error and the run's log stay readable."""
STOP_GRACE_S = 10.0
OnLine = Callable[[str, str], None]
"""Called with the stream's name (`stdout` or `stderr`) and each line the command writes to it."""


class TrainerCommand(BaseModel):
    """A training command a track runs instead of the built-in recipe."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    argv: tuple[str, ...] = Field(min_length=1, description="The command and its arguments, with placeholders.")
    timeout_minutes: float = Field(240.0, gt=0, description="Longer than this, it is stopped with its processes.")
    files: dict[str, str] = Field(
        default_factory=dict, description="The sha256 of each file the argv names (recorded when the track is added)."
    )

    @field_validator("argv")
    @classmethod
    def _known_placeholders(cls, argv: tuple[str, ...]) -> tuple[str, ...]:
        used = set()
        for arg in argv:
            try:
                used |= {name for _, name, _, _ in Formatter().parse(arg) if name is not None}
            except ValueError as e:
                raise ValueError(f"{arg!r} is not a valid argument ({e}); write a brace as {{{{ or }}}}") from None
        unknown = sorted(used - set(PLACEHOLDERS))
        if unknown:
            raise ValueError(f"unknown placeholders {unknown}; the placeholders are {{{'}, {'.join(PLACEHOLDERS)}}}")
        missing = [name for name in REQUIRED if name not in used]
        if missing:
            raise ValueError(f"the command must name {', '.join('{' + m + '}' for m in missing)} in its argv")
        return argv

    def resolved(self, base: Path) -> TrainerCommand:
        """The command with each argument that names a file under `base` (or an absolute file) made absolute, and
        the sha256 of each such file recorded in `files`; a command that has them (a spec read back from the
        registry) as it is, so that `check_files` compares with the bytes seen when the track was added."""
        if self.files:
            return self
        argv, files = [], {}
        for arg in self.argv:
            path = base / Path(arg).expanduser()
            if "{" not in arg and _is_file(path):
                arg = os.path.abspath(path)  # not resolved: a venv's python is a link that must stay one
                files[arg] = file_sha256(Path(arg))
            argv.append(arg)
        return self.model_copy(update={"argv": tuple(argv), "files": files})

    def check_files(self) -> None:
        """Check that every file the command names holds the bytes recorded for it.

        Raises:
            TrainerCommandError: a file is missing or changed (re-add the track to record its new bytes).
        """
        for name, sha256 in self.files.items():
            path = Path(name)
            found = file_sha256(path) if path.is_file() else None
            if found != sha256:
                what = "is missing" if found is None else f"changed (sha256 {found[:12]}, recorded {sha256[:12]})"
                raise TrainerCommandError(
                    f"the training command's file {path} {what} since the track was added; restore it, or "
                    "`graft track add` the track again to record a new spec version.",
                    command=list(self.argv),
                )

    def formatted(self, *, start: Path, output: Path, data: Path, processes: int) -> list[str]:
        """The argv with its placeholders filled in."""
        values = {"start": str(start), "output": str(output), "data": str(data), "processes": str(processes)}
        return [arg.format_map(values) for arg in self.argv]


def run_command(
    *, argv: list[str], cwd: Path, env: Mapping[str, str], timeout_s: float, log: Path, on_line: OnLine
) -> float:
    """Run `argv` in `cwd` with exactly `env`, in a process group of its own, its stdout and stderr passed line by
    line to `on_line` and appended to `log`; return the seconds it took. When it ends, or fails, or the caller is
    interrupted, whatever is left of its process group is stopped.

    Raises:
        TrainerCommandError: it could not start, exited with a non-zero status (the message ends with the last
            lines of its stderr), or ran past `timeout_s` (it and its process group were stopped).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    try:
        child = subprocess.Popen(
            argv, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, preexec_fn=die_with_parent(),
        )  # fmt: skip
    except OSError as e:
        raise TrainerCommandError(
            f"the training command {argv[0]!r} could not start: {e.strerror}; check the track's finetune.command.",
            command=argv,
        ) from None
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with log.open("a", encoding="utf-8") as sink:
        lock = threading.Lock()
        pumps = [
            threading.Thread(target=_pump, args=(stream, name, sink, lock, on_line, tail if name == "stderr" else None))
            for stream, name in ((child.stdout, "stdout"), (child.stderr, "stderr"))
        ]
        for pump in pumps:
            pump.start()
        try:
            status = child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:  # stopped with its group below, as every run ends
            raise TrainerCommandError(
                f"the training command ran past its timeout of {timeout_s / 60:g} min and was stopped with its "
                f"processes; raise finetune.command.timeout_minutes, or make it faster. Its log: {log}",
                command=argv,
            ) from None
        finally:
            _stop_group(child)
            for pump in pumps:
                pump.join()
    if status != 0:
        last = "\n".join(tail) or "(it wrote nothing to stderr)"
        raise TrainerCommandError(
            f"the training command exited with status {status}; its log: {log}. The last lines of its stderr:\n{last}",
            command=argv,
            status=status,
        )
    return time.monotonic() - began


def _pump(
    stream: IO[bytes] | None,
    name: str,
    sink: IO[str],
    lock: threading.Lock,
    on_line: OnLine,
    tail: deque[str] | None,
) -> None:
    assert stream is not None
    for raw in stream:
        text = raw.decode("utf-8", errors="replace").rstrip("\n")
        for line in (part[:MAX_LINE] for part in text.split("\r") if part):  # a progress bar's redraws are lines
            with lock:
                sink.write(f"{line}\n")
                sink.flush()
            if tail is not None:
                tail.append(line)
            on_line(name, line)
    stream.close()


def _stop_group(child: subprocess.Popen[Any]) -> None:
    """Stop what is left of the child's process group: SIGTERM, then SIGKILL after `STOP_GRACE_S`; return once
    the group is gone (or, past a SIGKILL, `STOP_GRACE_S` more)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            break
        if _gone(child, within=STOP_GRACE_S):
            break
    child.wait()


def _gone(child: subprocess.Popen[Any], *, within: float) -> bool:
    """Whether the child's process group is gone within `within` seconds (its leader reaped meanwhile)."""
    deadline = time.monotonic() + within
    while _group_alive(child.pid):
        if time.monotonic() >= deadline:
            return False
        child.poll()
        time.sleep(0.05)
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_file(path: Path) -> bool:
    """Whether `path` names a file; False for an argument that cannot be a path (a name too long for one)."""
    try:
        return path.is_file()
    except OSError:
        return False
