"""Build the deployment zip: the files git tracks, minus everything `.funcignore` lists.

`func azure functionapp publish` honours `.funcignore`; `az functionapp deployment source
config-zip` takes whatever zip it is given. This builds that zip from the files git tracks
(`git ls-files`), filtered by `.funcignore`: no tests, emulator or dev tooling, and nothing
that lies beside the code without being committed (an untracked `.env`, a `*.pem`, a
`local.settings.json` with secrets, a virtual environment, caches) is ever shipped.
Requirements are not vendored: the platform installs `requirements.txt` in a remote build.

Usage: python deploy/package.py [--root DIR] (--list | OUTPUT.zip)
"""

from __future__ import annotations

import argparse
import fnmatch
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

REQUIRED = ("function_app.py", "host.json", "requirements.txt")
IGNORE_FILES = (".funcignore",)
# The deploy tooling is never part of the app, whatever .funcignore says.
ALWAYS_EXCLUDED = ("/deploy/",)


@dataclass(frozen=True)
class Pattern:
    """One `.funcignore` line, in the subset of gitignore syntax that file needs."""

    glob: str
    anchored: bool  # has a slash before its end: matched against the path from the root
    directory_only: bool  # ends with a slash

    @classmethod
    def parse(cls, line: str) -> Pattern:
        if line.startswith("!"):
            # Re-including would need git's full precedence rules; refuse rather than guess.
            raise ValueError(f"negated .funcignore pattern not supported: {line}")
        directory_only = line.endswith("/")
        body = line.rstrip("/")
        return cls(glob=body.lstrip("/"), anchored="/" in body, directory_only=directory_only)

    def matches(self, path: PurePosixPath, is_dir: bool) -> bool:
        if self.directory_only and not is_dir:
            return False
        if self.anchored:
            return fnmatch.fnmatchcase(path.as_posix(), self.glob)
        return fnmatch.fnmatchcase(path.name, self.glob)


def read_patterns(root: Path) -> list[Pattern]:
    lines = list(ALWAYS_EXCLUDED)
    for name in IGNORE_FILES:
        if (root / name).exists():
            lines += (root / name).read_text(encoding="utf-8").splitlines()
    return [Pattern.parse(line.strip()) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def tracked_files(root: Path) -> list[PurePosixPath]:
    """The files git tracks under root (that still exist), relative to root."""
    try:
        listed = subprocess.run(  # noqa: S603  # a fixed command, no shell
            ["git", "-C", str(root), "ls-files", "-z", "--cached", "--full-name", "--", "."],  # noqa: S607
            capture_output=True,
            check=True,
        ).stdout
        top = subprocess.run(  # noqa: S603
            ["git", "-C", str(root), "rev-parse", "--show-toplevel"],  # noqa: S607
            capture_output=True,
            check=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        raise ValueError(f"{root} is not a git checkout: only files git tracks are packaged") from None
    base = Path(top).resolve()
    files = []
    for name in listed.decode("utf-8").split("\0"):
        if not name:
            continue
        relative = (base / name).relative_to(root.resolve())
        if (root / relative).is_file():  # tracked but deleted here: nothing to ship
            files.append(PurePosixPath(relative.as_posix()))
    return sorted(files)


def package_files(root: Path) -> Iterator[PurePosixPath]:
    """Every file to ship, relative to root, in a stable order: tracked, and neither it nor a folder above excluded."""
    patterns = read_patterns(root)

    def excluded(relative: PurePosixPath, is_dir: bool) -> bool:
        return any(p.matches(relative, is_dir) for p in patterns)

    for path in tracked_files(root):
        folders = [PurePosixPath(*path.parts[:i]) for i in range(1, len(path.parts))]
        if not excluded(path, False) and not any(excluded(folder, True) for folder in folders):
            yield path


def build(root: Path, output: Path) -> list[str]:
    """Write the zip (files at its root, as the Functions host expects) and return its names."""
    names = [str(path) for path in package_files(root) if (root / path).resolve() != output.resolve()]
    missing = [name for name in REQUIRED if name not in names]
    if missing:
        raise ValueError(f"not a function app folder ({root}): missing {', '.join(missing)}")
    with zipfile.ZipFile(output, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in names:
            archive.write(root / name, arcname=name)
    return names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--list", action="store_true", help="print the files that would be packaged")
    target.add_argument("output", nargs="?", type=Path, help="the zip to write")
    args = parser.parse_args(argv)
    try:
        if args.list:
            names = [str(path) for path in package_files(args.root)]
        else:
            names = build(args.root, args.output)
    except ValueError as error:
        print(f"package: {error}", file=sys.stderr)
        return 1
    if args.list:
        print("\n".join(names))
    else:
        print(f"packaged {len(names)} files into {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
