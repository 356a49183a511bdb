"""What a Google Cloud project needs for photo-detector: the APIs, the resources (names derived from the project)
and the two service accounts with their roles, each with why. `setup` creates it, `doctor` checks it, and the
README renders the roles table from here (`photo-detector setup --print-roles`), so the three cannot drift."""

from __future__ import annotations

from dataclasses import dataclass, field

from photo_detector.cloud.naming import data_bucket, pipeline_bucket
from photo_detector.config import Config

# API -> why the product needs it.
APIS: dict[str, str] = {
    "aiplatform.googleapis.com": "Vertex AI Pipelines, custom training, Model Registry, Experiments",
    "artifactregistry.googleapis.com": "the image repository and the KFP template repository",
    "cloudbuild.googleapis.com": "builds the images (cloudbuild.yaml)",
    "run.googleapis.com": "the prediction service",
    "secretmanager.googleapis.com": "API-key hashes and the smoke-test key",
    "storage.googleapis.com": "data and pipeline artifacts",
    "iam.googleapis.com": "the two service accounts",
    "cloudresourcemanager.googleapis.com": "role bindings and permission checks",
    "serviceusage.googleapis.com": "enabling and checking these APIs",
    "cloudquotas.googleapis.com": "the T4 quota check",
}


@dataclass(frozen=True)
class Account:
    account_id: str
    display_name: str
    roles: dict[str, str]  # project-level role -> why
    # (bucket key of resources(), role) -> why: storage roles are granted on the bucket that needs them, never on
    # the project (a project-wide storage role reads every object: the data bucket and every artifact)
    bucket_roles: dict[tuple[str, str], str] = field(default_factory=dict)

    def email(self, project: str) -> str:
        return f"{self.account_id}@{project}.iam.gserviceaccount.com"


# The fewest project-level roles that work, and why each is needed.
ACCOUNTS: dict[str, Account] = {
    "runner": Account("photo-detector-pipelines", "photo-detector pipeline runs", {
        "roles/aiplatform.user": "run the pipeline's tasks; read and write ML Metadata and the Model Registry",
        "roles/artifactregistry.reader": "pull the stage images",
        "roles/run.developer": "create and update the Cloud Run service",
        "roles/iam.serviceAccountUser": "deploy the service as the runtime account",
        "roles/secretmanager.secretAccessor": "read the smoke-test key",
    }, {("data bucket", "roles/storage.objectViewer"): "read the data",
        ("pipeline bucket", "roles/storage.objectAdmin"): "write artifacts under the pipeline root (and read them)"}),
    "runtime": Account("photo-detector-service", "photo-detector prediction service", {
        "roles/secretmanager.secretAccessor": "read the API-key hashes",
    }, {("pipeline bucket", "roles/storage.objectViewer"): "read the model it serves (the models only)"}),
}
# What the person who submits runs must be allowed (doctor asks testIamPermissions for these).
SUBMIT_PERMISSIONS = ("aiplatform.pipelineJobs.create", "aiplatform.schedules.create",
                      "iam.serviceAccounts.actAs", "storage.buckets.get")
T4_QUOTA = "CustomModelTrainingNvidiaT4GPUsPerProjectPerRegion"


def resources(cfg: Config, project: str) -> dict[str, str]:
    """Names of everything setup creates, derived from the project (and overridable in the config)."""
    return {
        "data bucket": data_bucket(project),
        "pipeline bucket": pipeline_bucket(project),
        "docker repository": cfg.gcp.docker_repository,
        "kfp repository": cfg.gcp.kfp_repository,
        "api-key secret": cfg.deploy.api_keys_secret,
        "smoke-key secret": cfg.deploy.smoke_key_secret,
    }


def roles_table() -> str:
    """The roles per account as a Markdown table (rendered into the README)."""
    names = resources_for_table()
    lines = ["| account | role | scope | why |", "|---|---|---|---|"]
    for kind, acc in ACCOUNTS.items():
        who = f"{kind}: `{acc.account_id}@PROJECT.iam.gserviceaccount.com`"
        lines += [f"| {who} | `{role}` | project | {why} |" for role, why in acc.roles.items()]
        lines += [f"| {who} | `{role}` | bucket `gs://{names[key]}` | {why} |"
                  for (key, role), why in acc.bucket_roles.items()]
    return "\n".join(lines)


def resources_for_table() -> dict[str, str]:
    return {"data bucket": data_bucket("PROJECT"), "pipeline bucket": pipeline_bucket("PROJECT")}


def bucket_grants(project: str, names: dict[str, str]) -> dict[str, set[tuple[str, str]]]:
    """bucket -> the (role, member) bindings it must hold."""
    grants: dict[str, set[tuple[str, str]]] = {}
    for acc in ACCOUNTS.values():
        for (key, role) in acc.bucket_roles:
            grants.setdefault(names[key], set()).add((role, f"serviceAccount:{acc.email(project)}"))
    return grants
