"""Build the deployment zip: the app's files, minus everything `.funcignore` lists.

`func azure functionapp publish` honours `.funcignore`; `az functionapp deployment source
config-zip` takes whatever zip it is given. This builds that zip by the same rules, so
both ways of deploying ship the same files: no tests, emulator, dev tooling, virtual
environment or `local.settings.json` (which holds secrets). What `.gitignore` lists is
left out too (caches, node_modules, build output): what is not committed is not deployed.
Requirements are not vendored: the platform installs `requirements.txt` in a remote build.

Usage: python deploy/package.py [--root DIR] (--list | OUTPUT.zip)
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

REQUIRED = ("function_app.py", "host.json", "requirements.txt")
IGNORE_FILES = (".funcignore", ".gitignore")
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


def package_files(root: Path) -> Iterator[PurePosixPath]:
    """Every file to ship, relative to root, in a stable order; excluded directories are not entered."""
    patterns = read_patterns(root)

    def excluded(relative: PurePosixPath, is_dir: bool) -> bool:
        return any(p.matches(relative, is_dir) for p in patterns)

    for current, dirs, files in os.walk(root):
        base = PurePosixPath(Path(current).relative_to(root).as_posix())
        dirs[:] = sorted(d for d in dirs if not excluded(base / d, True))
        for name in sorted(files):
            if not excluded(base / name, False):
                yield base / name


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
