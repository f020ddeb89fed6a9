"""Publish a converted set to the Hugging Face Hub (`sd2tflite push-hub`).

Imports no TensorFlow; huggingface_hub is imported when a function needs it. Nothing here writes into
the set's directory: the model card is built in memory and uploaded with the files.

A push is plan, then do: `plan_push` checks the set against its manifest, validates the repo id and
builds the card (no network); `push` then creates the repo if needed and uploads everything in ONE
commit. Transient failures (network down, 5xx) are retried with backoff; re-running after an
interrupted push re-uploads only what the Hub does not have yet (the LFS batch step skips objects it
already stores), and the branch only moves when the final commit lands.

The token is resolved once and handed to huggingface_hub, which sends it as an Authorization header.
It is never put into a message, the card or any file; error texts are scrubbed of it just in case.

`push(PushRequest, progress) -> PushResult`, the shape of every command's entry point.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..core.errors import HubError, UsageError
from ..core.manifest import MANIFEST_NAME, VERIFY_REPORT_NAME, path_in_set
from ..core.progress import NO_PROGRESS, Progress
from ..runtime.hub import LOGIN_HINT, REPO_ID_RE, endpoint, with_retries
from ..runtime.integrity import ensure_intact
from .card import CARD_NAME, load_verify_report, model_card


@dataclass(frozen=True)
class PushRequest:
    directory: Path | str  # the converted set
    repo_id: str  # OWNER/NAME on the Hub; created if missing
    token: str | None = field(default=None, repr=False)  # None: HF_TOKEN, then the login; never printed
    private: bool = False  # create the repo private (refuse an existing public one)
    revision: str = "main"  # the branch to commit to (created if missing)
    commit_message: str | None = None  # None: family, precision, file count
    create_pr: bool = False  # open a pull request instead of committing to the branch
    verify_report: Path | str | None = None  # for the card; None: the set's own verify.json if present
    dry_run: bool = False  # plan and card only: no network


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
# Push


def validate_repo_id(repo_id: str) -> str:
    if not isinstance(repo_id, str) or not REPO_ID_RE.match(repo_id) or repo_id.endswith(".git"):
        raise UsageError(
            f"--repo-id {repo_id!r} is not a Hub repo id: use OWNER/NAME (letters, digits, '-', '_', '.'; "
            "at most 96 characters each), e.g. someone/sd-v1-tflite-dynamic"
        )
    return repo_id


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


def plan_push(request: PushRequest) -> tuple[PushPlan, str | None]:
    """Check the set and build the card; no network. Returns the plan and the token (kept out of it)."""
    directory, repo_id, revision = Path(request.directory), request.repo_id, request.revision
    validate_repo_id(repo_id)
    if not revision or any(c.isspace() for c in revision):
        raise UsageError(f"--revision {revision!r} is not a branch name: e.g. --revision main")
    manifest = ensure_intact(directory)  # refuse a set that does not match its manifest
    report, report_path = load_verify_report(directory, request.verify_report)
    card = model_card(directory, manifest, report, repo_id)
    files = [(a.path, a.bytes) for a in manifest.artifacts]
    files += [(r["path"], r["bytes"]) for r in manifest.compiled]  # `sd2tflite compile`'s NPU files
    files.append((MANIFEST_NAME, (directory / MANIFEST_NAME).stat().st_size))
    own_report = report_path if report_path is not None and report_path.parent.resolve() == directory.resolve() \
        and report_path.name == VERIFY_REPORT_NAME else None
    if own_report is not None:
        files.append((VERIFY_REPORT_NAME, own_report.stat().st_size))
    files.append((CARD_NAME, len(card.encode())))
    message = request.commit_message or (
        f"Upload {manifest.family} {manifest.quant} LiteRT set ({len(manifest.artifacts)} files) "
        f"with sd2tflite {__version__}"
    )
    resolved, source = resolve_token(request.token, offline=request.dry_run)
    plan = PushPlan(directory, repo_id, revision, request.private, request.create_pr, message, endpoint(),
                    tuple(files), card, source, own_report)
    return plan, resolved


def _operations(plan: PushPlan) -> list:
    """Fresh CommitOperationAdd objects (huggingface_hub refuses to reuse them across attempts)."""
    from huggingface_hub import CommitOperationAdd

    ops = []
    for path, _ in plan.files:
        if path == CARD_NAME:
            ops.append(CommitOperationAdd(path_in_repo=CARD_NAME, path_or_fileobj=plan.card.encode()))
        else:
            # Only files of the set (links that leave it are refused), as they were checked.
            ops.append(CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(path_in_set(plan.directory, path))))
    return ops


def push(request: PushRequest, progress: Progress | None = None) -> PushResult:
    """Upload a converted set and its model card in one commit; create the repo if it is missing.
    A dry run returns the plan only. progress: notes (the repo, the upload, each retry)."""
    plan, token = plan_push(request)
    if request.dry_run:
        return PushResult(plan, None, None, None, 0)
    if not token:
        raise HubError(f"no Hugging Face token to upload with: {LOGIN_HINT}")
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        raise HubError("HF_HUB_OFFLINE is set, so nothing can be uploaded: unset it, or use --dry-run")
    say = (progress or NO_PROGRESS).note

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
    with_retries(prepare, token, where, say)
    total = sum(size for _, size in plan.files)
    say(f"uploading {len(plan.files)} files ({total:,} bytes) to {plan.repo_id}@{plan.revision} in one commit")
    info, attempts = with_retries(
        lambda: api.create_commit(plan.repo_id, operations=_operations(plan), commit_message=plan.commit_message,
                                  repo_type="model", revision=plan.revision, create_pr=plan.create_pr),
        token, where, say, count=True,
    )
    url = info.pr_url or (f"{plan.endpoint}/{plan.repo_id}" if plan.revision == "main"
                          else f"{plan.endpoint}/{plan.repo_id}/tree/{plan.revision}")
    return PushResult(plan, url, info.commit_url, info.oid, attempts)

