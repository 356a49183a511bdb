"""`photo-detector run-local`: the whole DAG under `kfp local` (SubprocessRunner, this environment).

Every run gets a fresh timestamped folder (never overwriting an earlier run) holding the data (when
generated), kfp's pipeline root with every artifact, one log file per task, and `stages.jsonl` with each
stage's own timing and result, from which the summary and kfp's per-task overhead are computed.
"""

import contextlib
import io
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from photo_detector.config import Config, leaf_keys
from photo_detector.demo import new_run_dir
from photo_detector.stages import PIPELINE_PARAMETERS, STAGE_LOG_ENV

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TASK_START = re.compile(r"Executing task '?([\w.-]+)'?")
_FAILED = re.compile(r"Inner task failed: '?([\w.-]+)'?")
_TASK_END = re.compile(r"Task '?([\w.-]+)'? finished with status (\w+)")
# a tqdm line (the task's stderr arrives line by line): "desc:  42%|####  | 21/50 [00:03<00:04, 6.1img/s]"
_BAR = re.compile(r"^\s*(?P<desc>[^|]*?):\s+(?P<pct>\d+)%\|.*\|\s*(?P<n>\d+)/(?P<total>\d+)\s+"
                  r"\[(?P<elapsed>[^<\]]+)<(?P<eta>[^,\]]+),\s*(?P<rate>[^\]]+)\]")


@dataclass
class LocalRunResult:
    run_dir: Path
    data_dir: Path
    wall_seconds: float
    stages: list[dict[str, Any]]
    task_logs: dict[str, Path]
    failed_task: str | None = None
    error: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return self.failed_task is None

    def stage(self, name: str) -> dict[str, Any] | None:
        return next((s for s in self.stages if s["stage"] == name), None)

    @property
    def kfp_overhead_per_task(self) -> float:
        """(pipeline wall time - the stage functions' own time) / tasks run: what kfp itself costs."""
        if not self.stages:
            return float("nan")
        return (self.wall_seconds - sum(s["seconds"] for s in self.stages)) / len(self.stages)


def pipeline_arguments(cfg: Config, data_uri: str, *, dry_run: bool = True) -> dict[str, Any]:
    """Named parameters from `cfg`; every other key that differs from the defaults goes in config_overrides."""
    args = {name: cfg.get(key) for name, key in PIPELINE_PARAMETERS.items()}
    # Locally: no cloud, so neither a real rollout nor a registry champion; the deploy always shows its plan.
    args.update(data_uri=data_uri, deploy_dry_run=dry_run, auto_deploy=True, champion_from_registry=False)
    named = set(PIPELINE_PARAMETERS.values())
    default = Config()
    args["config_overrides"] = {k: cfg.get(k) for k in leaf_keys()
                                if k not in named and cfg.get(k) != default.get(k)}
    return args


