"""What verify-data found: findings (each naming its files), the quarantine and the alignment, as JSON,
Markdown and flat Metrics."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from photo_detector import CLASS_NAMES

REPORT_JSON, REPORT_MD = "verify_report.json", "verify_report.md"
LISTED = 20  # paths per finding in the Markdown report (the JSON report has all)


@dataclass
class Finding:
    check: str
    severity: str  # "error" stops the pipeline, "warning" is reported
    message: str
    paths: list[str] = field(default_factory=list)


@dataclass
class Quarantined:
    """A held-out file left out of the packed data and of evaluation because `twin` shows the same picture."""

    path: str
    split: str
    twin: str
    kind: str  # exact-duplicates | near-duplicates


@dataclass
class VerifyResult:
    root: Path
    out_dir: Path
    digest: str
    counts: dict[str, dict[str, int]]
    findings: list[Finding]
    seconds: float
    formats: dict[str, dict[str, int]] = field(default_factory=dict)
    quarantined: list[Quarantined] = field(default_factory=list)
    shortcut: dict[str, Any] = field(default_factory=dict)  # policy, score before (and after) alignment

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def n_images(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    @property
    def images_per_second(self) -> float:
        return self.n_images / self.seconds if self.seconds else 0.0

    def quarantined_in(self, split: str) -> int:
        return sum(1 for q in self.quarantined if q.split == split)

    def metrics(self) -> dict[str, float]:
        """Flat numbers for a KFP Metrics artifact: counts per split and class, findings, quarantine."""
        out: dict[str, float] = {f"{s}_{c}": float(n) for s, cs in self.counts.items() for c, n in cs.items()}
        out.update(images=float(self.n_images), errors=float(len(self.errors)),
                   warnings=float(len(self.warnings)), images_per_second=self.images_per_second,
                   quarantined=float(len(self.quarantined)),
                   **{f"quarantined_{s}": float(self.quarantined_in(s)) for s in ("val", "test")})
        for key in ("score", "aligned_score"):
            if key in self.shortcut:
                out[f"shortcut_{key}"] = float(self.shortcut[key])
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"root": str(self.root), "digest": self.digest, "passed": not self.errors, "counts": self.counts,
                "formats": self.formats, "errors": len(self.errors), "warnings": len(self.warnings),
                "findings": [asdict(f) for f in self.findings],
                "quarantined": [asdict(q) for q in self.quarantined], "shortcut": self.shortcut,
                "seconds": round(self.seconds, 3)}

    def markdown(self) -> str:
        lines = [f"# Data verification: {'PASSED' if not self.errors else 'FAILED'}", "",
                 f"- dataset: `{self.root}`", f"- digest: `{self.digest}`",
                 f"- images: {self.n_images} in {self.seconds:.1f}s ({self.images_per_second:.0f} img/s)", "",
                 "| split | " + " | ".join(CLASS_NAMES) + " |", "|---|" + "---:|" * len(CLASS_NAMES)]
        lines += [f"| {s} | " + " | ".join(str(c.get(n, 0)) for n in CLASS_NAMES) + " |"
                  for s, c in self.counts.items()]
        lines += ["", "Formats per class: " + "; ".join(
            f"{c}: " + ", ".join(f"{k} {v}" for k, v in sorted(f.items())) for c, f in self.formats.items()), ""]
        if self.shortcut:
            s = self.shortcut
            lines += [f"Format shortcut (`verify.shortcut_policy={s['policy']}`): metadata-only balanced accuracy "
                      f"{s['score']:.2f}" + (f", {s['aligned_score']:.2f} after re-encoding every image as JPEG "
                                             f"quality {s['aligned_quality']}" if "aligned_score" in s else ""), ""]
        if self.quarantined:
            lines += [f"## Quarantined ({len(self.quarantined)}: left out of the packed data and of evaluation)",
                      "", "| held-out file | split | same picture as | how |", "|---|---|---|---|"]
            lines += [f"| `{q.path}` | {q.split} | `{q.twin}` | {q.kind} |" for q in self.quarantined[:200]]
            if len(self.quarantined) > 200:
                lines.append(f"| ... {len(self.quarantined) - 200} more in the JSON report | | | |")
            lines.append("")
        lines += [f"## Findings ({len(self.errors)} errors, {len(self.warnings)} warnings)", ""]
        if not self.findings:
            lines.append("None.")
        for f in self.findings:
            lines.append(f"- **{f.severity}** `{f.check}`: {f.message}")
            lines += [f"  - `{p}`" for p in f.paths[:LISTED]]
            if len(f.paths) > LISTED:
                lines.append(f"  - ... and {len(f.paths) - LISTED} more (see the JSON report)")
        return "\n".join(lines) + "\n"
