"""A Google Cloud project for photo-detector: `setup` creates what `cloud.inventory` lists (APIs, resources,
accounts and their roles) idempotently, and `doctor` checks it.

Both read the same table, and the README renders it (`photo-detector setup --print-table`), so what is
created, what is checked and what is documented cannot drift apart. Every call goes through the official
client with an explicit short timeout and no client-side retry loop: offline, doctor fails in seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from photo_detector.cloud.clients import CALL_TIMEOUT, Clients
from photo_detector.cloud.inventory import ACCOUNTS, APIS, SUBMIT_PERMISSIONS, T4_QUOTA, bucket_grants, resources
from photo_detector.cloud.inventory import roles_table as roles_table  # the CLI's --print-roles
from photo_detector.cloud.naming import data_bucket, pipeline_bucket
from photo_detector.cloud.settings import Settings
from photo_detector.config import Config
from photo_detector.keys import hash_key, new_key

log = logging.getLogger(__name__)



def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """One API call with a short timeout and no retry loop (a preflight must answer fast)."""
    return fn(*args, timeout=CALL_TIMEOUT, retry=None, **kwargs)


def _done(fn: Callable[[], Any]) -> Callable[[], None]:
    """A step's action: call (429 and 5xx retried), wait for a long-running operation if one comes back. A 409
    means someone created it between our read and our write: the step's goal is met."""
    def run() -> None:
        from google.api_core import exceptions as gexc

        from photo_detector.cloud.retry import with_retries

        try:
            result = with_retries("setup", fn)
        except gexc.Conflict:
            return
        if hasattr(result, "result") and callable(result.result):
            result.result(timeout=300)
    return run


# ---------------------------------------------------------------------------------------------------------
# setup


@dataclass
class Step:
    what: str        # e.g. "create bucket gs://p-photo-detector-data"
    done: bool       # already as it should be
    apply: Callable[[], str | None] | None = None  # returns a line to print once (the new API key)


@dataclass
class SetupResult:
    steps: list[Step]
    printed: list[str]
    settings: dict[str, str]

    @property
    def changes(self) -> int:
        return sum(1 for s in self.steps if not s.done)


def _exists(call: Callable[[], Any]) -> bool:
    from google.api_core import exceptions as gexc

    try:
        call()
        return True
    except gexc.NotFound:
        return False


