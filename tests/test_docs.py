"""The documentation stays true to the code: every setting and every error code has its row.

- Every ``POWERBI_*`` name written as a string literal in ``function_app.py`` or ``shared/`` has a row in
  the settings reference (``docs/settings.md``: a table row whose first cell is the backquoted name), and
  every row there names a setting the code reads.
- Every error code of ``shared/errors.py`` (each ``code = "..."`` assignment, including the ones chosen at
  run time, such as ``unavailable``) has a row in the error table (``docs/operating.md``: a row whose first
  cell is the status and second the backquoted code), with the production message the code answers with.
- The README stays a front door (at most 200 lines) whose links lead to files that exist, and every page of
  the site's nav exists (``mkdocs build --strict`` in ``.ci/run`` checks the site's own links).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from shared import errors
from shared.errors import PUBLIC_MESSAGES

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_PAGE = ROOT / "docs" / "settings.md"
ERRORS_PAGE = ROOT / "docs" / "operating.md"

SETTING_LITERAL = re.compile(r"""["'](POWERBI_[A-Z0-9_]*[A-Z0-9])["']""")
SETTING_ROW = re.compile(r"^\|\s*`(POWERBI_[A-Z0-9_]+)`\s*\|", re.MULTILINE)
ERROR_ROW = re.compile(r"^\|\s*(\d{3})\s*\|\s*`([a-z_]+)`\s*\|\s*([^|]*?)\s*\|", re.MULTILINE)


def settings_in_code() -> set[str]:
    sources = [ROOT / "function_app.py", *sorted((ROOT / "shared").rglob("*.py"))]
    return {name for path in sources for name in SETTING_LITERAL.findall(path.read_text(encoding="utf-8"))}


def settings_documented() -> list[str]:
    return SETTING_ROW.findall(SETTINGS_PAGE.read_text(encoding="utf-8"))


def error_codes_in_code() -> set[str]:
    """Every string assigned to ``code`` or ``self.code`` in shared/errors.py, conditional ones included."""
    tree = ast.parse((ROOT / "shared" / "errors.py").read_text(encoding="utf-8"))
    codes: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign):
            continue
        named_code = any(
            (isinstance(t, ast.Name) and t.id == "code") or (isinstance(t, ast.Attribute) and t.attr == "code")
            for t in node.targets
        )
        if named_code:
            codes |= {c.value for c in ast.walk(node.value) if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    return codes


def fixed_statuses() -> dict[str, int]:
    """code -> status for each class of shared/errors.py whose body sets both (not those chosen at run time)."""
    tree = ast.parse((ROOT / "shared" / "errors.py").read_text(encoding="utf-8"))
    statuses: dict[str, int] = {}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        values = {
            t.id: a.value.value
            for a in cls.body
            if isinstance(a, ast.Assign) and isinstance(a.value, ast.Constant)
            for t in a.targets
            if isinstance(t, ast.Name)
        }
        if isinstance(values.get("code"), str) and isinstance(values.get("status"), int):
            statuses[values["code"]] = values["status"]
    return statuses


def error_rows() -> list[tuple[str, str, str]]:
    return ERROR_ROW.findall(ERRORS_PAGE.read_text(encoding="utf-8"))


def test_the_scan_finds_settings_and_codes() -> None:
    # Guards the scans themselves: a regex that matched nothing would make the tests below pass vacuously.
    assert {"POWERBI_AUTH_MODE", "POWERBI_CACHE_URL", "POWERBI_HTTP_AUTH_LEVEL"} <= settings_in_code()
    assert {"internal_error", "throttled", "unavailable", "signin_unavailable"} <= error_codes_in_code()


def test_every_setting_the_code_reads_has_a_row_in_the_settings_reference() -> None:
    missing = sorted(settings_in_code() - set(settings_documented()))
    assert not missing, f"add a row to docs/settings.md for: {', '.join(missing)}"


def test_every_row_of_the_settings_reference_is_a_setting_the_code_reads() -> None:
    stale = sorted(set(settings_documented()) - settings_in_code())
    assert not stale, f"docs/settings.md documents settings no code reads: {', '.join(stale)}"


def test_each_setting_has_one_row() -> None:
    rows = settings_documented()
    assert len(rows) == len(set(rows)), sorted({r for r in rows if rows.count(r) > 1})


def test_every_error_code_has_a_row_in_the_error_table() -> None:
    documented = {code for _, code, _ in error_rows()}
    missing = sorted(error_codes_in_code() - documented)
    assert not missing, f"add a row to the error table in docs/operating.md for: {', '.join(missing)}"
    stale = sorted(documented - error_codes_in_code())
    assert not stale, f"docs/operating.md's error table lists codes shared/errors.py does not define: {stale}"


def test_the_error_table_quotes_the_production_messages_and_statuses() -> None:
    statuses = fixed_statuses()
    assert statuses["not_found"] == 404 and "throttled" not in statuses  # the scan itself
    # A ClientError (4xx) answers its own message, about the request: the table quotes an example.
    client = {c.code for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.ClientError)}
    assert client >= {"invalid_request", "not_found"}
    for status, code, message in error_rows():
        if code in client:
            assert message.startswith("what is wrong with the request, e.g. "), f"{status} {code}: {message!r}"
            assert "POWERBI_" not in message
            continue
        assert message == PUBLIC_MESSAGES[code], f"{status} {code}: the table says {message!r}"
        assert int(status) == statuses.get(code, int(status)), f"{code} answers {statuses[code]}, not {status}"


def test_the_readme_is_a_front_door() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines: move detail into docs/"


def test_the_readme_links_to_files_that_exist() -> None:
    # mkdocs checks the site's links; the README is outside it.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = [t for t in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme) if "://" not in t]
    assert "docs/settings.md" in targets
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert not missing, missing


def test_every_page_in_the_nav_exists() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = config[config.index("\nnav:") :]
    pages = re.findall(r":\s*([\w/.-]+\.md)\s*$", nav, re.MULTILINE)
    assert "settings.md" in pages and "operating.md" in pages
    missing = [page for page in pages if not (ROOT / "docs" / page).is_file()]
    assert not missing, missing
