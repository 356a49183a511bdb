"""Image rehearsal: the six images' commands run without Docker (tests/test_docker_images.py runs the images).

    python tools/rehearse_images.py [--workdir .rehearsal] [--json report.json]

For each of verify, train, evaluate, gate, deploy and serve it builds a clean virtual environment (uv) holding
only what that image's Dockerfile installs: the wheel built from this tree with the image's extra, plus the
packages the Dockerfile pins before it (train: torch and torchvision). Then it runs what the image runs:

- the five pipeline stages: each task's exact container `command` and `args` from
  compiled/training_pipeline.yaml (`sh -ec ... python3 -m kfp.dsl.executor_main ...`), with an
  `--executor_input` shaped like the one Vertex AI passes (parameter values, input artifacts with URIs and
  metadata, output artifact URIs, an output file), chained on sample data so each stage consumes what the one
  before wrote; deploy runs as a dry run. After each stage it checks the artifacts, metadata and executor
  output that the next stage and the Vertex console need.
- serve: the image's entrypoint on the trained model; /health must answer 200 and one /predict 200.

It also checks that the torch-free environments (all but train) hold no torch, and that every file and folder
the stages wrote has the mode a plain open()/mkdir() gives (no 0600 artifacts). What this cannot verify: the
Docker build itself, the base image's OS libraries, and /gcs/ (artifact URIs here are local paths, which the
executor uses as is, where Vertex passes gs:// URIs that it maps to the /gcs/ FUSE mount). The chaining here
(`rehearse_pipeline`, with a StageRunner per image) is what tests/test_docker_images.py runs in the images.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "compiled" / "training_pipeline.yaml"
IMAGES = ("verify", "train", "evaluate", "gate", "deploy", "serve")
TASK_IMAGE = {"fingerprint": "verify", "verify-data": "verify", "train": "train", "evaluate": "evaluate",
              "quality-gate": "gate", "deploy": "deploy"}
# Small enough to train in seconds on 2 cores; every other parameter keeps the spec's default.
PARAMETERS = {"image_size": 32, "batch_size": 16, "epochs": 2, "min_accuracy": 0.0, "min_f1": 0.0,
              "champion_from_registry": False, "deploy_dry_run": True, "project": "rehearsal-project",
              "config_overrides": {"data.crop_pct": 0.8, "model.hidden_dim": 32, "model.pretrained": False,
                                   "train.warmup_epochs": 0, "verify.min_images_per_class": 2,
                                   "data.num_workers": 2,
                                   # the tiny model is judged at 0 too, but the checks run: the evaluate
                                   # image must produce these metrics or the gate fails closed
                                   "gate.robustness": {"jpeg_q75": 0.0, "webp_q80": 0.0}}}


@dataclass
class Report:
    wheel: str = ""
    wheel_seconds: float = 0.0
    environments: dict[str, dict[str, Any]] = field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    serve: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str) -> bool:
        if not ok:
            self.failures.append(what)
            print(f"  FAIL {what}", flush=True)
        return ok


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# Environments


def pip_sources() -> list[str]:
    """The package sources pip is configured with (find-links, extra indexes), handed to uv as well, so the
    rehearsal installs what `pip install` would (e.g. torch from a local mirror) instead of downloading."""
    out = run([sys.executable, "-m", "pip", "config", "list"]).stdout
    args: list[str] = []
    for line in out.splitlines():
        key, _, value = line.partition("=")
        value = value.strip().strip("'\"")
        if key.endswith("find-links"):
            args += [a for v in value.split() for a in ("--find-links", v)]
        elif key.endswith("extra-index-url"):
            args += [a for v in value.split() for a in ("--extra-index-url", v)]
    return [*args, "--index-strategy", "unsafe-best-match"] if args else []


def dockerfile_installs(image: str) -> tuple[list[str], str]:
    """(packages pinned before the wheel, the wheel's extra), read from the image's Dockerfile itself."""
    text = (ROOT / "images" / image / "Dockerfile").read_text(encoding="utf-8")
    extra = re.search(r'photo_detector-\*\.whl\)\[(\w+)\]"', text)
    if not extra:
        raise SystemExit(f"images/{image}/Dockerfile installs no photo_detector wheel with an extra")
    pins = re.findall(r"\b([A-Za-z0-9_.-]+==[\w.]+)", re.sub(r"#.*", "", text))
    return pins, extra.group(1)


def build_wheel(out: Path, report: Report) -> Path:
    start = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)
    res = run(["uv", "build", "--wheel", "--out-dir", str(out), str(ROOT)])
    if res.returncode != 0:
        raise SystemExit(f"building the wheel failed:\n{res.stderr}")
    wheel = next(out.glob("photo_detector-*.whl"))
    report.wheel, report.wheel_seconds = wheel.name, time.perf_counter() - start
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [m for m in tree_modules() if m not in names]
    report.check(not missing, f"the wheel lacks {missing}")
    print(f"wheel {wheel.name}: {len(names)} files in {report.wheel_seconds:.1f}s", flush=True)
    return wheel


def tree_modules() -> list[str]:
    """Every module and config file of the package as the wheel must hold it (mapped folders included)."""
    mapped = {"src/photo_detector": "photo_detector", "components": "photo_detector/components",
              "pipelines": "photo_detector/pipelines"}
    out = []
    for folder, target in mapped.items():
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
                out.append(f"{target}/{path.relative_to(ROOT / folder).as_posix()}")
    return out


# Imports of paths that only run on Vertex (the local rehearsal cannot reach them): the train image's
# experiment time series and its multi-GPU launcher.
OPTIONAL_PATHS = {"train": ("google.cloud.aiplatform_v1", "photo_detector.cloud.timeseries",
                            "photo_detector.parallel", "torch.distributed")}


def make_env(image: str, wheel: Path, envs: Path, report: Report) -> Path:
    env = envs / image
    pins, extra = dockerfile_installs(image)
    start = time.perf_counter()
    shutil.rmtree(env, ignore_errors=True)
    res = run(["uv", "venv", "--quiet", "--python", sys.executable, str(env)])
    if res.returncode == 0:
        res = run(["uv", "pip", "install", "--quiet", "--python", str(env / "bin" / "python"), *pip_sources(),
                   *pins, f"{wheel}[{extra}]"])
    seconds = time.perf_counter() - start
    if not report.check(res.returncode == 0, f"{image}: installing {pins} {wheel.name}[{extra}] failed: "
                                             f"{res.stderr[-2000:]}"):
        return env
    has_torch = run([str(env / "bin" / "python"), "-c",
                     "import importlib.util as u, sys; sys.exit(0 if u.find_spec('torch') else 1)"]).returncode == 0
    report.environments[image] = {"seconds": round(seconds, 1), "installs": [*pins, f"{wheel.name}[{extra}]"],
                                  "torch": has_torch}
    report.check(has_torch == (image == "train"),
                 f"{image}: torch is {'present' if has_torch else 'absent'} (only train may have it)")
    optional = OPTIONAL_PATHS.get(image, ())  # code paths the rehearsed commands do not reach
    if optional:  # one interpreter for all (torch loads once); the traceback names the module that fails
        res = run([str(env / "bin" / "python"), "-c", "; ".join(f"import {m}" for m in optional)])
        report.check(res.returncode == 0, f"{image}: importing {', '.join(optional)} fails: {res.stderr[-500:]}")
    print(f"env {image:<8} {seconds:6.1f}s  {' '.join(pins)} [{extra}]  torch: {has_torch}", flush=True)
    return env


# ---------------------------------------------------------------------------------------------------------
# The pipeline stages, through the compiled spec's own commands


def load_spec() -> dict[str, Any]:
    import yaml

    return yaml.safe_load(SPEC.read_text(encoding="utf-8"))


def flat_tasks(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Container tasks by name, with the tasks inside condition groups lifted out."""
    tasks: dict[str, dict[str, Any]] = {}

    def walk(dag: dict[str, Any]) -> None:
        for name, task in dag.items():
            component = spec["components"][task["componentRef"]["name"]]
            if "dag" in component:
                walk(component["dag"]["tasks"])
            else:
                tasks[name] = {**task, "component": component}
    walk(spec["root"]["dag"]["tasks"])
    return tasks


def _channel(name: str) -> str:
    return name.removeprefix("pipelinechannel--")


def executor_input(task: str, info: dict[str, Any], params: dict[str, Any], produced: dict[str, Any],
                   out_dir: Path) -> dict[str, Any]:
    """The executor input Vertex would pass this task: parameters, input artifacts, output URIs, output file."""
    values: dict[str, Any] = {}
    for name, source in info.get("inputs", {}).get("parameters", {}).items():
        if "componentInputParameter" in source:
            key = _channel(source["componentInputParameter"])
            values[name] = params[key] if key in params else produced["parameters"][key]
        elif "taskOutputParameter" in source:
            ref = source["taskOutputParameter"]
            values[name] = produced["parameters"][f"{ref['producerTask']}-{ref['outputParameterKey']}"]
        elif "runtimeValue" in source:
            constant = source["runtimeValue"]["constant"]
            values[name] = f"rehearsal-{task}" if constant == "{{$.pipeline_job_name}}" else constant
    artifacts: dict[str, Any] = {}
    for name, source in info.get("inputs", {}).get("artifacts", {}).items():
        if "taskOutputArtifact" in source:
            ref = source["taskOutputArtifact"]
            key = f"{ref['producerTask']}-{ref['outputArtifactKey']}"
        else:
            key = _channel(source["componentInputArtifact"])
        artifacts[name] = {"artifacts": [produced["artifacts"][key]]}
    outputs: dict[str, Any] = {"artifacts": {}, "parameters": {}, "outputFile": str(out_dir / "executor_output.json")}
    definitions = info["component"].get("outputDefinitions", {})
    for name, definition in definitions.get("artifacts", {}).items():
        outputs["artifacts"][name] = {"artifacts": [{
            "name": f"projects/123/locations/us-central1/metadataStores/default/artifacts/{task}-{name}",
            "type": definition["artifactType"], "uri": str(out_dir / name), "metadata": {}}]}
    for name in definitions.get("parameters", {}):
        outputs["parameters"][name] = {"outputFile": str(out_dir / name)}
    return {"inputs": {"parameterValues": values, "artifacts": artifacts}, "outputs": outputs}


# Runs one task: (its container spec, the executor input) -> the finished process. The rehearsal runs it in a
# clean environment (venv_runner); tests/test_docker_images.py runs it in the stage's built image.
StageRunner = Callable[[dict[str, Any], dict[str, Any]], subprocess.CompletedProcess[str]]


def spec_argv(container: dict[str, Any], payload: dict[str, Any]) -> list[str]:
    """The task's own command and args from the spec, with the executor input in place of `{{$}}`."""
    return [*container["command"], *(json.dumps(payload) if a == "{{$}}" else a for a in container["args"])]


def venv_runner(env: Path, work: Path) -> StageRunner:
    def run_in_env(container: dict[str, Any], payload: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
        environ.update(PATH=f"{env / 'bin'}:{environ.get('PATH', '')}", HOME=str(work / "home"),
                       PHOTO_DETECTOR_CACHE=str(work / "cache"), MPLCONFIGDIR=str(work / "mpl"),
                       PYTHONUNBUFFERED="1")
        return run(spec_argv(container, payload), env=environ, cwd=work, timeout=900)
    return run_in_env


def run_stage(task: str, info: dict[str, Any], spec: dict[str, Any], runner: StageRunner, params: dict[str, Any],
              produced: dict[str, Any], work: Path, report: Report) -> dict[str, Any] | None:
    container = spec["deploymentSpec"]["executors"][info["componentRef"]["name"].replace("comp-", "exec-")
                                                    ]["container"]
    out_dir = work / "pipeline-root" / task
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = executor_input(task, info, params, produced, out_dir)
    start = time.perf_counter()
    res = runner(container, payload)
    seconds = time.perf_counter() - start
    (work / "logs").mkdir(exist_ok=True)
    (work / "logs" / f"{task}.log").write_text(res.stdout + res.stderr, encoding="utf-8")
    ok = report.check(res.returncode == 0, f"{task}: `{shlex.join(container['command'][:2])} ...` exited "
                                           f"{res.returncode}: {res.stderr[-1500:]}")
    output_file = Path(payload["outputs"]["outputFile"])
    if not ok or not report.check(output_file.is_file(), f"{task}: no executor output at {output_file}"):
        return None
    executor_output = json.loads(output_file.read_text(encoding="utf-8"))
    for name, declared in payload["outputs"]["artifacts"].items():
        written = executor_output.get("artifacts", {}).get(name, {}).get("artifacts", [{}])[0]
        artifact = {**declared["artifacts"][0], "metadata": written.get("metadata", {})}
        produced["artifacts"][f"{task}-{name}"] = artifact
    for name, value in executor_output.get("parameterValues", {}).items():
        produced["parameters"][f"{task}-{name}"] = value
    report.stages[task] = {"seconds": round(seconds, 1), "image": container["image"],
                           "outputs": sorted(executor_output.get("artifacts", {})),
                           "parameters": executor_output.get("parameterValues", {})}
    print(f"stage {task:<13} {seconds:6.1f}s  in the {TASK_IMAGE[task]} image's environment", flush=True)
    return executor_output


def check_outputs(task: str, produced: dict[str, Any], report: Report) -> None:
    """What the next stage and the Vertex console need from each stage."""
    def art(name: str) -> dict[str, Any]:
        return produced["artifacts"].get(f"{task}-{name}", {"uri": "", "metadata": {}})

    def exists(name: str) -> bool:
        return report.check(Path(art(name)["uri"]).exists(), f"{task}: output artifact {name} was not written")

    if task == "fingerprint":
        report.check(str(produced["parameters"].get("fingerprint-fingerprint", "")).startswith("fp:"),
                     "fingerprint: no fingerprint output parameter")
    elif task == "verify-data":
        exists("verified"), exists("report")
        report.check(str(produced["parameters"].get("verify-data-digest", "")).startswith("sha256:"),
                     "verify-data: no digest output parameter")
        report.check(art("metrics")["metadata"].get("images", 0) > 0, "verify-data: Metrics has no image count")
        report.check((Path(art("verified")["uri"]) / "manifest.json").is_file(), "verify-data: not packed")
    elif task == "train":
        exists("model"), exists("report"), exists("epoch_metrics")
        meta = art("model")["metadata"]
        report.check(str(meta.get("model_version", "")).startswith("m-"), "train: Model metadata lacks its version")
        report.check((Path(art("model")["uri"]) / "model.onnx").is_file(), "train: no model.onnx in the Model")
        report.check("val_accuracy" in art("metrics")["metadata"], "train: Metrics lacks val_accuracy")
    elif task == "evaluate":
        exists("report")
        metrics = art("metrics")["metadata"]
        report.check({"accuracy", "f1", "n_images"} <= set(metrics), f"evaluate: Metrics lacks keys: {metrics}")
        cm = art("classification_metrics")["metadata"]
        report.check("confusionMatrix" in cm and "confidenceMetrics" in cm,
                     "evaluate: ClassificationMetrics lacks the confusion matrix or ROC (the console's charts)")
    elif task == "quality-gate":
        exists("decision")
        report.check(produced["parameters"].get("quality-gate-Output") is True,
                     "quality-gate: the decision parameter (Output) is not true with thresholds at 0")
        report.check("passed" in art("decision")["metadata"], "quality-gate: the decision has no metadata")
    elif task == "deploy":
        exists("deployment")
        plan = json.loads(Path(art("deployment")["uri"]).read_text(encoding="utf-8"))
        image = plan["service"]["template"]["containers"][0]["image"]
        report.check(plan["dry_run"] is True and image.endswith("/serve:" + image.rsplit(":", 1)[-1]),
                     f"deploy: the dry-run plan does not roll out the serve image ({image})")


def check_modes(root: Path, umask: int, report: Report) -> None:
    """Every file and folder a stage wrote has the mode a plain open()/mkdir() gives under `umask`, so a
    non-root reader (the serve container's user, a teammate, a web server) can read what a stage wrote."""
    want = {False: 0o666 & ~umask, True: 0o777 & ~umask}
    wrong = [f"{p.relative_to(root)} {p.stat().st_mode & 0o777:o}" for p in sorted(root.rglob("*"))
             if not p.is_symlink() and p.stat().st_mode & 0o777 != want[p.is_dir()]]
    report.check(not wrong, f"files not written {want[False]:o} (folders {want[True]:o}) under {root}: {wrong[:10]}")


def rehearse_pipeline(runners: dict[str, StageRunner], work: Path, data: Path, report: Report) -> Path | None:
    spec = load_spec()
    defaults = {k: v.get("defaultValue") for k, v in spec["root"]["inputDefinitions"]["parameters"].items()}
    params = {**defaults, **PARAMETERS, "data_uri": str(data)}
    produced: dict[str, Any] = {"artifacts": {}, "parameters": {}}
    # The importer: Vertex hands the next task a Dataset artifact whose URI is data_uri.
    produced["artifacts"]["importer-artifact"] = {
        "name": "projects/123/locations/us-central1/metadataStores/default/artifacts/dataset",
        "type": {"schemaTitle": "system.Dataset", "schemaVersion": "0.0.1"}, "uri": str(data), "metadata": {}}
    tasks = flat_tasks(spec)
    for task in TASK_IMAGE:
        if task not in tasks or TASK_IMAGE[task] not in runners:
            report.check(False, f"{task}: missing from the spec or its environment failed")
            return None
        if run_stage(task, tasks[task], spec, runners[TASK_IMAGE[task]], params, produced, work, report) is None:
            return None
        check_outputs(task, produced, report)
    return Path(produced["artifacts"]["train-model"]["uri"])


# ---------------------------------------------------------------------------------------------------------
# The service


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rehearse_serve(env: Path, model: Path, image: Path, work: Path, report: Report) -> None:
    import hashlib

    import httpx

    entry = json.loads(re.search(r"^ENTRYPOINT\s+(\[.*\])", (ROOT / "images/serve/Dockerfile").read_text(),
                                 re.M).group(1))
    key, port = "rehearsal-key", free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    environ.update(PATH=f"{env / 'bin'}:{environ.get('PATH', '')}", PORT=str(port), HOME=str(work / "home"),
                   PHOTO_DETECTOR_MODEL_URI=str(model), PHOTO_DETECTOR_CACHE=str(work / "cache"),
                   PHOTO_DETECTOR_API_KEY_HASHES="sha256:" + hashlib.sha256(key.encode()).hexdigest())
    log = open(work / "logs" / "serve.log", "w", encoding="utf-8")  # noqa: SIM115 - closed below
    start = time.perf_counter()
    proc = subprocess.Popen([*entry, "--host", "127.0.0.1"], env=environ, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base, health = f"http://127.0.0.1:{port}", None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"{base}/health", timeout=2)
                if health.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        ready = time.perf_counter() - start
        report.check(health is not None and health.status_code == 200,
                     f"serve: /health never answered 200 (exit {proc.poll()}; see {work / 'logs' / 'serve.log'})")
        if health is not None and health.status_code == 200:
            r = httpx.post(f"{base}/predict", headers={"X-API-Key": key}, timeout=30,
                           files={"file": (image.name, image.read_bytes())})
            report.check(r.status_code == 200, f"serve: /predict answered {r.status_code}: {r.text[:300]}")
            report.serve = {"ready_seconds": round(ready, 2), "health": health.json(),
                            "predict_status": r.status_code, "prediction": r.json() if r.status_code == 200 else None}
            print(f"serve    ready in {ready:.1f}s; /predict {r.status_code}: {r.text[:120]}", flush=True)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


# ---------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / ".rehearsal",
                        help="where the wheel, the six environments and the run go (default .rehearsal/)")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    if shutil.which("uv") is None:
        raise SystemExit("uv is not installed: pip install uv (the dev extra has it)")
    from photo_detector.data.sample import generate_sample

    total = time.perf_counter()
    work = args.workdir.resolve()
    shutil.rmtree(work / "run", ignore_errors=True)
    (work / "run" / "logs").mkdir(parents=True)
    report = Report()
    wheel = build_wheel(work / "dist", report)
    envs = {image: make_env(image, wheel, work / "envs", report) for image in IMAGES}
    envs = {image: env for image, env in envs.items() if image in report.environments}
    data = generate_sample(work / "run" / "data", per_class=30, size=40, seed=7).root
    model = rehearse_pipeline({image: venv_runner(env, work / "run") for image, env in envs.items()},
                              work / "run", data, report)
    umask = os.umask(0o022)
    os.umask(umask)  # the stages inherited this process's umask; nothing else runs in this process meanwhile
    check_modes(work / "run" / "pipeline-root", umask, report)
    if model is not None and "serve" in envs:
        image = next((data / "test" / "ai_generated").iterdir())
        rehearse_serve(envs["serve"], model, image, work / "run", report)
    seconds = time.perf_counter() - total
    summary = {**asdict(report), "total_seconds": round(seconds, 1)}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    envs_line = ", ".join(f"{k} {v['seconds']}s" for k, v in report.environments.items())
    stages_line = ", ".join(f"{k} {v['seconds']}s" for k, v in report.stages.items())
    print(f"\nrehearsal {'PASSED' if not report.failures else 'FAILED'} in {seconds:.0f}s "
          f"(environments: {envs_line}; stages: {stages_line})")
    for failure in report.failures:
        print(f"  - {failure}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
