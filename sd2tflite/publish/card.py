"""The model card (README.md) of a published set: Hub metadata, files, signatures, the verify
report, how to run it and how it was made. Built in memory from the manifest; writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import UsageError
from ..core.fsutil import sha256_file
from ..core.manifest import MANIFEST_NAME, VERIFY_REPORT_NAME, Manifest, path_in_set
from ..core.registry import FAMILIES

CARD_NAME = "README.md"


def load_verify_report(directory: Path, path: Path | str | None = None) -> tuple[dict | None, Path | None]:
    """The verify report to show in the card: PATH if given, else DIR/verify.json if present."""
    explicit = path is not None
    path = Path(path) if explicit else Path(directory) / VERIFY_REPORT_NAME
    if not explicit and path.is_file():
        path = path_in_set(directory, VERIFY_REPORT_NAME)  # uploaded with the set: a link out is refused
    if not path.is_file():
        if explicit:
            raise UsageError(f"--verify-report {path} does not exist: run sd2tflite verify DIR --json {path}")
        return None, None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path} is not a verify report ({type(exc).__name__}): run sd2tflite verify DIR "
                         f"--json {path} again, or move it away") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{path} is not a verify report (not a JSON object): run sd2tflite verify DIR "
                         f"--json {path} again")
    recorded = data.get("manifest_sha256")
    current = Path(directory) / MANIFEST_NAME
    if recorded and current.is_file():
        if sha256_file(current) != recorded:
            raise UsageError(f"{path} reports on other files than {directory} holds now: run sd2tflite "
                             f"verify {directory} --json {path} again")
    return data, path


def _yaml_str(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid YAML scalar, quoting included


def _fmt_figure(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt_figure(v) for v in value) + "]"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt_figure(v)}" for k, v in value.items())
    return str(value)


def _cell(text) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _specs(specs) -> str:
    return ", ".join(f"`{s.name}` {s.dtype}{list(s.shape)}" for s in specs)


def _verify_section(report: dict | None, repo_id: str) -> list[str]:
    if report is None:
        return [
            "This set was not verified before upload. To check it (integrity, parity with the Keras model, "
            "end to end), run:",
            "",
            "```sh",
            f"sd2tflite verify hf://{repo_id}",
            "```",
            "",
            "or `sd2tflite verify DIR --json DIR/verify.json` on the converted folder before `push-hub`.",
        ]
    checks = report.get("checks") if isinstance(report.get("checks"), list) else []
    passed = report.get("passed")
    verdict = {True: "**passed**", False: "**FAILED**"}.get(passed, "did not record a verdict")
    lines = [f"`sd2tflite verify` {verdict} ({len(checks)} checks) before upload.", ""]
    if checks:
        lines += ["| group | check | result | detail | figures |", "|---|---|---|---|---|"]
        for check in checks:
            if not isinstance(check, dict):
                continue
            ok = {True: "pass", False: "FAIL"}.get(check.get("passed"), "?")
            figures = check.get("figures") if isinstance(check.get("figures"), dict) else {}
            lines.append(
                f"| {_cell(check.get('group', ''))} | {_cell(check.get('name', ''))} | {ok} | "
                f"{_cell(check.get('detail', ''))} | {_cell(_fmt_figure(figures)) if figures else ''} |"
            )
    return lines


def _accelerator_section(manifest: Manifest, report: dict | None) -> list[str]:
    """What real accelerators take of each file, as measured: verify's accelerator report (NPU by the AOT
    compiler's partitioning, GPU by LiteRT.js's WebGPU accelerator) and the NPU files `sd2tflite compile`
    made. A file nothing measured says "not measured"; no static analyzer's "compatible"."""
    measured = report.get("accelerators") if isinstance(report, dict) else None
    blocks = measured.get("accelerators") if isinstance(measured, dict) else None
    paths = [a.path for a in manifest.artifacts]
    lines = ["Measured placement per file (ops on the accelerator / all ops, partitions; each partition "
             "boundary is a hand-over to the CPU). Information: a file runs whole on the CPU either way.", ""]
    columns = []
    for block in blocks if isinstance(blocks, list) else []:
        if isinstance(block, dict) and isinstance(block.get("files"), list):
            columns.append((str(block.get("accelerator", "?")),
                            {f.get("path"): f for f in block["files"] if isinstance(f, dict)}))
    if not columns:
        columns = [("NPU", {}), ("GPU", {})]
    lines += ["| file | " + " | ".join(_cell(title) for title, _ in columns) + " |",
              "|---|" + "---|" * len(columns)]

    def cell(found: dict | None) -> str:
        if not found or not found.get("measured"):
            why = found.get("reason") if found else "verify did not measure it"
            return _cell(f"not measured: {why}")
        text = f"{found.get('ops_placed', 0):,}/{found.get('ops_total', 0):,}, {found.get('partitions', 0)} partition" \
               f"{'' if found.get('partitions') == 1 else 's'}"
        rejected = found.get("rejected") if isinstance(found.get("rejected"), list) else []
        if rejected:
            text += "; rejected: " + "; ".join(f"{r.get('op')} ×{r.get('count')}"
                                               for r in rejected if isinstance(r, dict))
        return _cell(text)

    for path in paths:
        lines.append(f"| `{path}` | " + " | ".join(cell(files.get(path)) for _, files in columns) + " |")
    if manifest.compiled:
        lines += ["", "Compiled ahead of time for NPUs (`sd2tflite compile`; these files run only on the SoC "
                  "they were compiled for, through LiteRT's NPU accelerator; numerics on the NPU are "
                  "checked on the device, not here):", "",
                  "| file | target | from | bytes | NPU ops | partitions | sha256 |", "|---|---|---|---|---|---|---|"]
        for r in manifest.compiled:
            part = r.get("partition") or {}
            lines.append(f"| `{r['path']}` | {r['target']} ({r['optimization_level']}) | `{r['source']}` | "
                         f"{r['bytes']:,} | {part.get('npu_ops', '?')}/{part.get('total_ops', '?')} | "
                         f"{part.get('partitions', '?')} | `{r['sha256']}` |")
    return lines