def plan_setup(cfg: Config, settings: Settings, clients: Clients | None = None) -> list[Step]:
    """Every step setup takes, each marked done when the project already has it (reads only)."""
    from google.cloud import artifactregistry_v1

    clients = clients or Clients(settings)
    project, region = settings.require("project"), settings.require("region")
    names = resources(cfg, project)
    steps: list[Step] = []

    su = clients.get("service_usage")
    enabled = {svc.config.name for svc in _call(su.list_services, request={
        "parent": f"projects/{project}", "filter": "state:ENABLED"})}
    missing = [api for api in APIS if api not in enabled]
    steps.append(Step(f"enable APIs: {', '.join(missing) or 'all enabled'}", not missing,
                      _done(lambda: _call(su.batch_enable_services, request={
                          "parent": f"projects/{project}", "service_ids": missing}))))

    gcs = clients.get("storage")
    for key in ("data bucket", "pipeline bucket"):
        bucket = names[key]
        steps.append(Step(f"create {key} gs://{bucket} in {region}",
                          _exists(lambda b=bucket: _call(gcs.get_bucket, b)),
                          _done(lambda b=bucket: _call(gcs.create_bucket, b, location=region))))

    ar = clients.get("artifact_registry")
    parent = f"projects/{project}/locations/{region}"
    for key, fmt in (("docker repository", artifactregistry_v1.Repository.Format.DOCKER),
                     ("kfp repository", artifactregistry_v1.Repository.Format.KFP)):
        repo = names[key]
        steps.append(Step(f"create {key} {repo} ({fmt.name}) in {region}",
                          _exists(lambda r=repo: _call(ar.get_repository, name=f"{parent}/repositories/{r}")),
                          _done(lambda r=repo, f=fmt: _call(ar.create_repository, request={
                              "parent": parent, "repository_id": r,
                              "repository": {"format_": f, "description": "photo-detector"}}))))

    sm = clients.get("secret_manager")
    smoke_key, user_key = new_key(), new_key()
    smoke_name = f"projects/{project}/secrets/{cfg.deploy.smoke_key_secret}"
    keys_name = f"projects/{project}/secrets/{cfg.deploy.api_keys_secret}"
    smoke_exists = _exists(lambda: _call(sm.get_secret, name=smoke_name))
    keys_exist = _exists(lambda: _call(sm.get_secret, name=keys_name))

    def make_secret(secret_id: str, payload: str, line: str | None) -> Callable[[], str | None]:
        def run() -> str | None:
            created = _call(sm.create_secret, request={"parent": f"projects/{project}", "secret_id": secret_id,
                                                       "secret": {"replication": {"automatic": {}}}})
            _call(sm.add_secret_version, request={"parent": created.name, "payload": {"data": payload.encode()}})
            return line
        return run

    steps.append(Step(f"create secret {cfg.deploy.smoke_key_secret} (the key the deploy smoke test presents)",
                      smoke_exists, make_secret(cfg.deploy.smoke_key_secret, smoke_key, None)))
    steps.append(Step(f"create secret {cfg.deploy.api_keys_secret} (SHA-256 hashes of the API keys, never keys)",
                      keys_exist, make_secret(cfg.deploy.api_keys_secret,
                                              f"{hash_key(user_key)},{hash_key(smoke_key)}",
                                              f"API key (shown once; only its hash is stored): {user_key}")))
    if smoke_exists != keys_exist:
        log.warning("only one of the two secrets exists: the smoke key's hash may be missing from %s",
                     cfg.deploy.api_keys_secret)

    from photo_detector.cloud.timeseries import find_tensorboard

    tb = clients.get("tensorboard")
    tb_parent = f"projects/{project}/locations/{region}"
    steps.append(Step(f"create Vertex AI TensorBoard {cfg.gcp.tensorboard} in {region} (the per-epoch time series "
                      "of runs attached to an experiment)",
                      _call(find_tensorboard, tb, project, region, cfg.gcp.tensorboard) is not None,
                      _done(lambda: _call(tb.create_tensorboard, request={"parent": tb_parent, "tensorboard": {
                          "display_name": cfg.gcp.tensorboard,
                          "description": "photo-detector: per-epoch training time series"}}))))

    iam = clients.get("iam")
    for acc in ACCOUNTS.values():
        email = acc.email(project)
        steps.append(Step(f"create service account {email}",
                          _exists(lambda e=email: _call(iam.get_service_account,
                                                        name=f"projects/{project}/serviceAccounts/{e}")),
                          _done(lambda a=acc: _call(iam.create_service_account, request={
                              "name": f"projects/{project}", "account_id": a.account_id,
                              "service_account": {"display_name": a.display_name}}))))

    rm = clients.get("resource_manager")
    policy = _call(rm.get_iam_policy, request={"resource": f"projects/{project}"})
    have = {(b.role, m) for b in policy.bindings for m in b.members}
    wanted = [(role, f"serviceAccount:{acc.email(project)}") for acc in ACCOUNTS.values() for role in acc.roles]
    grants = [w for w in wanted if w not in have]

    def grant() -> None:
        fresh = _call(rm.get_iam_policy, request={"resource": f"projects/{project}"})  # read-modify-write
        current = {(b.role, m) for b in fresh.bindings for m in b.members}
        for role, member in grants:
            if (role, member) in current:
                continue
            binding = next((b for b in fresh.bindings if b.role == role), None)
            if binding is None:
                fresh.bindings.add(role=role, members=[member])
            else:
                binding.members.append(member)
        _call(rm.set_iam_policy, request={"resource": f"projects/{project}", "policy": fresh})

    steps.append(Step(f"grant {len(grants)} role(s): " + ", ".join(f"{r} to {m.split(':')[1].split('@')[0]}"
                                                                    for r, m in grants) if grants else
                      "grant roles: all granted", not grants, grant))

    for bucket, want in sorted(bucket_grants(project, names).items()):  # storage roles: on the bucket only
        absent = want - _bucket_bindings(gcs, bucket)  # (not `missing`: the APIs step's action reads that name)
        steps.append(Step(f"grant on gs://{bucket}: " + ", ".join(f"{r} to {_who(m)}" for r, m in sorted(absent))
                          if absent else f"grant roles on gs://{bucket}: all granted", not absent,
                          _done(lambda b=bucket, w=want: _grant_bucket(gcs, b, w))))
    return steps


def _who(member: str) -> str:
    return member.split(":", 1)[1].split("@")[0]


