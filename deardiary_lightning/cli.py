"""The ``deardiary-lightning`` command.

Subcommands:

``sync SOURCE --to URL``
    Copy a local store (or chosen iterations of it) to a DearDiary server, exactly once.
    Credentials come from ``--username``/``--password`` or ``--token``, or from the
    ``DEARDIARY_USERNAME``, ``DEARDIARY_PASSWORD`` and ``DEARDIARY_TOKEN`` environment variables.
    Running it again sends only what is new; after an interruption it resumes.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import TextIO

__all__ = ["main"]

logger = logging.getLogger(__name__)


class ProgressLine:
    """Writes sync progress to a stream: one rewritten line on a terminal, else every few s.

    Args:
        stream: Where to write (standard error by default).
        interval: Seconds between lines when the stream is not a terminal.
    """

    def __init__(self, stream: TextIO | None = None, interval: float = 2.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if not self.interactive else 0.1
        self._last = 0.0
        self._width = 0

    def __call__(self, progress: object) -> None:
        from deardiary_lightning.sync import SyncProgress

        assert isinstance(progress, SyncProgress)
        now = time.monotonic()
        final = progress.current == "done"
        if not final and now - self._last < self.interval:
            return
        self._last = now
        text = progress.line()
        if self.interactive:
            padding = " " * max(0, self._width - len(text))
            self._width = len(text)
            self.stream.write("\r" + text + padding + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deardiary-lightning",
        description="Tools for runs recorded with deardiary_lightning.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more details")
    commands = parser.add_subparsers(dest="command", required=True)

    sync = commands.add_parser(
        "sync",
        help="copy a local store to a DearDiary server",
        description=(
            "Copy projects, experiments, iterations, parameters, metrics, resources, tags and "
            "models from a local store to a DearDiary server. Running it again sends only what "
            "is new; an interrupted sync resumes where it stopped."
        ),
    )
    sync.add_argument("source", help="the local store: a path or an fsspec URL (s3://...)")
    sync.add_argument("--to", required=True, metavar="URL", help="the server, http(s)://...")
    sync.add_argument("--username", help="sign in as this user (or DEARDIARY_USERNAME)")
    sync.add_argument(
        "--password", help="the user's password (prefer DEARDIARY_PASSWORD: it stays out of ps)"
    )
    sync.add_argument("--token", help="a bearer token instead of a password (or DEARDIARY_TOKEN)")
    sync.add_argument(
        "--iteration",
        action="append",
        metavar="ID",
        help="sync only this iteration and what it needs (repeat for several)",
    )
    sync.add_argument("--project", metavar="NAME", help="sync only the projects of this name")
    sync.add_argument("--quiet", action="store_true", help="no progress line")
    return parser


def _credentials(args: argparse.Namespace) -> tuple[str | None, str | None, str | None]:
    """Resolve username, password and token from options, then the environment."""
    username = args.username or os.environ.get("DEARDIARY_USERNAME") or None
    password = args.password or os.environ.get("DEARDIARY_PASSWORD") or None
    token = args.token or os.environ.get("DEARDIARY_TOKEN") or None
    if args.token and (args.username or args.password):
        msg = "give either --username/--password or --token, not both"
        raise SystemExit(f"deardiary-lightning sync: error: {msg}")
    if username and not password and sys.stdin.isatty():
        password = getpass.getpass(f"password for {username}: ")
    if password and not username:
        msg = "a password needs a username (--username or DEARDIARY_USERNAME)"
        raise SystemExit(f"deardiary-lightning sync: error: {msg}")
    if username and password:
        return username, password, None
    if username and not password:
        msg = f"no password for {username}: set DEARDIARY_PASSWORD or pass --password"
        raise SystemExit(f"deardiary-lightning sync: error: {msg}")
    return None, None, token


def _sync(args: argparse.Namespace) -> int:
    import deardiary_lightning
    from deardiary_lightning.errors import DearDiaryError
    from deardiary_lightning.store import StoreFormatError
    from deardiary_lightning.sync import sync

    username, password, token = _credentials(args)
    progress = None if args.quiet else ProgressLine()
    try:
        with deardiary_lightning.connect(
            args.to, username=username, password=password, token=token
        ) as client:
            report = sync(
                args.source,
                client,
                iterations=args.iteration,
                progress=progress,
                project=args.project,
            )
    except (DearDiaryError, StoreFormatError, ValueError, OSError) as exc:
        print(f"deardiary-lightning sync: {exc}", file=sys.stderr)
        print(
            "nothing already sent is lost: run the same command again to resume",
            file=sys.stderr,
        )
        return 1
    print(report)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status.

    Args:
        argv: The arguments (``sys.argv[1:]`` by default).
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command == "sync":
        return _sync(args)
    return 2  # pragma: no cover - argparse refuses unknown commands


if __name__ == "__main__":
    raise SystemExit(main())