def _base_models(manifest: Manifest) -> list[str]:
    """The Hub repos the weights came from (keras-cv's ports), from the manifest's weight identities."""
    repos = []
    for identity in manifest.weights.values():
        if not isinstance(identity, dict):
            continue
        repo = identity.get("repo_id") if identity.get("kind") == "hub" else None
        if identity.get("kind") == "checkpoint" and str(identity.get("hub", "")).startswith("hf://"):
            repo = identity["hub"][len("hf://"):].partition("@")[0]
        if isinstance(repo, str) and repo not in repos:
            repos.append(repo)
    return repos


def _weights_line(component: str, identity) -> str:
    if not isinstance(identity, dict):
        return f"- {component}: {identity}"
    kind = identity.get("kind")
    sha = f", sha256 `{identity['sha256']}`" if identity.get("sha256") else ""
    if kind == "hub":
        return f"- {component}: Hub `{identity.get('repo_id')}` / `{identity.get('filename')}`{sha}"
    if kind == "random":
        return f"- {component}: random weights, seed {identity.get('seed')} (not a usable image model)"
    if kind == "trained":
        return (f"- {component}: sd2tflite's trained `{identity.get('file')}` (draws the shapes captions of "
                f"`sd2tflite/verify/shapes.py`){sha}")
    if kind == "file":
        return f"- {component}: local file `{Path(str(identity.get('path', ''))).name}`{sha}"
    if kind == "checkpoint":
        files = ", ".join(f"`{Path(str(f.get('path', ''))).name}` (sha256 `{f.get('sha256')}`)"
                          for f in identity.get("files", []) if f.get("component") == _GROUP.get(component))
        where = identity.get("hub") or Path(str(identity.get("path", ""))).name
        ema = {True: ", EMA weights", False: ", raw (non-EMA) weights"}.get(identity.get("ema"), "")
        loras = "".join(f"; LoRA `{Path(str(lora.get('path', ''))).name}` × {lora.get('scale')} "
                        f"(sha256 `{lora.get('sha256')}`)" for lora in identity.get("loras", []))
        return (f"- {component}: PyTorch checkpoint `{where}` ({identity.get('source_format')}, SD "
                f"{'1.x' if identity.get('family') == 'v1' else '2.x'}, {identity.get('prediction_type')}"
                f"{ema}): {files or 'see manifest.json'}{loras}")
    return f"- {component}: {json.dumps(identity)}"


