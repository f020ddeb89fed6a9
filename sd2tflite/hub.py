"""Publish a converted set to the Hugging Face Hub, and fetch one back from hf://OWNER/REPO[@REVISION].

Imports no TensorFlow; huggingface_hub is imported when a function needs it. Nothing here writes into
the set's directory: the model card is built in memory and uploaded with the files.

A push is plan, then do: `plan_push` checks the set against its manifest, validates the repo id and
builds the card (no network); `push` then creates the repo if needed and uploads everything in ONE
commit. Transient failures (network down, 5xx) are retried with backoff; re-running after an
interrupted push re-uploads only what the Hub does not have yet (the LFS batch step skips objects it
already stores), and the branch only moves when the final commit lands.

The token is resolved once and handed to huggingface_hub, which sends it as an Authorization header.
It is never put into a message, the card or any file; error texts are scrubbed of it just in case.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import __version__
from .components import FAMILIES
from .errors import HubError, ManifestError, SD2TFLiteError, UsageError
from .integrity import ensure_intact
from .manifest import MANIFEST_NAME, VERIFY_REPORT_NAME, Manifest

HF_SCHEME = "hf://"
CARD_NAME = "README.md"
DEFAULT_ENDPOINT = "https://huggingface.co"
LOGIN_HINT = "run `hf auth login` (or `huggingface-cli login`), set HF_TOKEN, or pass --token"

# Hub names: letters, digits, '-', '_', '.'; no leading/trailing '-' or '.', no '--' or '..', <= 96.
_NAME = r"(?!.*(?:--|\.\.))[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
REPO_ID_RE = re.compile(rf"^{_NAME}/{_NAME}$")


@dataclass(frozen=True)
class Retry:
    """How often and how patiently transient failures (network, 5xx, 429) are retried."""

    attempts: int = 4
    first_wait: float = 2.0  # seconds; doubles each time

    def wait(self, attempt: int) -> float:
        return self.first_wait * 2 ** (attempt - 1)


RETRY = Retry()  # tests make it fast


@dataclass(frozen=True)
class PushPlan:
    """What a push will do. Plain data: --dry-run prints it. Holds no token."""

    directory: Path
    repo_id: str
    revision: str
    private: bool
    create_pr: bool
    commit_message: str
    endpoint: str
    files: tuple[tuple[str, int], ...]  # (path in repo, bytes), card and manifest included
    card: str
    token_source: str  # "--token" | "HF_TOKEN" | "huggingface_hub login" | "" (none found)
    verify_report: Path | None  # the set's own verify.json when it is uploaded too

    def describe(self) -> str:
        total = sum(size for _, size in self.files)
        visibility = "private" if self.private else "the account's default visibility"
        lines = [
            f"create repo {self.repo_id} on {self.endpoint} if missing ({visibility})",
        ]
        if self.revision != "main":
            lines.append(f"create branch {self.revision} from main if missing")
        target = f"a pull request against {self.revision}" if self.create_pr else self.revision
        lines.append(f"one commit to {target}: {self.commit_message!r}, {len(self.files)} files, {total:,} bytes")
        lines += [f"  add {path:32s} {size:>15,} bytes" for path, size in self.files]
        token = f"from {self.token_source}" if self.token_source else f"none found ({LOGIN_HINT})"
        lines.append(f"token: {token}")
        return "\n".join(lines)


@dataclass(frozen=True)
class PushResult:
    plan: PushPlan
    url: str | None  # the repo (or PR) page; None for a dry run
    commit_url: str | None
    commit_oid: str | None
    attempts: int  # network attempts the commit took (1 when nothing had to be retried)


# --------------------------------------------------------------------------------------------------
# The model card


def load_verify_report(directory: Path, path: Path | str | None = None) -> tuple[dict | None, Path | None]:
    """The verify report to show in the card: PATH if given, else DIR/verify.json if present."""
    explicit = path is not None
    path = Path(path) if explicit else Path(directory) / VERIFY_REPORT_NAME
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
        from .weights import sha256_file

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


def _base_models(manifest: Manifest) -> list[str]:
    """The Hub repos the weights came from (keras-cv's ports), from the manifest's weight identities."""
    repos = []
    for identity in manifest.weights.values():
        repo = identity.get("repo_id") if isinstance(identity, dict) and identity.get("kind") == "hub" else None
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
    if kind == "file":
        return f"- {component}: local file `{Path(str(identity.get('path', ''))).name}`{sha}"
    return f"- {component}: {json.dumps(identity)}"


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


# --------------------------------------------------------------------------------------------------
# Push


def validate_repo_id(repo_id: str) -> str:
    if not isinstance(repo_id, str) or not REPO_ID_RE.match(repo_id) or repo_id.endswith(".git"):
        raise UsageError(
            f"--repo-id {repo_id!r} is not a Hub repo id: use OWNER/NAME (letters, digits, '-', '_', '.'; "
            "at most 96 characters each), e.g. someone/sd-v1-tflite-dynamic"
        )
    return repo_id


def _endpoint() -> str:
    # Read at call time (huggingface_hub reads HF_ENDPOINT once, at import).
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def resolve_token(token: str | None, offline: bool = False) -> tuple[str | None, str]:
    """(token, where it came from): --token, then HF_TOKEN, then the huggingface_hub login.

    offline (dry runs): do not let huggingface_hub refresh an OAuth token or exchange an OIDC one.
    """
    if token:
        return token, "--token"
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"], "HF_TOKEN"
    if offline:
        from huggingface_hub import constants

        if os.environ.get("HF_OIDC_RESOURCE"):
            return None, "HF_OIDC_RESOURCE (exchanged for a token when pushing)"
        return None, ("huggingface_hub login" if Path(constants.HF_TOKEN_PATH).is_file() else "")
    try:
        from huggingface_hub import get_token

        stored = get_token()
    except Exception as exc:  # noqa: BLE001 - e.g. an OIDC exchange failing
        raise HubError(f"could not read the Hugging Face login ({type(exc).__name__}): {LOGIN_HINT}") from exc
    return (stored, "huggingface_hub login") if stored else (None, "")


def plan_push(directory: Path | str, repo_id: str, *, token: str | None = None, private: bool = False,
              revision: str = "main", commit_message: str | None = None, create_pr: bool = False,
              verify_report: Path | str | None = None, dry_run: bool = False) -> tuple[PushPlan, str | None]:
    """Check the set and build the card; no network. Returns the plan and the token (kept out of it)."""
    directory = Path(directory)
    validate_repo_id(repo_id)
    if not revision or any(c.isspace() for c in revision):
        raise UsageError(f"--revision {revision!r} is not a branch name: e.g. --revision main")
    manifest = ensure_intact(directory)  # refuse a set that does not match its manifest
    report, report_path = load_verify_report(directory, verify_report)
    card = model_card(directory, manifest, report, repo_id)
    files = [(a.path, a.bytes) for a in manifest.artifacts]
    files.append((MANIFEST_NAME, (directory / MANIFEST_NAME).stat().st_size))
    own_report = report_path if report_path is not None and report_path.parent.resolve() == directory.resolve() \
        and report_path.name == VERIFY_REPORT_NAME else None
    if own_report is not None:
        files.append((VERIFY_REPORT_NAME, own_report.stat().st_size))
    files.append((CARD_NAME, len(card.encode())))
    message = commit_message or (
        f"Upload {manifest.family} {manifest.quant} LiteRT set ({len(manifest.artifacts)} files) "
        f"with sd2tflite {__version__}"
    )
    resolved, source = resolve_token(token, offline=dry_run)
    plan = PushPlan(directory, repo_id, revision, private, create_pr, message, _endpoint(), tuple(files),
                    card, source, own_report)
    return plan, resolved


def _operations(plan: PushPlan) -> list:
    """Fresh CommitOperationAdd objects (huggingface_hub refuses to reuse them across attempts)."""
    from huggingface_hub import CommitOperationAdd

    ops = []
    for path, _ in plan.files:
        if path == CARD_NAME:
            ops.append(CommitOperationAdd(path_in_repo=CARD_NAME, path_or_fileobj=plan.card.encode()))
        else:
            ops.append(CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(plan.directory / path)))
    return ops


def push(directory: Path | str, repo_id: str, *, token: str | None = None, private: bool = False,
         revision: str = "main", commit_message: str | None = None, create_pr: bool = False,
         dry_run: bool = False, verify_report: Path | str | None = None,
         progress: Callable[[str], None] | None = None) -> PushResult:
    """Upload a converted set and its model card in one commit; create the repo if it is missing."""
    plan, token = plan_push(directory, repo_id, token=token, private=private, revision=revision,
                            commit_message=commit_message, create_pr=create_pr, verify_report=verify_report,
                            dry_run=dry_run)
    if dry_run:
        return PushResult(plan, None, None, None, 0)
    if not token:
        raise HubError(f"no Hugging Face token to upload with: {LOGIN_HINT}")
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        raise HubError("HF_HUB_OFFLINE is set, so nothing can be uploaded: unset it, or use --dry-run")
    say = progress or (lambda _message: None)

    from huggingface_hub import HfApi

    api = HfApi(endpoint=plan.endpoint, token=token, library_name="sd2tflite", library_version=__version__)
    where = f"{plan.repo_id} on {plan.endpoint}"

    def prepare():
        api.create_repo(plan.repo_id, repo_type="model", private=True if plan.private else None, exist_ok=True)
        if plan.private and not api.repo_info(plan.repo_id, repo_type="model").private:
            raise HubError(f"{plan.repo_id} already exists and is public, and --private only applies to new "
                           "repos: make it private in its settings on the Hub, or drop --private")
        if plan.revision != "main":
            api.create_branch(plan.repo_id, branch=plan.revision, repo_type="model", exist_ok=True)

    say(f"creating {where} if missing")
    _with_retries(prepare, token, where, say)
    total = sum(size for _, size in plan.files)
    say(f"uploading {len(plan.files)} files ({total:,} bytes) to {plan.repo_id}@{plan.revision} in one commit")
    info, attempts = _with_retries(
        lambda: api.create_commit(plan.repo_id, operations=_operations(plan), commit_message=plan.commit_message,
                                  repo_type="model", revision=plan.revision, create_pr=plan.create_pr),
        token, where, say, count=True,
    )
    url = info.pr_url or (f"{plan.endpoint}/{plan.repo_id}" if plan.revision == "main"
                          else f"{plan.endpoint}/{plan.repo_id}/tree/{plan.revision}")
    return PushResult(plan, url, info.commit_url, info.oid, attempts)


# --------------------------------------------------------------------------------------------------
# Download: hf://OWNER/REPO[@REVISION]


def parse_hf_uri(text: str) -> tuple[str, str | None]:
    rest = text[len(HF_SCHEME):]
    repo_id, _, revision = rest.partition("@")
    if not REPO_ID_RE.match(repo_id) or ("@" in rest and not revision):
        raise UsageError(f"{text!r} is not hf://OWNER/REPO[@REVISION]: e.g. hf://someone/sd-v1-tflite-dynamic@main")
    return repo_id, revision or None


def resolve_model_dir(text: str, token: str | None = None) -> Path:
    """A local folder for a converted set: TEXT itself, or hf://OWNER/REPO[@REV] downloaded and checked.

    Downloads go to the Hugging Face cache (HF_HOME / HF_HUB_CACHE), so a second run is offline; the
    snapshot is checked against its manifest before it is used.
    """
    text = str(text)
    if not text.startswith(HF_SCHEME):
        return Path(text)
    repo_id, revision = parse_hf_uri(text)
    from huggingface_hub import snapshot_download

    token = token or os.environ.get("HF_TOKEN") or None  # None: huggingface_hub's own login, if any
    path = _with_retries(
        lambda: snapshot_download(repo_id, repo_type="model", revision=revision, token=token,
                                  endpoint=_endpoint()),
        token, f"{text} on {_endpoint()}", lambda _m: None, download=True,
    )
    path = Path(path)
    try:
        ensure_intact(path, reuse_hashes=True)  # generate/bench check it again, from the hash cache
    except ManifestError as exc:
        raise ManifestError(f"{text} does not match its manifest, refusing to use it: {exc}") from exc
    return path


# --------------------------------------------------------------------------------------------------
# Retries and error messages


def _causes(exc: BaseException):
    seen = 0
    while exc is not None and seen < 8:
        yield exc
        exc = exc.__cause__ or exc.__context__
        seen += 1


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


# Network failures by class name: huggingface_hub 2.x raises httpx2's, 1.x httpx's, 0.x requests'.
_TRANSIENT_NAMES = {"TransportError", "ConnectionError", "TimeoutError", "Timeout", "TimeoutException"}


def _is_transient(exc: BaseException) -> bool:
    from huggingface_hub.errors import OfflineModeIsEnabled

    for cause in _causes(exc):
        if isinstance(cause, OfflineModeIsEnabled):
            return False
        if any(c.__name__ in _TRANSIENT_NAMES for c in type(cause).__mro__):
            return True
        status = _status(cause)
        if status is not None and (status >= 500 or status in (408, 429)):
            return True
    return False


def _with_retries(action, token, where, say, count=False, download=False):
    attempt = 1
    while True:
        try:
            result = action()
            return (result, attempt) if count else result
        except SD2TFLiteError:
            raise
        except Exception as exc:  # noqa: BLE001 - every Hub failure becomes one HubError line
            transient = _is_transient(exc)
            if not transient or attempt >= RETRY.attempts:
                raise _hub_error(exc, token, where, attempt if transient else 0, download) from exc
            wait = RETRY.wait(attempt)
            root = list(_causes(exc))[-1]
            reason = _one_line(exc, token) + (f" ({_one_line(root, token)})" if root is not exc else "")
            say(f"{_scrub(reason, token)[:200]}: retrying in {wait:g} s "
                f"(attempt {attempt + 1}/{RETRY.attempts})")
            time.sleep(wait)
            attempt += 1


def _one_line(exc: BaseException, token: str | None = None) -> str:
    server = getattr(exc, "server_message", None)
    text = server or str(exc) or type(exc).__name__
    return _scrub(" ".join(text.split()), token)  # before any caller cuts it short


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def _hub_error(exc: BaseException, token: str | None, where: str, attempts: int, download: bool) -> HubError:
    """One line naming the problem and the fix; never the token."""
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    status = next((s for s in map(_status, _causes(exc)) if s is not None), None)
    root = list(_causes(exc))[-1]
    again = "re-run the same command (files the Hub already has are not uploaded again)" if not download \
        else "try again later (or use a local folder)"
    if attempts and status:
        message = f"the Hub kept failing for {where} (HTTP {status}, {attempts} attempts): it may be down or " \
                  f"overloaded; wait a little, then {again}"
    elif attempts:
        what = f"{type(root).__name__}: {_one_line(root, token)[:100]}"
        message = f"could not reach {where} ({what}) after {attempts} attempts: check the network or HF_ENDPOINT, " \
                  f"then {again}"
        if download and isinstance(exc, LocalEntryNotFoundError):
            message = f"cannot reach {where} and it is not in the Hugging Face cache ({what}): check the network, " \
                      f"then try again"
    elif isinstance(exc, RevisionNotFoundError):
        message = f"{where}: no such revision: check the branch, tag or commit after '@' (or --revision)"
    elif status == 401 and not download:
        message = (f"the Hub rejected the token (401) for {where}: it is invalid or expired; {LOGIN_HINT} "
                   "with a token that can write")
    elif status == 403:
        message = (f"the token may not read {where} (403): use a token with read access to it" if download else
                   f"the token may not write to {where} (403): use a token with write access to that namespace "
                   "(https://huggingface.co/settings/tokens), or another --repo-id")
    elif isinstance(exc, RepositoryNotFoundError) or status in (401, 404):
        message = (f"{where} does not exist or is private (HTTP {status}): check the repo id; if it is private, "
                   f"{LOGIN_HINT}")
    elif isinstance(exc, RuntimeError) and "uploading" in str(exc):
        message = f"upload to {where} was interrupted ({_one_line(exc, token)}: {_one_line(root, token)[:100]}): {again}"
    elif status is not None:
        message = f"the Hub refused the request for {where} (HTTP {status}: {_one_line(exc, token)[:160]}): {again}"
    else:
        message = f"{'download' if download else 'upload'} failed for {where} ({type(exc).__name__}: " \
                  f"{_one_line(exc, token)[:160]}): {again}"
    return HubError(_scrub(message, token))
