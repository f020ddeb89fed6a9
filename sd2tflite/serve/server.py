"""A small standard-library HTTP server for the browser pages: the page assets shipped in the
package, LiteRT.js's files from npm, the model files, and a JSON API the page calls.

Bound to 127.0.0.1 by default. Only named files are served: the package's assets, LiteRT.js's
dist/ and wasm/ folders, and the .tflite files a page was given (for `serve`: the manifest's).
LiteRT.js's dist/ imports its helper package by bare name (`@litertjs/wasm-utils`), which only an
import map resolves, and workers take no import map: the server rewrites that one specifier to the
helper's served address, so LiteRT.js loads the same way in the page and in a Web Worker.
"""

from __future__ import annotations

import errno
import json
import mimetypes
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, unquote, urlsplit

from ..core.errors import UsageError
from .browser import LiteRtJs

ASSETS = Path(__file__).parent / "assets"
CONTENT_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
                 ".html": "text/html; charset=utf-8", ".css": "text/css", ".json": "application/json",
                 ".tflite": "application/octet-stream", ".png": "image/png", ".map": "application/json"}


class Reply:
    """What a route answers: status, content type, body (bytes) or a file to stream."""

    def __init__(self, body: bytes = b"", content_type: str = "application/json", status: int = 200,
                 file: Path | None = None):
        self.body, self.content_type, self.status, self.file = body, content_type, status, file

    @classmethod
    def json(cls, value, status: int = 200) -> "Reply":
        return cls(json.dumps(value).encode(), "application/json", status)

    @classmethod
    def error(cls, message: str, status: int = 400) -> "Reply":
        return cls.json({"error": message}, status)


# LiteRT.js's bare import of its helper package, and the address the server serves that package at
BARE_IMPORTS = {b'"@litertjs/wasm-utils"': b'"/litertjs/wasm-utils/dist/index.js"',
                b"'@litertjs/wasm-utils'": b"'/litertjs/wasm-utils/dist/index.js'"}
REWRITTEN_PREFIXES = ("/litertjs/core/dist/",)

MAX_BODY_BYTES = 64 << 20  # the page posts JSON settings and one latent per step (4 x 128 x 128 float32 at 1024²)

GetRoute = Callable[[dict[str, str]], Reply]
PostRoute = Callable[[dict[str, str], bytes], Reply]


class PageServer:
    """Routes: exact paths for the API (get / post), prefixes for files. Start with `start()`,
    stop with `close()`; `url` is the address to open."""

    def __init__(self, litertjs: LiteRtJs, host: str = "127.0.0.1", port: int = 0):
        self.gets: dict[str, GetRoute] = {}
        self.posts: dict[str, PostRoute] = {}
        self.files: dict[str, Path] = {}  # URL path -> file on disk (model files)
        self.folders: dict[str, Path] = {"/assets/": ASSETS,
                                         "/litertjs/core/dist/": litertjs.core / "dist",
                                         "/litertjs/core/wasm/": litertjs.core / "wasm",
                                         "/litertjs/wasm-utils/dist/": litertjs.wasm_utils / "dist"}
        self.index = "index.html"
        app = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "sd2tflite"

            def log_message(self, format, *args):  # noqa: A002 - the base class's name
                pass

            def do_GET(self):
                app._answer(self, None)

            def do_POST(self):
                text = self.headers.get("Content-Length") or "0"
                length = int(text) if text.isdigit() else -1
                if not 0 <= length <= MAX_BODY_BYTES:  # refused before anything is read or allocated
                    self.close_connection = True
                    app._send(self, Reply.error(f"a request body of Content-Length {text[:40]!r}: the page sends "
                                                f"at most {MAX_BODY_BYTES:,} bytes", 413))
                    return
                app._answer(self, self.rfile.read(length))

        try:
            self.httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(f"port {port} on {host} is in use: pass another --port (or 0 for a free one)") from None
            raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror}): pass another --host or --port") from None
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> "PageServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="sd2tflite-serve", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "PageServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------- routing

    def _route(self, method_body: bytes | None, path: str, query: dict[str, str]) -> Reply:
        if method_body is not None:
            route = self.posts.get(path)
            return route(query, method_body) if route else Reply.error(f"no such address {path}", 404)
        if path == "/":
            return Reply(file=ASSETS / self.index, content_type=CONTENT_TYPES[".html"])
        if path in self.gets:
            return self.gets[path](query)
        if path in self.files:
            return Reply(file=self.files[path], content_type=CONTENT_TYPES[".tflite"])
        for prefix, folder in self.folders.items():
            if path.startswith(prefix):
                name = path[len(prefix):]
                try:  # a NUL byte or a name over the OS limit is no asset either
                    target = (folder / name).resolve()
                    if ".." in Path(name).parts or not target.is_relative_to(folder.resolve()) or not target.is_file():
                        break
                except (OSError, ValueError):
                    break
                content_type = CONTENT_TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0]
                if prefix in REWRITTEN_PREFIXES and target.suffix == ".js":
                    return Reply(rewrite_bare_imports(target.read_bytes()), content_type)
                return Reply(file=target, content_type=content_type or "application/octet-stream")
        return Reply.error(f"no such address {path}", 404)

    def _answer(self, handler: BaseHTTPRequestHandler, body: bytes | None) -> None:
        parts = urlsplit(handler.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        try:
            reply = self._route(body, unquote(parts.path), query)
        except UsageError as exc:
            reply = Reply.error(str(exc), 400)
        except Exception as exc:  # a bug in a route: the page shows it, the server keeps running
            reply = Reply.error(f"{type(exc).__name__}: {exc}", 500)
        self._send(handler, reply)

    def _send(self, handler: BaseHTTPRequestHandler, reply: Reply) -> None:
        try:
            size = reply.file.stat().st_size if reply.file is not None else len(reply.body)
            handler.send_response(reply.status)
            handler.send_header("Content-Type", reply.content_type)
            handler.send_header("Content-Length", str(size))
            handler.send_header("Cache-Control", "no-store")
            handler.end_headers()
            if reply.file is None:
                handler.wfile.write(reply.body)
                return
            with open(reply.file, "rb") as f:
                while chunk := f.read(1 << 20):
                    handler.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page went away


def rewrite_bare_imports(source: bytes) -> bytes:
    """LiteRT.js's module text with its bare import of `@litertjs/wasm-utils` pointed at the served copy."""
    for bare, served in BARE_IMPORTS.items():
        source = source.replace(b"from " + bare, b"from " + served).replace(b"import(" + bare, b"import(" + served)
    return source


HTTP_OK = HTTPStatus.OK
