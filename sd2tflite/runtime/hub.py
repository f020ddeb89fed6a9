"""The Hugging Face Hub from the runtime's side: hf://OWNER/REPO[@REVISION] downloads (cached,
checked against the manifest), and what pushing shares with it: the endpoint, retries with backoff
for transient failures, and one-line error messages that never contain the token.

Imports no TensorFlow; huggingface_hub is imported when a function needs it.
"""

from __future__ import annotations

import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import HubError, ManifestError, SD2TFLiteError, UsageError
from .integrity import ensure_intact

HF_SCHEME = "hf://"
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


def endpoint() -> str:
    # Read at call time (huggingface_hub reads HF_ENDPOINT once, at import).
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


# --------------------------------------------------------------------------------------------------
# Download: hf://OWNER/REPO[@REVISION]


# A revision is a branch, tag or commit (git's ref-name rules, plus refs/pr/N): never a path that
# could leave the Hub cache once huggingface_hub joins it to a folder name.
REVISION_RE = re.compile(r"^(?!.*(?:\.\.|//|@\{|\.lock(?:/|$)|/\.))[A-Za-z0-9_][A-Za-z0-9._/+-]{0,199}(?<![/.])$")


def parse_hf_uri(text: str) -> tuple[str, str | None]:
    rest = text[len(HF_SCHEME):]
    repo_id, _, revision = rest.partition("@")
    if not REPO_ID_RE.match(repo_id) or ("@" in rest and not revision):
        raise UsageError(f"{text!r} is not hf://OWNER/REPO[@REVISION]: e.g. hf://someone/sd-v1-tflite-dynamic@main")
    if revision and not REVISION_RE.match(revision):
        raise UsageError(f"{text!r}: revision {revision!r} is not a branch, tag or commit name (no '..', leading "
                         "'/' or '.', or '//'): e.g. @main or @3f2a9c1")
    return repo_id, revision or None


def _inside_hub_cache(path: Path, text: str) -> Path:
    """The snapshot folder, checked to resolve inside the Hugging Face cache before anything in it
    is opened."""
    from huggingface_hub import constants

    root = Path(constants.HF_HUB_CACHE).resolve()
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(root):
        raise HubError(f"{text} resolves to {resolved}, outside the Hugging Face cache {root}: refusing to use it; "
                       "check the revision after '@'")
    return Path(path)


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
    path = with_retries(
        lambda: snapshot_download(repo_id, repo_type="model", revision=revision, token=token,
                                  endpoint=endpoint()),
        token, f"{text} on {endpoint()}", lambda _m: None, download=True,
    )
    path = _inside_hub_cache(Path(path), text)
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

    causes = list(_causes(exc))
    if any(isinstance(c, OfflineModeIsEnabled) for c in causes):
        return False
    # The host name does not resolve at all (no network, no DNS, a mistyped HF_ENDPOINT): waiting does
    # not change that, so fail at once instead of retrying for a minute. EAI_AGAIN stays transient.
    if any(isinstance(c, socket.gaierror) and c.errno == socket.EAI_NONAME for c in causes):
        return False
    for cause in causes:
        if any(c.__name__ in _TRANSIENT_NAMES for c in type(cause).__mro__):
            return True
        status = _status(cause)
        if status is not None and (status >= 500 or status in (408, 429)):
            return True
    return False


def with_retries(action, token, where, say, count=False, download=False):
    from ..core.signals import interruptible

    attempt = 1
    while True:
        try:
            result = interruptible(action)  # Ctrl-C / SIGTERM stop a stalled upload or download at once
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
            say(f"{scrub(reason, token)[:200]}: retrying in {wait:g} s "
                f"(attempt {attempt + 1}/{RETRY.attempts})")
            time.sleep(wait)
            attempt += 1


def _one_line(exc: BaseException, token: str | None = None) -> str:
    server = getattr(exc, "server_message", None)
    text = server or str(exc) or type(exc).__name__
    return scrub(" ".join(text.split()), token)  # before any caller cuts it short


def scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def _hub_error(exc: BaseException, token: str | None, where: str, attempts: int, download: bool) -> HubError:
    """One line naming the problem and the fix; never the token."""
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    from huggingface_hub.errors import OfflineModeIsEnabled

    status = next((s for s in map(_status, _causes(exc)) if s is not None), None)
    root = list(_causes(exc))[-1]
    offline = download and (os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
                            or any(isinstance(c, OfflineModeIsEnabled) for c in _causes(exc)))
    if offline and not attempts and (status is None or isinstance(exc, LocalEntryNotFoundError)):
        return HubError(f"{where} is not in the Hugging Face cache and offline mode is on (HF_HUB_OFFLINE): "
                        "run once with the network to download it, or pass a local folder")
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
    elif isinstance(root, socket.gaierror):
        message = f"cannot reach {where}: its host name does not resolve ({_one_line(root, token)[:80]}): check " \
                  "the network or HF_ENDPOINT" + (", or pass a local folder" if download else "")
        if download and isinstance(exc, LocalEntryNotFoundError):
            message = f"cannot reach {where} and it is not in the Hugging Face cache (the host name does not " \
                      "resolve): check the network or HF_ENDPOINT, or pass a local folder"
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
    return HubError(scrub(message, token))
