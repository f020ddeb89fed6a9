"""push-hub and hf:// against a local fake Hub: the real huggingface_hub client, a real (tiny) LiteRT set.

The fake Hub (127.0.0.1, ephemeral port, one per test) implements what huggingface_hub 2.x calls for
create_repo, create_branch, the README metadata check, preupload, the LFS batch API, LFS PUTs, the
commit, model info, the tree listing and file resolve, and records every request. Xet is switched off
for these tests (its CAS protocol is not emulated), so uploads take the LFS path.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
import yaml

from sd2tflite.publish import card as hub_card
from sd2tflite.publish import push as hub_push
from sd2tflite.publish.push import PushRequest
from sd2tflite.runtime import hub as hub_fetch
from sd2tflite.core.errors import HubError, ManifestError, UsageError

from .conftest import assert_one_line_error, run

TOKEN = "hf_testTOKEN0123456789abcdefSECRET"
REPO = "someone/sd-v1-tflite-dynamic"


# --------------------------------------------------------------------------------------------------
# A fake Hub


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    def __init__(self):
        self.requests: list[dict] = []
        self.failures: list[dict] = []
        self.repos: dict[str, dict] = {}
        self.lfs: dict[str, bytes] = {}  # sha256 -> content
        self.commits: list[dict] = []  # commits made through the commit endpoint
        self.lock = threading.Lock()
        self.url = ""

    def fail(self, method: str, pattern: str, action, times: int = 1) -> None:
        """Answer the next `times` matching requests with an HTTP status, or "drop" the connection."""
        self.failures.append({"method": method, "pattern": re.compile(pattern), "action": action, "times": times})

    def tree(self, repo_id: str, rev: str = "main") -> dict[str, dict]:
        repo = self.repos[repo_id]
        sha = repo["branches"].get(rev, rev)
        return repo["trees"][sha]

    def content(self, entry: dict) -> bytes:
        return self.lfs[entry["sha256"]] if entry["lfs"] else entry["data"]

    def posts(self, pattern: str) -> list[dict]:
        return [r for r in self.requests if re.search(pattern, r["path"])]


def _new_tree_commit(repo: dict, parent: str | None, tree: dict, summary: str) -> str:
    sha = hashlib.sha1(f"{parent}:{summary}:{sorted((p, e['oid']) for p, e in tree.items())}".encode()).hexdigest()
    repo["trees"][sha] = tree
    return sha


def _entry(data: bytes, lfs: bool) -> dict:
    if lfs:
        sha = hashlib.sha256(data).hexdigest()
        return {"lfs": True, "sha256": sha, "size": len(data), "oid": _git_sha1(b"lfs pointer " + sha.encode())}
    return {"lfs": False, "data": data, "size": len(data), "oid": _git_sha1(data)}


class Handler(BaseHTTPRequestHandler):
    server_version = "FakeHub/1"
    hub: FakeHub  # set per server

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        self._handle()

    do_HEAD = do_POST = do_PUT = do_GET

    # -- plumbing
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, payload=None, headers: dict | None = None, raw: bytes | None = None):
        body = raw if raw is not None else (b"" if payload is None else json.dumps(payload).encode())
        self.send_response(status)
        if raw is None:
            self.send_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str, code: str | None = None):
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, {"error": message}, headers)

    def _handle(self):
        hub = self.hub
        body = self._body()
        path = urlsplit(self.path).path
        with hub.lock:
            headers = {k.lower(): v for k, v in self.headers.items()}
            hub.requests.append({"method": self.command, "path": self.path, "headers": headers, "body": body})
            failure = next((f for f in hub.failures if f["times"] > 0 and f["method"] == self.command
                            and f["pattern"].search(path)), None)
            if failure:
                failure["times"] -= 1
        if failure:
            if failure["action"] == "drop":  # half way: the bytes arrived, no answer ever comes
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            return self._error(failure["action"], "injected failure")
        if not path.startswith("/lfs-upload/"):  # presigned storage URLs take no token
            auth = self.headers.get("Authorization")
            if auth is not None and auth != f"Bearer {TOKEN}":
                return self._error(401, "Invalid credentials in Authorization header")
            if auth is None and (self.command in ("POST", "PUT")):
                return self._error(401, "Invalid credentials in Authorization header")
        try:
            self._route(path, body)
        except Exception as exc:  # a bug in the fake: make it visible as a 500
            self._error(500, f"fake hub bug: {exc!r}")
            raise

    # -- endpoints
    def _route(self, path: str, body: bytes):
        hub, method = self.hub, self.command
        if method == "POST" and path == "/api/repos/create":
            data = json.loads(body)
            repo_id = f"{data['organization']}/{data['name']}"
            with hub.lock:
                if repo_id in hub.repos:  # the Hub's 409 carries the url; huggingface_hub reads it
                    return self._send(409, {"error": "You already created this model repo",
                                            "url": f"{hub.url}/{repo_id}"})
                repo = {"private": data.get("visibility") == "private", "branches": {}, "trees": {}}
                init = {".gitattributes": _entry(b"*.tflite filter=lfs diff=lfs merge=lfs -text\n", False)}
                repo["branches"]["main"] = _new_tree_commit(repo, None, init, "initial commit")
                hub.repos[repo_id] = repo
            return self._send(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
        if method == "POST" and path == "/api/validate-yaml":
            content = json.loads(body)["content"]
            front = content.split("---\n")[1] if content.startswith("---\n") else ""
            try:
                meta = yaml.safe_load(front)
                assert isinstance(meta, dict)
            except Exception as exc:  # noqa: BLE001
                return self._send(400, {"errors": [{"message": f"bad metadata: {exc}"}]})
            return self._send(200, {"errors": [], "warnings": []})

        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/(revision|preupload|commit|branch|tree)/(.+))?", path)
        if m:
            repo_id, action, rest = m.group(1), m.group(2), unquote(m.group(3) or "")
            repo = hub.repos.get(repo_id)
            if repo is None or (repo["private"] and self.headers.get("Authorization") is None):
                return self._error(404, "Repository not found", "RepoNotFound")
            if action in (None, "revision") and method == "GET":
                rev = rest or "main"
                sha = repo["branches"].get(rev, rev)
                if sha not in repo["trees"]:
                    return self._error(404, "Invalid rev id", "RevisionNotFound")
                return self._send(200, {"id": repo_id, "sha": sha, "private": repo["private"],
                                        "siblings": [{"rfilename": p} for p in repo["trees"][sha]]})
            if action == "tree" and method == "GET":
                rev = rest.split("/")[0]
                sha = repo["branches"].get(rev, rev)
                if sha not in repo["trees"]:
                    return self._error(404, "Invalid rev id", "RevisionNotFound")
                entries = []
                for p, e in sorted(repo["trees"][sha].items()):
                    item = {"type": "file", "oid": e["oid"], "size": e["size"], "path": p}
                    if e["lfs"]:
                        item["lfs"] = {"oid": e["sha256"], "size": e["size"], "pointerSize": 134}
                    entries.append(item)
                return self._send(200, entries)
            if action == "branch" and method == "POST":
                if rest in repo["branches"]:
                    return self._error(409, "Reference already exists")
                repo["branches"][rest] = repo["branches"]["main"]
                return self._send(200, {})
            if action == "preupload" and method == "POST":
                tree = repo["trees"][repo["branches"].get(rest, repo["branches"]["main"])]
                files = []
                for f in json.loads(body)["files"]:
                    sample = base64.b64decode(f["sample"])
                    try:
                        sample.decode()
                        text = True
                    except UnicodeDecodeError:
                        text = False
                    lfs = f["path"].endswith(".tflite") or not text or f["size"] > 10_000_000
                    old = tree.get(f["path"])
                    oid = None if old is None else (old["sha256"] if old["lfs"] else old["oid"])
                    files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular",
                                  "shouldIgnore": False, "oid": oid})
                return self._send(200, {"files": files, "commitOid": repo["branches"]["main"]})
            if action == "commit" and method == "POST":
                return self._commit(repo_id, repo, rest, body)
        m = re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path)
        if m and method == "POST":
            objects = []
            for obj in json.loads(body)["objects"]:
                if obj["oid"] in hub.lfs:  # already stored: nothing to do (this is what makes re-runs cheap)
                    objects.append({"oid": obj["oid"], "size": obj["size"]})
                else:
                    objects.append({"oid": obj["oid"], "size": obj["size"], "actions": {
                        "upload": {"href": f"{hub.url}/lfs-upload/{obj['oid']}", "header": {}}}})
            return self._send(200, {"transfer": "basic", "objects": objects})
        m = re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", path)
        if m and method == "PUT":
            if hashlib.sha256(body).hexdigest() != m.group(1):
                return self._error(400, "content does not match its oid")
            with hub.lock:
                hub.lfs[m.group(1)] = body
            return self._send(200, {})
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m and method in ("GET", "HEAD"):
            repo_id, rev, file = m.group(1), unquote(m.group(2)), unquote(m.group(3))
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._error(404, "Repository not found", "RepoNotFound")
            sha = repo["branches"].get(rev, rev)
            entry = repo["trees"].get(sha, {}).get(file)
            if entry is None:
                return self._error(404, "Entry not found", "EntryNotFound")
            etag = entry["sha256"] if entry["lfs"] else entry["oid"]
            return self._send(200, raw=hub.content(entry), headers={
                "X-Repo-Commit": sha, "ETag": f'"{etag}"', "Content-Type": "application/octet-stream"})
        return self._error(404, f"fake hub has no {method} {path}")

    def _commit(self, repo_id: str, repo: dict, revision: str, body: bytes):
        hub = self.hub
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(item["value"] for item in lines if item["key"] == "header")
        base = repo["branches"].get(revision)
        if base is None:
            return self._error(404, "Invalid rev id", "RevisionNotFound")
        tree = dict(repo["trees"][base])
        for item in lines:
            value = item["value"]
            if item["key"] == "file":
                tree[value["path"]] = _entry(base64.b64decode(value["content"]), False)
            elif item["key"] == "lfsFile":
                if value["oid"] not in hub.lfs:
                    return self._error(400, f"LFS object {value['oid']} was never uploaded")
                tree[value["path"]] = _entry(hub.lfs[value["oid"]], True)
        sha = _new_tree_commit(repo, base, tree, header["summary"])
        pr = "create_pr=1" in self.path
        with hub.lock:
            hub.commits.append({"repo": repo_id, "revision": revision, "summary": header["summary"], "sha": sha,
                                "paths": sorted(v["value"]["path"] for v in lines if v["key"] != "header"),
                                "pr": pr})
            number = sum(1 for c in hub.commits if c["pr"])
        answer = {"commitUrl": f"{hub.url}/{repo_id}/commit/{sha}", "commitOid": sha}
        if pr:
            repo["branches"][f"refs/pr/{number}"] = sha
            answer["pullRequestUrl"] = f"{hub.url}/{repo_id}/discussions/{number}"
        else:
            repo["branches"][revision] = sha
        return self._send(200, answer)


@pytest.fixture
def fake_hub():
    state = FakeHub()
    handler = type("BoundHandler", (Handler,), {"hub": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def hub_env(fake_hub, tmp_path, monkeypatch):
    """No real login, no real cache, no Xet, this test's fake Hub, retries without waiting."""
    import time

    import huggingface_hub
    from huggingface_hub import constants

    for name in ("HF_TOKEN", "HF_OIDC_RESOURCE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf-home" / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    # Read at import: an earlier test that imported huggingface_hub under HF_HUB_OFFLINE=1 froze it.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    monkeypatch.setattr(hub_fetch, "RETRY", hub_fetch.Retry(attempts=3, first_wait=0.01))
    # Our retries and huggingface_hub's own backoff inside each of them (1, 2, 4, 8 s) wait with
    # time.sleep: the failure tests would take minutes.
    monkeypatch.setattr(time, "sleep", lambda _seconds: None)
    huggingface_hub.close_session()  # no connection kept to an earlier test's fake Hub
    yield
    huggingface_hub.close_session()


# --------------------------------------------------------------------------------------------------
# A real converted set: two tiny LiteRT files and a manifest that describes them


def _tflite(component: str, seed: int) -> bytes:
    """A small file with the component's real signature at v1, 128x128 (what the manifest's dims say):
    its output is a seeded constant scaled by the mean of its inputs."""
    import tempfile

    import tensorflow as tf

    from sd2tflite.core.registry import COMPONENTS, FAMILIES

    spec, dims = COMPONENTS[component], FAMILIES["v1"].dims(128, 128)
    output = spec.output_spec(dims)
    weight = tf.constant(np.random.default_rng(seed).standard_normal(output.shape).astype(np.float32))
    inputs = [tf.TensorSpec(s.shape, s.dtype, name=s.name) for s in spec.input_specs(dims)]

    @tf.function(input_signature=inputs)
    def constant_times_mean(*args):
        mean = tf.add_n([tf.reduce_mean(tf.cast(x, tf.float32)) for x in args])
        return {output.name: weight * mean}

    module = tf.Module()
    module.fn = constant_times_mean
    with tempfile.TemporaryDirectory() as saved:
        tf.saved_model.save(module, saved, signatures={"serving_default": constant_times_mean.get_concrete_function()})
        return tf.lite.TFLiteConverter.from_saved_model(saved).convert()


@pytest.fixture(scope="module")
def source_set(tmp_path_factory):
    from ai_edge_litert.interpreter import Interpreter

    from sd2tflite.core.registry import TensorSpec
    from sd2tflite.core.manifest import Artifact, Manifest, save_manifest

    directory = tmp_path_factory.mktemp("set")
    artifacts = []
    for seed, component in enumerate(("text_encoder", "decoder")):
        path = directory / f"{component}.tflite"
        path.write_bytes(_tflite(component, seed))
        runner = Interpreter(model_path=str(path)).get_signature_runner("serving_default")
        spec = lambda details: tuple(  # noqa: E731
            TensorSpec(name, tuple(int(d) for d in v["shape"]), np.dtype(v["dtype"]).name)
            for name, v in sorted(details.items()))
        inputs, outputs = spec(runner.get_input_details()), spec(runner.get_output_details())
        artifacts.append(Artifact(
            component=component, part=0, num_parts=1, path=path.name,
            sha256=hashlib.sha256(path.read_bytes()).hexdigest(), bytes=path.stat().st_size, params=8192,
            signature_key="serving_default", inputs=inputs, outputs=outputs,
            wiring={s.name: None for s in inputs}, conversion_seconds=1.5, peak_rss_bytes=10**9, build_key="k"))
    weights = {c: {"kind": "hub", "repo_id": "fchollet/stable-diffusion", "filename": f"kcv_{c}.h5",
                   "sha256": "ab" * 32} for c in ("text_encoder", "decoder")}
    from sd2tflite.core.registry import FAMILIES

    manifest = Manifest(family="v1", quant="dynamic", dims=FAMILIES["v1"].dims(128, 128).to_json(),
                        weights=weights, artifacts=tuple(artifacts),
                        versions={"sd2tflite": "0.1.0", "tensorflow": "2.21.0", "ai-edge-litert": "2.3.0"},
                        command="sd2tflite convert --quant dynamic --img-height 128 --img-width 128",
                        created="2026-01-01T00:00:00Z")
    save_manifest(manifest, directory)
    return directory


@pytest.fixture
def model_set(source_set, tmp_path):
    directory = tmp_path / "sd-v1-dynamic"
    shutil.copytree(source_set, directory)
    return directory


def snapshot(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}




def assert_token_only_in_auth_headers(fake_hub, tmp_path, *outputs):
    api = [r for r in fake_hub.requests if not r["path"].startswith("/lfs-upload/")]
    assert api and all(r["headers"].get("authorization") == f"Bearer {TOKEN}" for r in api
                       if r["method"] in ("POST", "PUT"))
    for r in fake_hub.requests:
        assert TOKEN not in r["path"] and TOKEN.encode() not in r["body"]
        others = {k: v for k, v in r["headers"].items() if k.lower() != "authorization"}
        assert TOKEN not in json.dumps(others)
    # storage URLs never see it
    assert all("authorization" not in r["headers"] for r in fake_hub.requests if r["path"].startswith("/lfs-upload/"))
    for text in outputs:
        assert TOKEN not in text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


# --------------------------------------------------------------------------------------------------
# Push


def test_push_uploads_files_and_card_in_one_commit(fake_hub, model_set, tmp_path):
    before = snapshot(model_set)
    result = run(["push-hub", str(model_set), "--repo-id", REPO, "--token", TOKEN, "-q"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout.strip() == f"{fake_hub.url}/{REPO}"

    assert len(fake_hub.commits) == 1 and fake_hub.commits[0]["revision"] == "main"
    tree = fake_hub.tree(REPO)
    for name in ("text_encoder.tflite", "decoder.tflite", "manifest.json"):
        assert fake_hub.content(tree[name]) == (model_set / name).read_bytes(), name
    assert tree["text_encoder.tflite"]["lfs"] and tree["decoder.tflite"]["lfs"]
    # Each LFS object went up exactly once, as the bytes of the file.
    puts = [r for r in fake_hub.requests if r["method"] == "PUT"]
    assert sorted(r["body"] for r in puts) == sorted((model_set / n).read_bytes()
                                                     for n in ("text_encoder.tflite", "decoder.tflite"))

    card = fake_hub.content(tree["README.md"]).decode()
    from sd2tflite.core.manifest import load_manifest

    assert card == hub_card.model_card(model_set, load_manifest(model_set), None, REPO)
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["library_name"] == "litert"
    assert meta["license"] == "creativeml-openrail-m"
    assert {"tflite", "litert", "stable-diffusion", "keras-cv", "dynamic"} <= set(meta["tags"])
    assert meta["base_model"] == ["fchollet/stable-diffusion"]
    manifest = load_manifest(model_set)
    for a in manifest.artifacts:
        assert f"`{a.path}`" in card and f"{a.bytes:,}" in card and a.sha256 in card
    assert "`positions` int32[1, 77], `tokens` int32[1, 77] -> `context` float32[1, 77, 768]" in card
    assert "not verified" in card and f"sd2tflite verify hf://{REPO}" in card
    assert f"sd2tflite generate hf://{REPO}" in card
    assert manifest.command in card and "tensorflow 2.21.0" in card

    assert snapshot(model_set) == before  # nothing written into the user's folder (no README.md)
    assert_token_only_in_auth_headers(fake_hub, tmp_path, result.output)


def test_card_shows_verify_figures_and_uploads_the_report(fake_hub, model_set):
    report = {"passed": True, "checks": [
        {"group": "parity", "name": "decoder", "passed": True, "detail": "matches Keras",
         "figures": {"psnr_db": 52.0123, "cosine": 0.99991}},
        {"group": "integrity", "name": "manifest.json", "passed": True},  # keys missing: tolerated
        "not a check",
    ]}
    (model_set / "verify.json").write_text(json.dumps(report))
    result = hub_push.push(PushRequest(model_set, REPO, token=TOKEN))
    card = fake_hub.content(fake_hub.tree(REPO)["README.md"]).decode()
    assert "**passed** (3 checks)" in card
    assert "| parity | decoder | pass | matches Keras | psnr_db=52.01, cosine=0.9999 |" in card
    assert "| integrity | manifest.json | pass |  |  |" in card
    assert "not verified" not in card
    assert fake_hub.content(fake_hub.tree(REPO)["verify.json"]) == (model_set / "verify.json").read_bytes()
    assert result.attempts == 1 and len(fake_hub.commits) == 1


def test_dry_run_prints_card_and_operations_and_sends_nothing(fake_hub, model_set):
    result = run(["push-hub", str(model_set), "--repo-id", REPO, "--dry-run", "--private", "--create-pr"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert fake_hub.requests == []
    out = result.stdout
    assert out.startswith("---\nlibrary_name: litert\n")
    assert f"create repo {REPO}" in out and "(private)" in out and "a pull request against main" in out
    for name in ("text_encoder.tflite", "decoder.tflite", "manifest.json", "README.md"):
        assert re.search(rf"add {re.escape(name)}\s+[\d,]+ bytes", out), name
    assert "token: none found" in out and "hf auth login" in out


def test_tampered_set_is_refused_before_any_request(fake_hub, model_set):
    data = bytearray((model_set / "decoder.tflite").read_bytes())
    data[-1] ^= 0xFF
    (model_set / "decoder.tflite").write_bytes(bytes(data))
    result = run(["push-hub", str(model_set), "--repo-id", REPO, "--token", TOKEN])
    assert_one_line_error(result, 1, "decoder.tflite", "sha256")
    assert fake_hub.requests == []


@pytest.mark.parametrize("repo_id", ["noslash", "a/b/c", "own er/x", "-bad/x", "a/b..c", "a/" + "x" * 97])
def test_invalid_repo_id_is_a_usage_error(fake_hub, model_set, repo_id):
    result = run(["push-hub", str(model_set), "--repo-id", repo_id, "--token", TOKEN])
    assert_one_line_error(result, 2, "OWNER/NAME")
    assert fake_hub.requests == []


def test_no_token_says_how_to_log_in(fake_hub, model_set):
    result = run(["push-hub", str(model_set), "--repo-id", REPO, "-q"])
    assert_one_line_error(result, 1, "no Hugging Face token", "hf auth login", "HF_TOKEN")
    assert fake_hub.requests == []


def test_token_from_hf_token_env(fake_hub, model_set, tmp_path):
    result = run(["push-hub", str(model_set), "--repo-id", REPO, "-q"], env={"HF_TOKEN": TOKEN})
    assert result.exit_code == 0, (result.output, result.exception)
    assert len(fake_hub.commits) == 1
    assert_token_only_in_auth_headers(fake_hub, tmp_path, result.output)


def test_rejected_token_is_one_line_401(fake_hub, model_set):
    wrong = "hf_wrongTOKENwrongTOKENwrong"
    result = run(["push-hub", str(model_set), "--repo-id", REPO, "--token", wrong, "-q"])
    line = assert_one_line_error(result, 1, "401", "hf auth login")
    assert wrong not in result.output
    assert fake_hub.commits == [] and "rejected the token" in line


def test_server_errors_are_retried_then_succeed(fake_hub, model_set):
    fake_hub.fail("POST", r"^/api/repos/create$", 503, times=2)
    fake_hub.fail("POST", r"/commit/main$", 500, times=1)
    result = run(["push-hub", str(model_set), "--repo-id", REPO, "--token", TOKEN])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "retrying" in result.stderr
    assert len(fake_hub.posts(r"^/api/repos/create$")) == 3
    assert len(fake_hub.posts(r"/commit/main$")) == 2 and len(fake_hub.commits) == 1
    # The retried commit did not send the files again: the Hub already had them.
    assert len([r for r in fake_hub.requests if r["method"] == "PUT"]) == 2
    assert fake_hub.content(fake_hub.tree(REPO)["decoder.tflite"]) == (model_set / "decoder.tflite").read_bytes()


def test_connection_refused_gives_up_clearly(model_set, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    result = run(["push-hub", str(model_set), "--repo-id", REPO, "--token", TOKEN, "-q"])
    assert_one_line_error(result, 1, "could not reach", "after 3 attempts", "re-run")


@pytest.mark.parametrize("command", ["generate", "push-hub"])
def test_a_host_name_that_does_not_resolve_fails_at_once(command, model_set, tmp_path, monkeypatch):
    """No DNS answer for the endpoint (no network, a mistyped HF_ENDPOINT): waiting cannot help, so
    one line at once, no retries."""
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.sd2tflite-test.invalid")  # .invalid never resolves
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    args = {"generate": ["generate", f"hf://{REPO}", "x", "-o", str(tmp_path / "o.png")],
            "push-hub": ["push-hub", str(model_set), "--repo-id", REPO, "--token", TOKEN]}[command]
    result = run([*args, "-q"])
    line = assert_one_line_error(result, 1, "does not resolve", "HF_ENDPOINT")
    assert "attempts" not in line and "retrying" not in result.stderr


def test_interrupted_upload_is_finished_by_a_rerun(fake_hub, model_set, tmp_path):
    before = snapshot(model_set)
    decoder_oid = hashlib.sha256((model_set / "decoder.tflite").read_bytes()).hexdigest()
    fake_hub.fail("PUT", rf"^/lfs-upload/{decoder_oid}$", "drop", times=1000)
    first = run(["push-hub", str(model_set), "--repo-id", REPO, "--token", TOKEN, "-q"])
    assert_one_line_error(first, 1, "re-run the same command")
    assert fake_hub.commits == [] and set(fake_hub.tree(REPO)) == {".gitattributes"}  # main did not move
    assert snapshot(model_set) == before
    uploaded_before = len(fake_hub.requests)

    fake_hub.failures.clear()
    second = run(["push-hub", str(model_set), "--repo-id", REPO, "--token", TOKEN, "-q"])
    assert second.exit_code == 0, (second.output, second.exception)
    puts = [r for r in fake_hub.requests[uploaded_before:] if r["method"] == "PUT"]
    assert [r["path"] for r in puts] == [f"/lfs-upload/{decoder_oid}"]  # only what was missing
    assert len(fake_hub.commits) == 1
    tree = fake_hub.tree(REPO)
    for name in ("text_encoder.tflite", "decoder.tflite", "manifest.json"):
        assert fake_hub.content(tree[name]) == (model_set / name).read_bytes()
    assert snapshot(model_set) == before
    assert_token_only_in_auth_headers(fake_hub, tmp_path, first.output, second.output)


def test_private_and_branch_and_pull_request(fake_hub, model_set):
    hub_push.push(PushRequest(model_set, REPO, token=TOKEN, private=True, revision="v1"))
    assert fake_hub.repos[REPO]["private"]
    assert fake_hub.commits[-1]["revision"] == "v1" and set(fake_hub.tree(REPO, "main")) == {".gitattributes"}
    result = hub_push.push(PushRequest(model_set, REPO, token=TOKEN, create_pr=True, commit_message="again"))
    assert result.url == f"{fake_hub.url}/{REPO}/discussions/1"
    assert fake_hub.commits[-1]["pr"] and fake_hub.commits[-1]["summary"] == "again"
    assert set(fake_hub.tree(REPO, "main")) == {".gitattributes"}  # a PR does not move main
    assert "decoder.tflite" in fake_hub.tree(REPO, "refs/pr/1")


def test_private_refuses_an_existing_public_repo(fake_hub, model_set):
    hub_push.push(PushRequest(model_set, REPO, token=TOKEN))
    with pytest.raises(HubError, match="already exists and is public"):
        hub_push.push(PushRequest(model_set, REPO, token=TOKEN, private=True))
    assert len(fake_hub.commits) == 1


# --------------------------------------------------------------------------------------------------
# hf:// downloads


def test_hf_uri_downloads_checks_and_caches_the_set(fake_hub, model_set, monkeypatch):
    hub_push.push(PushRequest(model_set, REPO, token=TOKEN))
    path = hub_fetch.resolve_model_dir(f"hf://{REPO}")
    assert path.is_dir() and "hf-home" in str(path)
    for name in ("text_encoder.tflite", "decoder.tflite", "manifest.json"):
        assert (path / name).read_bytes() == (model_set / name).read_bytes()
    assert (path / "README.md").is_file()
    assert hub_fetch.resolve_model_dir(f"hf://{REPO}@main") == path
    # Offline now: the cached snapshot is still found (and checked again).
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert hub_fetch.resolve_model_dir(f"hf://{REPO}") == path


def test_hf_uri_refuses_files_that_do_not_match_the_manifest(fake_hub, model_set):
    hub_push.push(PushRequest(model_set, REPO, token=TOKEN))
    entry = fake_hub.tree(REPO)["decoder.tflite"]
    data = bytearray(fake_hub.lfs[entry["sha256"]])
    data[-1] ^= 0xFF
    fake_hub.lfs[entry["sha256"]] = bytes(data)  # the Hub now serves different bytes
    with pytest.raises(ManifestError, match="decoder.tflite"):
        hub_fetch.resolve_model_dir(f"hf://{REPO}")


def test_hf_uri_errors(fake_hub, monkeypatch):
    with pytest.raises(HubError, match="does not exist or is private"):
        hub_fetch.resolve_model_dir("hf://someone/missing")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(HubError, match="not in the Hugging Face cache"):
        hub_fetch.resolve_model_dir("hf://someone/other")


@pytest.mark.parametrize("text", ["hf://noslash", "hf://a/b@", "hf://a/b/c", "hf://"])
def test_bad_hf_uri_is_a_usage_error(fake_hub, text):
    with pytest.raises(UsageError, match="hf://OWNER/REPO"):
        hub_fetch.resolve_model_dir(text)
    assert fake_hub.requests == []


def test_plain_paths_are_not_touched(fake_hub):
    assert hub_fetch.resolve_model_dir("models/sd-v1-dynamic") == Path("models/sd-v1-dynamic")
    assert fake_hub.requests == []


def test_offline_mode_refuses_to_push(fake_hub, model_set):
    result = run(["push-hub", str(model_set), "--repo-id", REPO, "--token", TOKEN, "-q"],
                 env={"HF_HUB_OFFLINE": "1"})
    assert_one_line_error(result, 1, "HF_HUB_OFFLINE")
    assert fake_hub.requests == []


def test_card_of_a_set_without_released_weights(model_set):
    import dataclasses

    from sd2tflite.core.manifest import load_manifest

    manifest = dataclasses.replace(load_manifest(model_set), family="tiny", quant="fp16",
                                   weights={"decoder": {"kind": "random", "seed": 3}})
    card = hub_card.model_card(model_set, manifest, None, REPO)
    meta = yaml.safe_load(card.split("---\n")[1])
    assert "license" not in meta and "base_model" not in meta and "fp16" in meta["tags"]
    assert "random weights, seed 3" in card and "carry no license" in card


# --------------------------------------------------------------------------------------------------
# hf:// as a checkpoint for convert --weights: only what the conversion reads is downloaded


def _upload(fake_hub, repo_id: str, files: dict[str, bytes]) -> None:
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=fake_hub.url, token=TOKEN)
    api.create_repo(repo_id, exist_ok=True)
    api.create_commit(repo_id, operations=[CommitOperationAdd(path_in_repo=p, path_or_fileobj=data)
                                           for p, data in files.items()], commit_message="upload")


def test_a_diffusers_repo_downloads_only_the_weights_convert_reads(fake_hub):
    from sd2tflite.convert.checkpoint_source import download

    weights = b"not read by this test" * 100
    files = {"model_index.json": b"{}", "scheduler/scheduler_config.json": b"{}",
             "safety_checker/model.safetensors": weights, "feature_extractor/preprocessor_config.json": b"{}",
             "v1-5-pruned.ckpt": weights}
    for part in ("unet", "vae", "text_encoder"):
        files[f"{part}/config.json"] = b"{}"
        name = "model" if part == "text_encoder" else "diffusion_pytorch_model"
        files[f"{part}/{name}.safetensors"] = weights
        files[f"{part}/{name}.fp16.safetensors"] = weights[:50]
        files[f"{part}/{name}.bin"] = weights
    _upload(fake_hub, "someone/sd-diffusers", files)
    folder = download("hf://someone/sd-diffusers")
    got = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert got == sorted(["model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
                          "text_encoder/model.safetensors", "unet/config.json",
                          "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
                          "vae/diffusion_pytorch_model.safetensors"])
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == weights


def test_a_single_file_repo_gives_its_file_and_an_ambiguous_one_says_so(fake_hub):
    from sd2tflite.convert.checkpoint_source import download

    _upload(fake_hub, "someone/one-file", {"dreamshaper_8.safetensors": b"x" * 100, "notes.txt": b"#"})
    path = download("hf://someone/one-file@main")
    assert path.name == "dreamshaper_8.safetensors" and path.read_bytes() == b"x" * 100
    _upload(fake_hub, "someone/two-files", {"a.safetensors": b"a", "b.safetensors": b"b"})
    with pytest.raises(UsageError, match="2 top-level .safetensors files .a.safetensors, b.safetensors."):
        download("hf://someone/two-files")