def _bucket_bindings(gcs: Any, bucket: str) -> set[tuple[str, str]]:
    """(role, member) of a bucket's IAM policy; none for a bucket an earlier step of this run creates."""
    from google.api_core import exceptions as gexc

    try:
        policy = _call(gcs.bucket(bucket).get_iam_policy, requested_policy_version=3)
    except gexc.NotFound:
        return set()
    return {(b["role"], m) for b in policy.bindings for m in b["members"]}


def _grant_bucket(gcs: Any, bucket: str, want: set[tuple[str, str]]) -> None:
    """Read-modify-write of the bucket's policy (its etag makes a concurrent change fail, not vanish)."""
    handle = gcs.bucket(bucket)
    policy = _call(handle.get_iam_policy, requested_policy_version=3)
    have = {(b["role"], m) for b in policy.bindings for m in b["members"]}
    for role, member in sorted(want - have):
        binding = next((b for b in policy.bindings if b["role"] == role and not b.get("condition")), None)
        if binding is None:
            policy.bindings.append({"role": role, "members": {member}})
        else:
            binding["members"] = set(binding["members"]) | {member}
    _call(handle.set_iam_policy, policy)


def run_setup(cfg: Config, settings: Settings, *, dry_run: bool,
              on_step: Callable[[Step, str], None] | None = None) -> SetupResult:
    steps = plan_setup(cfg, settings)
    printed: list[str] = []
    for step in steps:
        if step.done:
            status = "ok"
        elif dry_run:
            status = "would"
        else:
            line = step.apply() if step.apply else None
            if line:
                printed.append(line)
            status = "done"
        if on_step:
            on_step(step, status)
    project, region = settings.require("project"), settings.require("region")
    runner = ACCOUNTS["runner"].email(project)
    config = {"gcp.project": project, "gcp.region": region,
              "gcp.pipeline_root": f"gs://{pipeline_bucket(project)}/root", "gcp.service_account": runner}
    return SetupResult(steps, printed, config)


# ---------------------------------------------------------------------------------------------------------
# doctor


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    fix: str = ""


FAST = ("credentials", "pipeline bucket", "images", "data")  # what submit and schedule create check first


def _safely(name: str, fn: Callable[[], Check]) -> Check:
    """A check that cannot raise: any failure is a FAIL line with its reason."""
    from photo_detector.cloud.retry import user_error

    try:
        return fn()
    except Exception as exc:  # every failure is a line, never a traceback
        err = user_error(exc)
        reason = str(err) if err else f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        return Check(name, False, reason, _fix_for(exc))