class _TaskLogSplitter(io.TextIOBase):
    """Copies each task's lines into `logs/<task>.log`; passes kfp's output through when `verbose`, else shows
    one line per task start and end (with the stage's key numbers from `stage_log`) and the progress bars as
    one line updated in place on a terminal, or a few finished bars per loop otherwise."""

    def __init__(self, target: Any, log_dir: Path, *, verbose: bool = True, stage_log: Path | None = None) -> None:
        self.target, self.log_dir, self.verbose, self.stage_log = target, log_dir, verbose, stage_log
        self.files: dict[str, Path] = {}
        self._current: Any = None
        self._buffer = ""
        self._tty = bool(getattr(target, "isatty", lambda: False)())
        self._bars: dict[str, float] = {}  # a bar family -> when its last line was shown
        self._open_bar = False
        log_dir.mkdir(parents=True, exist_ok=True)

    def _show(self, line: str, *, in_place: bool = False) -> None:
        if in_place:
            self.target.write("\r\x1b[2K" + line)
            self._open_bar = True
        else:
            self.target.write(("\n" if self._open_bar else "") + line + "\n")
            self._open_bar = False
        self.target.flush()

    def _quiet(self, line: str) -> None:
        if m := _TASK_START.search(line):
            self._show(f"  {m.group(1):<13} started")
        elif m := _TASK_END.search(line):
            record = self._record(m.group(1))
            if record:
                summary = record.get("summary") or {}
                numbers = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                    for k, v in summary.items() if isinstance(v, int | float | bool))
                self._show(f"  {m.group(1):<13} {m.group(2).lower()} in {record['seconds']:.1f}s  {numbers}")
            else:
                self._show(f"  {m.group(1):<13} {m.group(2).lower()}")
        elif m := _BAR.search(line):
            desc, pct = m.group("desc").strip() or "progress", int(m.group("pct"))
            text = (f"    {desc}: {pct}% {m.group('n')}/{m.group('total')} at {m.group('rate').strip()}, "
                    f"eta {m.group('eta').strip()}")
            if self._tty:  # one line, rewritten in place until the next stage line
                self._show(text, in_place=True)
                return
            # Otherwise a loop's bars (epoch 1/20, epoch 2/20, ...) are one family: its first finished bar,
            # then one every 30 s, so a long loop takes a few lines however many bars it draws.
            family = re.sub(r"\d+", "N", desc)
            now = time.monotonic()
            if pct == 100 and now - self._bars.get(family, -1e9) >= 30:
                self._bars[family] = now
                self._show(text)

    def _record(self, stage: str) -> dict[str, Any] | None:
        if not self.stage_log or not self.stage_log.exists():
            return None
        records = [json.loads(x) for x in self.stage_log.read_text().splitlines() if x.strip()]
        return next((r for r in reversed(records) if r.get("stage") == stage), None)

    def write(self, text: str) -> int:
        if self.verbose:
            self.target.write(text)
        self._buffer += text
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            self._line(_ANSI.sub("", line) + "\n")
        return len(text)

    def _line(self, line: str) -> None:
        if not self.verbose:
            self._quiet(line)
        match = _TASK_START.search(line)
        if match:
            if self._current:
                self._current.close()
            name = match.group(1)
            self.files[name] = self.log_dir / f"{name}.log"
            self._current = open(self.files[name], "a", encoding="utf-8")  # noqa: SIM115 - closed on switch
        if self._current:
            self._current.write(line)
            self._current.flush()

    def flush(self) -> None:
        self.target.flush()

    def close_files(self) -> None:
        if self._current:
            self._current.close()


@contextlib.contextmanager
def _split_stdout(log_dir: Path, *, verbose: bool = True, stage_log: Path | None = None) -> Iterator[_TaskLogSplitter]:
    splitter = _TaskLogSplitter(sys.stdout, log_dir, verbose=verbose, stage_log=stage_log)
    saved = sys.stdout
    sys.stdout = splitter  # type: ignore[assignment]
    try:
        yield splitter
    finally:
        sys.stdout = saved
        splitter.close_files()


def run_local(cfg: Config, *, out: str | Path = "runs", data: str | Path | None = None, per_class: int = 800,
              seed: int = 42, verbose: bool = True) -> LocalRunResult:
    """Run the DAG on `data` (default: freshly generated sample data) in a new folder under `out`. Every
    task's full output goes to logs/<task>.log; `verbose` also streams it, else one line per task start and
    end and one progress line per long loop reach the terminal."""
    from kfp import local

    from photo_detector.data.sample import generate_sample
    from photo_detector.pipelines.training_pipeline import build_pipeline

    run_dir = new_run_dir(Path(out)).resolve()
    if data is None:
        data = generate_sample(run_dir / "data", per_class=per_class, seed=seed).root
    data_dir = Path(data).resolve()
    args = pipeline_arguments(cfg, str(data_dir), dry_run=True)
    stage_log = run_dir / "stages.jsonl"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(run_dir / "pipeline"),
               raise_on_error=True)
    pipeline = build_pipeline(cfg, local=True)
    failed, error = None, None
    previous = os.environ.get(STAGE_LOG_ENV)
    os.environ[STAGE_LOG_ENV] = str(stage_log)
    start = time.perf_counter()
    try:
        with _split_stdout(run_dir / "logs", verbose=verbose, stage_log=stage_log) as splitter, \
                warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
            try:
                pipeline(**args)
            except RuntimeError as exc:
                message = _ANSI.sub("", str(exc))
                match = _FAILED.search(message) or _TASK_START.search(message) or re.search(r"Task '?([\w.-]+)",
                                                                                            message)
                failed, error = (match.group(1) if match else "unknown"), message
    finally:
        if previous is None:
            os.environ.pop(STAGE_LOG_ENV, None)
        else:
            os.environ[STAGE_LOG_ENV] = previous
    wall = time.perf_counter() - start
    stages = [json.loads(line) for line in stage_log.read_text().splitlines()] if stage_log.exists() else []
    for record in stages:
        if record["status"] == "failed":
            failed, error = record["stage"], record["error"]
    (run_dir / "arguments.json").write_text(json.dumps(args, indent=2, default=str) + "\n")
    return LocalRunResult(run_dir, data_dir, wall, stages, dict(splitter.files), failed, error, args)