_GROUP = {"text_encoder": "text_encoder", "diffusion": "unet", "decoder": "vae", "image_encoder": "vae"}


def model_card(directory: Path, manifest: Manifest, verify_report: dict | None, repo_id: str) -> str:
    """README.md for the Hub: YAML metadata, then files, signatures, verify figures, usage, provenance."""
    family = FAMILIES.get(manifest.family)
    license_ = family.license if family else None
    tags = ["tflite", "litert", "stable-diffusion", "keras-cv", "text-to-image", "sd2tflite", manifest.quant]
    base = _base_models(manifest)
    # "litert" is the Hub's library key for LiteRT: it labels the repo and counts downloads of *.tflite
    # (huggingface.js model-libraries.ts); an unknown key would count none.
    meta = ["---", "library_name: litert"]
    if license_:
        meta.append(f"license: {license_}")
    meta += ["pipeline_tag: text-to-image", "tags:"] + [f"- {_yaml_str(t)}" for t in tags]
    if base:
        meta += ["base_model:"] + [f"- {_yaml_str(b)}" for b in base]
    meta.append("---")

    description = family.description if family else manifest.family
    total = sum(a.bytes for a in manifest.artifacts)
    dims = manifest.dims
    body = [
        "",
        f"# {repo_id.split('/')[-1]}",
        "",
        f"{description}, converted to LiteRT (TFLite) by sd2tflite "
        f"{manifest.versions.get('sd2tflite', '')}: precision **{manifest.quant}**, "
        f"{len(manifest.artifacts)} files, {total:,} bytes. Every file has static shapes "
        f"(batch {dims.get('batch_size', '?')}, {dims.get('img_height', '?')}x{dims.get('img_width', '?')} "
        "images) and TFLite builtin ops only; `manifest.json` lists each file's sha256, signature and how "
        "the UNet parts are wired.",
        "",
    ]
    if license_:
        body += [f"The weights keep the license of the source model: `{license_}`.", ""]
    else:
        body += ["The source weights carry no license (random or locally built weights).", ""]

    body += ["## Files", "", "| file | component | part | bytes | parameters | sha256 |", "|---|---|---|---|---|---|"]
    for a in manifest.artifacts:
        body.append(f"| `{a.path}` | {a.component} | {a.part + 1}/{a.num_parts} | {a.bytes:,} | {a.params:,} "
                    f"| `{a.sha256}` |")
    body += ["", "## Signatures", ""]
    for a in manifest.artifacts:
        wired = {k: v for k, v in a.wiring.items() if v is not None}
        from_parts = f" (from earlier parts: {', '.join(f'`{k}`<-part {v + 1}' for k, v in wired.items())})" \
            if wired else ""
        body.append(f"- `{a.path}` `{a.signature_key}`: {_specs(a.inputs)} -> {_specs(a.outputs)}{from_parts}")

    body += ["", "## Verification", ""] + _verify_section(verify_report, repo_id)
    body += ["", "## Accelerators", ""] + _accelerator_section(manifest, verify_report)
    body += [
        "",
        "## Use",
        "",
        "```sh",
        "# with sd2tflite installed (it needs ai-edge-litert, not TensorFlow, to run the files)",
        f"sd2tflite generate hf://{repo_id} \"a photograph of an astronaut riding a horse\" -o astronaut.png",
        f"sd2tflite verify hf://{repo_id}",
        "```",
        "",
        f"`hf://{repo_id}[@REVISION]` downloads the set into the Hugging Face cache once, checks every file "
        "against `manifest.json`, then runs it with ai-edge-litert (no TensorFlow needed). "
        "See `sd2tflite generate --help` for the options.",
        "",
        "## How it was made",
        "",
        "```sh",
        manifest.command or "(command line not recorded)",
        "```",
        "",
    ]
    if manifest.created:
        body += [f"Converted {manifest.created}.", ""]
    body += ["Versions: " + ", ".join(f"{k} {v}" for k, v in manifest.versions.items()), "", "Weights:", ""]
    body += [_weights_line(c, i) for c, i in manifest.weights.items()]
    if manifest.split:
        body += ["", f"UNet split plan: `{json.dumps(manifest.split, sort_keys=True)}`"]
    return "\n".join(meta + body) + "\n"

