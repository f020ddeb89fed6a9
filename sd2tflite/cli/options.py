"""What the commands share: one-line error handling, -v / -q, option parsers (sizes, thread
counts), the --vocab and --threads options, the terminal's progress, and the converter-extra check."""

from __future__ import annotations

import functools
import os
import sys

import click

from ..core.errors import SD2TFLiteError, UsageError


def _secrets(options: dict) -> list[str]:
    """Tokens that must never reach the terminal: --token, HF_TOKEN, the stored Hub login."""
    found = [options.get("token"), os.environ.get("HF_TOKEN")]
    # Where huggingface_hub keeps the login (its constants.HF_TOKEN_PATH), without importing it: an
    # import here would freeze its HF_HUB_OFFLINE / HF_ENDPOINT reading for the rest of the process.
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    home = os.environ.get("HF_HOME") or os.path.join(cache, "huggingface")
    try:
        with open(os.environ.get("HF_TOKEN_PATH") or os.path.join(home, "token")) as f:
            found.append(f.read().strip())
    except OSError:
        pass
    return [t for t in found if t and len(t) >= 8]


def _scrubbed(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _os_error(exc: OSError) -> str:
    """One line naming the file and what to do, for an OSError no check turned into a message."""
    import errno

    fixes = {errno.ENAMETOOLONG: "use shorter names (at most 255 bytes per folder or file name)",
             errno.ENOSPC: "free space or choose another folder", errno.EDQUOT: "free space or choose another folder",
             errno.EACCES: "check its permissions or choose another path",
             errno.EROFS: "choose a writable folder", errno.ENOENT: "check the path"}
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror.lower()}: {fixes.get(exc.errno, 'check the path and try again')}"


def _exit_now_if_threads_hold_on(code: int) -> None:
    """After an interrupt the main thread's cleanups have run; but Python's exit would then wait for
    every other non-daemon thread (huggingface_hub uploads in a thread pool, each waiting on the
    network for minutes). Exit at once instead, after the atexit handlers."""
    import atexit
    import os
    import threading

    pools = sys.modules.get("concurrent.futures.thread")  # their workers are joined at exit, daemon or not
    pooled = list(getattr(pools, "_threads_queues", {})) if pools else []
    if any(t.is_alive() and (not t.daemon or t in pooled) for t in threading.enumerate()
           if t is not threading.main_thread()):
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def handle_errors(fn):
    """Library errors become one line on stderr and their exit code; -v adds the traceback. Both
    are scrubbed of the Hub token (a server may echo it back in an error)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import traceback

        from ..core.signals import terminate_as_interrupt

        verbose = kwargs.get("verbose", False)
        try:
            with terminate_as_interrupt():  # SIGTERM (timeout, systemd, Docker, CI) cleans up like Ctrl-C
                return fn(*args, **kwargs)
        except KeyboardInterrupt as exc:
            click.echo("interrupted: no partial files were left behind", err=True)
            _exit_now_if_threads_hold_on(getattr(exc, "exit_code", 130))
            sys.exit(getattr(exc, "exit_code", 130))
        except Exception as exc:  # noqa: BLE001 - last line of defence for users
            secrets = _secrets(kwargs)
            if verbose:
                click.echo(_scrubbed("".join(traceback.format_exception(exc)), secrets), err=True, nl=False)
            if isinstance(exc, SD2TFLiteError):
                click.echo(_scrubbed(f"error: {exc}", secrets), err=True)
                sys.exit(exc.exit_code)
            if isinstance(exc, OSError) and exc.strerror:  # a path the checks above did not foresee
                click.echo(_scrubbed(f"error: {_os_error(exc)}", secrets), err=True)
                sys.exit(1)
            first = str(exc).splitlines()[0] if str(exc) else ""
            hint = "" if verbose else " (run with -v for the traceback)"
            click.echo(_scrubbed(f"error: unexpected {type(exc).__name__}: {first}{hint}", secrets), err=True)
            sys.exit(1)

    return wrapper


def verbosity(fn):
    fn = click.option("-v", "--verbose", is_flag=True, help="Show TensorFlow logs and tracebacks.")(fn)
    fn = click.option("-q", "--quiet", is_flag=True, help="No progress bars.")(fn)
    return fn


class TqdmProgress:
    """The terminal's progress (core/progress.py): a tqdm bar on stderr per counted stage, a "… NAME"
    line per announced stage, notes as lines; nothing at all under -q. A context manager: the last
    bar closes when the command's library call returns or fails."""

    # Conversion statuses name long files: no room for a bar beside them.
    COMPACT = "{desc} {n_fmt}/{total_fmt} [{elapsed}]"

    def __init__(self, quiet: bool, bar_format: str | None = None):
        self.quiet = quiet
        self.bar_format = bar_format
        self.bar = None

    def stage(self, name: str, total: int | None = None, unit: str = "item") -> None:
        self.close()
        if self.quiet:
            return
        if total is None:
            click.echo(f"… {name}", err=True)
            return
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=name, file=sys.stderr, unit=unit, bar_format=self.bar_format)

    def status(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description_str(text)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def note(self, text: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)  # above the bar, which redraws below it
        else:
            click.echo(text, err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "TqdmProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def parse_bytes(_ctx, _param, value):
    if value is None:
        return None
    text = str(value).strip().lower()
    binary = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    decimal = {"k": 10**3, "m": 10**6, "g": 10**9}
    try:
        if text[-3:] in ("kib", "mib", "gib"):
            return int(float(text[:-3]) * binary[text[-3]])
        if text[-2:] in ("kb", "mb", "gb"):
            return int(float(text[:-2]) * decimal[text[-2]])
        return int(text)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a size: use bytes or e.g. 1400MiB, 1.5GiB, 8GB")


def require_converter(what: str) -> None:
    """The converter extra is installed, or a UsageError saying how to install it."""
    import importlib.util

    missing = [m for m in ("tensorflow", "keras", "keras_cv") if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"{what} needs the converter ({', '.join(missing)} not installed): "
                         'pip install "sd2tflite[convert]"')


def _threads(_ctx, _param, value):
    if value is not None and value < 1:
        raise click.BadParameter(f"{value} must be at least 1 (default: all {os.cpu_count()} cores)")
    return value


_THREADS_HELP = "Threads for every LiteRT interpreter (default: all cores)."


def threads_option(fn):
    return click.option("--threads", default=None, type=int, callback=_threads, help=_THREADS_HELP)(fn)


def weight_cache_option(fn):
    return click.option(
        "--weight-cache/--no-weight-cache", default=True, show_default=True,
        help="Keep XNNPACK's packed weights in files under ~/.cache/sd2tflite/xnnpack ($SD2TFLITE_CACHE): "
             "written on a set's first run (about the set's size on disk), mapped after, so they are "
             "memory the OS can drop instead of anonymous memory. Same outputs bit for bit.")(fn)


def vocab_option(help_text: str = "CLIP vocabulary (bpe_simple_vocab_16e6.txt.gz) for offline use."):
    return click.option("--vocab", default=None, type=click.Path(dir_okay=False), help=help_text)


def thread_list(_ctx, _param, value):
    try:
        threads = tuple(int(t) for t in value.split(",")) if value else ()
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of thread counts, e.g. 1,2,4")
    return threads
