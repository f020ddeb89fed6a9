"""The one progress protocol of every command's library entry point.

A long-running call (convert, generate, verify, bench, push) takes an optional `Progress` and
reports to it; it never prints, so the caller decides how progress looks: the CLI draws tqdm bars
on stderr (cli/options.py, silent under -q), a notebook or a test passes its own, and `None` means
`NO_PROGRESS`. The caller owns the reporter: it opens it before the call and closes it after.

  stage(name, total, unit)  a new stage begins and the previous one ends; `total` units of work
                            (files, steps, cases), or None for a stage that is only announced
  status(text)              what the current stage works on now (the file being converted)
  advance(n)                n more units of the current stage are done
  note(text)                a message that is not a stage (a retry, an upload starting)
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def stage(self, name: str, total: int | None = None, unit: str = "item") -> None: ...

    def status(self, text: str) -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def note(self, text: str) -> None: ...


class NullProgress:
    """Reports nowhere: the default when the caller passes no progress. Subclass it to watch only
    some of the calls (a test that counts `advance`)."""

    def stage(self, name: str, total: int | None = None, unit: str = "item") -> None:
        pass

    def status(self, text: str) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def note(self, text: str) -> None:
        pass


NO_PROGRESS = NullProgress()