def _fix_for(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    if code == 403:
        return "grant the missing role (see the README's roles table), or run `photo-detector setup`"
    if code == 404:
        return "run `photo-detector setup` to create it"
    return "check the network and credentials (`gcloud auth application-default login`)"


def _serve_images(spec: dict[str, Any]) -> Iterator[str]:
    """The serve image the deploy task will roll out (a compile-time constant in the spec)."""
    for component in spec.get("components", {}).values():
        for task in component.get("dag", {}).get("tasks", {}).values():
            value = task.get("inputs", {}).get("parameters", {}).get("serve_image", {})
            if "runtimeValue" in value:
                yield value["runtimeValue"]["constant"]


def run_doctor(cfg: Config, settings: Settings, *, spec: dict[str, Any] | None = None, data_uri: str = "",
               only: tuple[str, ...] | None = None) -> Iterator[Check]:
    """One Check per line, in order; `only` selects a subset (the fast preflight of submit)."""
    clients = Clients(settings)
    project = settings.project
    region = settings.region

    def want(name: str) -> bool:
        return only is None or name in only

    def credentials() -> Check:
        if not project:
            return Check("credentials", False, "no project", "pass --project, set PHOTO_DETECTOR_PROJECT or run "
                         "`gcloud config set project PROJECT` (Application Default Credentials)")
        if not settings.endpoints:
            import google.auth

            google.auth.default()
        return Check("credentials", True, f"project {project}, region {region}")

    yield _safely("credentials", credentials)
    if not project:
        return

    if want("apis"):
        def apis() -> Check:
            su = clients.get("service_usage")
            enabled = {s.config.name for s in _call(su.list_services, request={
                "parent": f"projects/{project}", "filter": "state:ENABLED"})}
            missing = [a for a in APIS if a not in enabled]
            return Check("apis", not missing, "all enabled" if not missing else f"not enabled: {', '.join(missing)}",
                         f"gcloud services enable {' '.join(missing)} (or photo-detector setup)")
        yield _safely("apis", apis)

    for key in ("pipeline bucket", "data bucket"):
        if not want(key):
            continue

        def bucket_check(key: str = key) -> Check:
            name = (pipeline_bucket if key == "pipeline bucket" else data_bucket)(project)
            if key == "pipeline bucket" and settings.pipeline_root:
                name = settings.pipeline_root.removeprefix("gs://").split("/", 1)[0]
            gcs = clients.get("storage")
            bucket = gcs.bucket(name)
            if not _exists(lambda: _call(gcs.get_bucket, name)):
                derived = (pipeline_bucket if key == "pipeline bucket" else data_bucket)(project)
                fix = ("photo-detector setup creates it" if name == derived else  # setup creates only its own
                       f"gcloud storage buckets create gs://{name} --location {region}, or use gs://{derived} "
                       "(what photo-detector setup creates)")
                return Check(key, False, f"gs://{name} does not exist", fix)
            probe = bucket.blob(".photo-detector-doctor")
            probe.upload_from_string(b"ok", timeout=CALL_TIMEOUT, retry=None)
            probe.delete(timeout=CALL_TIMEOUT, retry=None)
            return Check(key, True, f"gs://{name} exists and is writable")
        yield _safely(key, bucket_check)

    if want("repositories"):
        def repositories() -> Check:
            ar = clients.get("artifact_registry")
            parent = f"projects/{project}/locations/{region}/repositories"
            missing = [r for r in (cfg.gcp.docker_repository, cfg.gcp.kfp_repository)
                       if not _exists(lambda r=r: _call(ar.get_repository, name=f"{parent}/{r}"))]
            return Check("repositories", not missing, "Docker and KFP repositories exist" if not missing else
                         f"missing: {', '.join(missing)} in {region}", "photo-detector setup creates them")
        yield _safely("repositories", repositories)

    if want("images") and spec is not None:
        def images() -> Check:
            from photo_detector.cloud.rollout import resolve_digest

            refs = sorted({e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()
                           if "container" in e} | set(_serve_images(spec)))
            bad = []
            for ref in refs:
                try:
                    resolve_digest(ref)
                except Exception:  # each missing image is named
                    bad.append(ref)
            return Check("images", not bad, f"all {len(refs)} images of the spec exist (the serve image too)"
                         if not bad else "not in the registry: " + ", ".join(bad),
                         "build them: gcloud builds submit --config cloudbuild.yaml --substitutions=_IMAGE_TAG=TAG, "
                         "then submit the template it uploads (--template photo-detector-training:TAG)")
        yield _safely("images", images)

    if want("secrets"):
        def secrets() -> Check:
            sm = clients.get("secret_manager")
            missing = [s for s in (cfg.deploy.api_keys_secret, cfg.deploy.smoke_key_secret)
                       if not _exists(lambda s=s: _call(sm.get_secret, name=f"projects/{project}/secrets/{s}"))]
            if missing:
                return Check("secrets", False, f"missing: {', '.join(missing)}", "photo-detector setup creates them")
            runtime = f"serviceAccount:{ACCOUNTS['runtime'].email(project)}"
            policy = _call(clients.get("resource_manager").get_iam_policy, request={"resource": f"projects/{project}"})
            readers = {m for b in policy.bindings if b.role == "roles/secretmanager.secretAccessor" for m in b.members}
            return Check("secrets", runtime in readers, "both exist and the runtime account can read them"
                         if runtime in readers else f"{runtime} cannot read them",
                         f"gcloud projects add-iam-policy-binding {project} --member {runtime} "
                         "--role roles/secretmanager.secretAccessor")
        yield _safely("secrets", secrets)

    if want("runner roles"):
        def runner_roles() -> Check:
            policy = _call(clients.get("resource_manager").get_iam_policy, request={"resource": f"projects/{project}"})
            member = f"serviceAccount:{settings.service_account or ACCOUNTS['runner'].email(project)}"
            have = {b.role for b in policy.bindings if member in b.members}
            missing = [r for r in ACCOUNTS["runner"].roles if r not in have]
            return Check("runner roles", not missing, f"{member.split(':')[1]} has every role it needs" if not missing
                         else f"{member.split(':')[1]} lacks {', '.join(missing)}",
                         "photo-detector setup grants them (the README lists why each is needed)")
        yield _safely("runner roles", runner_roles)

    if want("storage roles"):
        def storage_roles() -> Check:
            gcs, names = clients.get("storage"), resources(cfg, project)
            missing = [f"{r} on gs://{b} for {_who(m)}" for b, w in sorted(bucket_grants(project, names).items())
                       for r, m in sorted(w - _bucket_bindings(gcs, b))]
            policy = _call(clients.get("resource_manager").get_iam_policy, request={"resource": f"projects/{project}"})
            ours = {f"serviceAccount:{a.email(project)}" for a in ACCOUNTS.values()}
            wide = sorted((b.role, m) for b in policy.bindings if b.role.startswith("roles/storage.")
                          for m in b.members if m in ours)
            if wide:  # every object of the project, the data and every artifact: more than either account needs
                found = ", ".join(f"{r} for {_who(m)}" for r, m in wide)
                return Check("storage roles", False, f"project-wide: {found}",
                             "; ".join(f"gcloud projects remove-iam-policy-binding {project} --member {m} --role {r}"
                                       for r, m in wide) + " (setup grants the bucket-scoped roles instead)")
            return Check("storage roles", not missing, "granted on the buckets only" if not missing else
                         "missing: " + ", ".join(missing), "photo-detector setup grants them on the buckets")
        yield _safely("storage roles", storage_roles)

    if want("permissions"):
        def permissions() -> Check:
            rm = clients.get("resource_manager")
            granted = set(_call(rm.test_iam_permissions, request={
                "resource": f"projects/{project}", "permissions": list(SUBMIT_PERMISSIONS)}).permissions)
            missing = [p for p in SUBMIT_PERMISSIONS if p not in granted]
            return Check("permissions", not missing, "you may submit and schedule runs" if not missing else
                         f"you lack {', '.join(missing)}", "ask for roles/aiplatform.user and "
                         "roles/iam.serviceAccountUser on the runner account")
        yield _safely("permissions", permissions)

    if want("t4 quota"):
        def t4_quota() -> Check:
            q = clients.get("quotas")
            info = _call(q.get_quota_info, name=f"projects/{project}/locations/global/services/"
                                                f"aiplatform.googleapis.com/quotaInfos/{T4_QUOTA}")
            value = max((int(d.details.value) for d in info.dimensions_infos
                         if d.dimensions.get("region") == region), default=0)
            need = cfg.train.gpus  # a multi-GPU train task needs them all at once
            return Check("t4 quota", value >= need, f"{value} T4 GPU(s) for custom training in {region}"
                         + (f" (train.gpus is {need})" if need > 1 else ""),
                         f"request quota {T4_QUOTA} >= {need} for {region} (console: IAM & Admin > Quotas)")
        yield _safely("t4 quota", t4_quota)

    if want("tensorboard"):
        def tensorboard() -> Check:
            from photo_detector.cloud.timeseries import find_tensorboard

            name = cfg.gcp.tensorboard
            found = _call(find_tensorboard, clients.get("tensorboard"), project, region, name) is not None
            return Check("tensorboard", found, f"Vertex AI TensorBoard {name} exists in {region}" if found else
                         f"no Vertex AI TensorBoard named {name} in {region}: runs attached to an experiment "
                         "get no per-epoch time series", "photo-detector setup creates it")
        yield _safely("tensorboard", tensorboard)

    if want("data") and data_uri:
        def data() -> Check:
            from photo_detector import CLASS_NAMES, SPLITS
            from photo_detector.cloud.gcs import split_uri

            if not data_uri.startswith("gs://"):
                return Check("data", False, f"data_uri {data_uri} is not a gs:// URI", "photo-detector data upload")
            bucket, prefix = split_uri(data_uri)
            gcs = clients.get("storage")
            if not _exists(lambda: _call(gcs.get_bucket, bucket)):  # setup creates only the derived bucket
                return Check("data", False, f"gs://{bucket} does not exist", "photo-detector setup creates it"
                             if bucket == data_bucket(project) else f"pass --param data_uri=gs://{data_bucket(project)}"
                             f"/cifake, or gcloud storage buckets create gs://{bucket} --location {region}")
            missing = [f"{s}/{c}" for s in SPLITS for c in CLASS_NAMES if not any(_call(
                gcs.list_blobs, bucket, prefix=f"{prefix}/{s}/{c}/" if prefix else f"{s}/{c}/", max_results=1))]
            return Check("data", not missing, f"{data_uri} has train|val|test/{{real,ai_generated}}" if not missing
                         else f"{data_uri} lacks {', '.join(missing)}",
                         f"photo-detector data upload DIR {data_uri} (after photo-detector data cifake DIR)")
        yield _safely("data", data)
