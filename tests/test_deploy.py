"""deploy/deploy.sh against a stand-in `az` (tests/fake_az) that records every call and keeps state.

The script runs unattended (stdin is not a terminal, as in a pipeline) unless a test gives
it a pseudo-terminal. Assertions cover what the script printed and what it asked of "Azure":
the order and content of the az commands, idempotence, where secrets went (and where they
never go), the Key Vault references, and the package the fake received.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fake_az.fake_az import DEPLOYER_SP_ID, DEPLOYER_USER_ID, PLATFORM_SETTINGS, parse

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "deploy" / "deploy.sh"
FAKE_AZ = REPO / "tests" / "fake_az"
TIMEOUT = 120  # seconds: a bound on each run, not a wait
BASH = shutil.which("bash") or "/bin/bash"

# Distinctive values, with characters a careless shell script would mangle or expose.
PASSWORD = "Pw-9xQ deploy $HOME 'quoted' \"x\""
CLIENT_SECRET = "Cs-7kZ~deploy!secret"
TYPED_PASSWORD = "Typed-4mW-deploy-pass"
SECRETS = (PASSWORD, CLIENT_SECRET, TYPED_PASSWORD)
CLIENT_ID = "5d3e7a91-2c4b-4f8e-9a16-b0c7d2e3f401"
WORKSPACE_ID = "f089354e-8366-4e18-aea3-4cb4a3a50b48"
ORIGINS = ["https://www.contoso.com", "https://reports.contoso.com"]
VAULT = "contoso-embed-kv"


def base_env(tmp: Path, **extra: str) -> dict[str, str]:
    """A clean environment: nothing from the developer's shell but PATH, with the fake az first."""
    env = {
        "PATH": f"{FAKE_AZ}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp),
        "PYTHON": sys.executable,
        "FAKE_AZ_PYTHON": sys.executable,
        "FAKE_AZ_LOG": str(tmp / "az-calls.jsonl"),
        "FAKE_AZ_STATE": str(tmp / "az-state.json"),
        "FAKE_AZ_CAPTURE": str(tmp),
        "RETRY_SECONDS": "0",
        "RESOURCE_GROUP": "rg-embed",
        "LOCATION": "westeurope",
        "APP_NAME": "contoso-embed",
        "CORS_ORIGINS": " , ".join(ORIGINS) + "/",
        "POWERBI_CLIENT_ID": CLIENT_ID,
        "POWERBI_USERNAME": "embed-master@contoso.com",
        "POWERBI_WORKSPACE_ID": WORKSPACE_ID,
        "POWERBI_MIN_TOKEN_MINUTES": "12",
        "POWERBI_PROFILE_ID": "0d9b6f3e-4c21-4e7a-8b5f-2a1c9e8d7f60",  # any POWERBI_* setting goes through
        "POWERBI_PASSWORD": PASSWORD,
        "POWERBI_CLIENT_SECRET": CLIENT_SECRET,
    }
    env.update(extra)
    return env


def execute(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Every child of these tests (our script, our interpreter, shellcheck), bounded in time."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False, **kwargs)  # noqa: S603


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The script, unattended: stdin is not a terminal, as in a pipeline."""
    return execute([BASH, str(SCRIPT), *args], env=env, stdin=subprocess.DEVNULL, cwd=env["HOME"])


def calls(env: dict[str, str]) -> list[dict[str, Any]]:
    log = Path(env["FAKE_AZ_LOG"])
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def state(env: dict[str, str]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(Path(env["FAKE_AZ_STATE"]).read_text())
    return result


def words(call: dict[str, Any]) -> tuple[str, ...]:
    return parse(call["argv"])[0]


def options(call: dict[str, Any]) -> dict[str, list[str]]:
    return parse(call["argv"])[1]


def the(recorded: list[dict[str, Any]], *command: str) -> list[dict[str, Any]]:
    return [call for call in recorded if words(call) == command]


def position(recorded: list[dict[str, Any]], *command: str) -> int:
    return next(i for i, call in enumerate(recorded) if words(call) == command)


def changes(recorded: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """The calls that create or add something (as opposed to looking, setting or deploying)."""
    return [words(call) for call in recorded if {"create", "assign", "add"} & set(words(call))]


def settings_sent(recorded: list[dict[str, Any]]) -> dict[str, str]:
    (call,) = the(recorded, "functionapp", "config", "appsettings", "set")
    return dict(pair.split("=", 1) for pair in options(call)["--settings"])


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


@dataclass(frozen=True)
class Deployment:
    env: dict[str, str]
    first: subprocess.CompletedProcess[str]
    second: subprocess.CompletedProcess[str]
    first_calls: list[dict[str, Any]]
    second_calls: list[dict[str, Any]]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """Two unattended runs against one fake subscription: the first creates, the second finds."""
    env = base_env(tmp_path_factory.mktemp("deploy"))
    first = run(env)
    first_calls = calls(env)
    second = run(env)
    return Deployment(env, first, second, first_calls, calls(env)[len(first_calls) :])


def test_first_run_creates_each_resource_after_looking_for_it_in_order(deployed: Deployment) -> None:
    assert deployed.first.returncode == 0, deployed.first.stderr
    recorded = deployed.first_calls
    steps = [
        ("group", "show"),
        ("group", "create"),
        ("storage", "account", "show"),
        ("storage", "account", "create"),
        ("functionapp", "show"),
        ("functionapp", "create"),
        ("functionapp", "identity", "show"),
        ("functionapp", "identity", "assign"),
        ("keyvault", "show"),
        ("keyvault", "create"),
        ("role", "assignment", "create"),
        ("keyvault", "secret", "set"),
        ("functionapp", "config", "appsettings", "set"),
        ("functionapp", "cors", "add"),
        ("functionapp", "deployment", "source", "config-zip"),
    ]
    positions = [position(recorded, *step) for step in steps]
    assert positions == sorted(positions)

    (app,) = the(recorded, "functionapp", "create")
    assert options(app)["--flexconsumption-location"] == ["westeurope"]
    assert options(app)["--runtime"] == ["python"]
    assert options(app)["--runtime-version"] == ["3.13"]  # the default: Flex Consumption's azure-functions 2.x
    assert options(app)["--storage-account"] == ["contosoembedst"]
    (vault,) = the(recorded, "keyvault", "create")
    assert options(vault)["--name"] == [VAULT]
    assert options(vault)["--enable-rbac-authorization"] == ["true"]
    (cors,) = the(recorded, "functionapp", "cors", "add")
    assert options(cors)["--allowed-origins"] == ORIGINS
    (deploy,) = the(recorded, "functionapp", "deployment", "source", "config-zip")
    assert options(deploy)["--build-remote"] == ["true"]


def test_the_app_identity_may_read_and_the_deployer_may_write_the_vault(deployed: Deployment) -> None:
    azure = state(deployed.env)
    vault_id = azure["vaults"][VAULT]["id"]
    app_principal = azure["apps"]["contoso-embed"]["identity"]["principalId"]
    fields = ("--role", "--assignee-object-id", "--assignee-principal-type", "--scope")
    grants = map(options, the(deployed.first_calls, "role", "assignment", "create"))
    granted = {tuple(grant[field][0] for field in fields) for grant in grants}
    assert granted == {
        ("Key Vault Secrets Officer", DEPLOYER_USER_ID, "User", vault_id),
        ("Key Vault Secrets User", app_principal, "ServicePrincipal", vault_id),
    }
    # The officer role came before the first write, which the fake (like Key Vault) refuses otherwise.
    officer = next(i for i, c in enumerate(deployed.first_calls) if "Key Vault Secrets Officer" in c["argv"])
    assert officer < position(deployed.first_calls, "keyvault", "secret", "set")


def test_second_run_creates_nothing_and_redeploys_the_code(deployed: Deployment) -> None:
    assert deployed.second.returncode == 0, deployed.second.stderr
    recorded = deployed.second_calls
    assert changes(recorded) == []
    assert "exists, reused" in deployed.second.stdout
    assert len(the(recorded, "functionapp", "deployment", "source", "config-zip")) == 1
    assert len(state(deployed.env)["roles"]) == 2
    assert state(deployed.env)["cors"]["contoso-embed"] == ORIGINS


def test_secrets_go_to_the_vault_and_the_app_gets_key_vault_references(deployed: Deployment) -> None:
    sent = settings_sent(deployed.first_calls)
    reference = "@Microsoft.KeyVault(SecretUri=https://contoso-embed-kv.vault.azure.net/secrets/{}/)"
    assert sent["POWERBI_PASSWORD"] == reference.format("powerbi-password")
    assert sent["POWERBI_CLIENT_SECRET"] == reference.format("powerbi-client-secret")
    assert sent["POWERBI_CLIENT_ID"] == CLIENT_ID
    assert sent["POWERBI_WORKSPACE_ID"] == WORKSPACE_ID
    assert sent["POWERBI_MIN_TOKEN_MINUTES"] == "12"
    assert sent["POWERBI_AUTH_MODE"] == "MasterUser"
    assert sent["POWERBI_PROFILE_ID"] == "0d9b6f3e-4c21-4e7a-8b5f-2a1c9e8d7f60"
    assert "POWERBI_CLIENT_CERTIFICATE" not in sent  # not given, so not referenced
    assert state(deployed.env)["appsettings"]["contoso-embed"] == {**PLATFORM_SETTINGS, **sent}

    secrets = state(deployed.env)["secrets"]
    for name, value in ((f"{VAULT}/powerbi-password", PASSWORD), (f"{VAULT}/powerbi-client-secret", CLIENT_SECRET)):
        assert [version["value"] for version in secrets[name]] == [value, value]  # exact bytes, both runs
        assert {version["mode"] for version in secrets[name]} == {"0o600"}
        assert not any(Path(version["file"]).exists() for version in secrets[name])


def test_no_secret_in_any_argument_environment_or_output(deployed: Deployment) -> None:
    for call in deployed.first_calls + deployed.second_calls:
        assert_no_secret(*call["argv"])
        assert "POWERBI_PASSWORD" not in call["env"] and "POWERBI_CLIENT_SECRET" not in call["env"]
    for result in (deployed.first, deployed.second):
        assert_no_secret(result.stdout, result.stderr)


def test_ends_with_the_url_the_key_command_and_a_curl_line(deployed: Deployment) -> None:
    out = deployed.first.stdout
    assert "https://contoso-embed.azurewebsites.net/api/embed/reports/<reportId>" in out
    key_command = "az functionapp keys list --name contoso-embed --resource-group rg-embed"
    assert key_command in out
    assert re.search(r'^\s*curl -H "x-functions-key: \$\(az functionapp keys list .*\)" "https://', out, re.M)
    assert "func azure functionapp publish contoso-embed" in out


def test_package_holds_the_app_and_nothing_funcignore_excludes(deployed: Deployment) -> None:
    deployments = state(deployed.env)["deployments"]
    assert len(deployments) == 2
    with zipfile.ZipFile(deployments[0]["zip"]) as archive:
        names = archive.namelist()
    for required in ("function_app.py", "host.json", "requirements.txt", "shared/__init__.py", "shared/settings.py"):
        assert required in names
    excluded = [line.strip() for line in (REPO / ".funcignore").read_text().splitlines() if line.strip()]
    for name in names:
        parts = name.split("/")
        assert not any(fnmatch.fnmatchcase(part, pattern) for part in parts for pattern in excluded), name
        assert parts[0] not in {"tests", "emulator", "benchmarks", "deploy", ".venv", ".ci"}, name
        assert "__pycache__" not in parts and not name.endswith(".pyc"), name
        assert parts[-1] not in {"local.settings.json", "requirements-dev.txt", "pyproject.toml"}, name


def git(*args: str, cwd: Path) -> None:
    done = execute(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=cwd)
    assert done.returncode == 0, done.stderr


def test_package_tool_ships_only_tracked_files_minus_funcignore(tmp_path: Path) -> None:
    tree = tmp_path / "app"
    tracked = [
        "function_app.py", "host.json", "requirements.txt", "shared/core.py", "tests/test_x.py", "deploy/deploy.sh",
        "emulator/server.py", "web/index.html",
    ]  # fmt: skip
    untracked = [
        "local.settings.json", ".env", "key.pem", "shared/extra.py", ".venv/lib/site.py",
        "shared/__pycache__/core.cpython-311.pyc", "web/node_modules/x.js",
    ]  # fmt: skip
    for name in tracked + untracked:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(name)
    shutil.copy(REPO / ".funcignore", tree / ".funcignore")
    git("init", "-q", cwd=tree)
    git("add", ".funcignore", *tracked, cwd=tree)
    output = tmp_path / "out.zip"
    package = [sys.executable, str(REPO / "deploy" / "package.py"), "--root", str(tree)]
    done = execute([*package, str(output)])
    assert done.returncode == 0, done.stderr
    with zipfile.ZipFile(output) as archive:
        assert sorted(archive.namelist()) == [
            ".funcignore", "function_app.py", "host.json", "requirements.txt", "shared/core.py",
        ]  # fmt: skip
        assert archive.read("shared/core.py") == b"shared/core.py"

    (tree / "host.json").unlink()
    done = execute([*package, str(output)])
    assert done.returncode == 1
    assert "missing host.json" in done.stderr


def test_a_tree_git_does_not_track_is_not_packaged(tmp_path: Path) -> None:
    for name in ("function_app.py", "host.json", "requirements.txt"):
        (tmp_path / name).write_text(name)

    done = execute([sys.executable, str(REPO / "deploy" / "package.py"), "--root", str(tmp_path), "--list"])

    assert done.returncode == 1
    assert "not a git checkout" in done.stderr


def test_untracked_secrets_beside_the_code_of_a_clone_are_never_shipped(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    git("clone", "-q", "--no-local", str(REPO), str(clone), cwd=tmp_path)
    strays = [".env", "local.settings.json", "client.pem", "shared/key.pem", "shared/notes.py", "deploy.zip"]
    for name in strays:
        (clone / name).write_text("SECRET=stray-7731\n")

    output = tmp_path / "package.zip"
    done = execute([sys.executable, str(REPO / "deploy" / "package.py"), "--root", str(clone), str(output)])

    assert done.returncode == 0, done.stderr
    with zipfile.ZipFile(output) as archive:
        names = archive.namelist()
        assert "function_app.py" in names and "shared/settings.py" in names
        assert not set(strays) & set(names)
        assert all(b"stray-7731" not in archive.read(name) for name in names)


@pytest.mark.parametrize(
    ("mode", "variable"), [("MasterUser", "POWERBI_PASSWORD"), ("ServicePrincipal", "POWERBI_CLIENT_SECRET")]
)
def test_a_missing_secret_without_a_terminal_stops_before_any_az_call(tmp_path: Path, mode: str, variable: str) -> None:
    env = base_env(tmp_path, POWERBI_AUTH_MODE=mode, POWERBI_TENANT_ID="contoso.onmicrosoft.com")
    del env[variable]
    result = run(env)
    assert result.returncode != 0
    assert f"{variable} is not set and no terminal is attached" in result.stderr
    assert calls(env) == []


def test_a_missing_secret_is_asked_for_without_echo_on_a_terminal(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    del env["POWERBI_PASSWORD"]
    leader, follower = os.openpty()
    try:
        process = subprocess.Popen(  # noqa: S603 - our own script
            [BASH, str(SCRIPT)], env=env, stdin=follower, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        os.close(follower)
        assert process.stderr is not None
        prompt = b""
        deadline = time.monotonic() + TIMEOUT
        while b"POWERBI_PASSWORD" not in prompt:  # answer only once asked: echo is off by then
            ready, _, _ = select.select([process.stderr], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, "no prompt for POWERBI_PASSWORD"
            prompt += os.read(process.stderr.fileno(), 4096)
        os.write(leader, TYPED_PASSWORD.encode() + b"\n")
        out, err = process.communicate(timeout=TIMEOUT)
        echoed = b""
        while select.select([leader], [], [], 0)[0]:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not chunk:
                break
            echoed += chunk
    finally:
        os.close(leader)
    assert process.returncode == 0, err
    assert TYPED_PASSWORD.encode() not in echoed + out + err + prompt
    assert state(env)["secrets"][f"{VAULT}/powerbi-password"][-1]["value"] == TYPED_PASSWORD
    for call in calls(env):
        assert_no_secret(*call["argv"])


def test_service_principal_mode_and_deployer(tmp_path: Path) -> None:
    """A pipeline signed in as a service principal, deploying a ServicePrincipal-mode app."""
    env = base_env(
        tmp_path,
        FAKE_AZ_USER_TYPE="servicePrincipal",
        POWERBI_AUTH_MODE="ServicePrincipal",
        POWERBI_TENANT_ID="contoso.com",
    )
    result = run(env)
    assert result.returncode == 0, result.stderr
    recorded = calls(env)
    assert ("ad", "signed-in-user", "show") not in map(words, recorded)
    grants = the(recorded, "role", "assignment", "create")
    officer = [options(c) for c in grants if "Key Vault Secrets Officer" in c["argv"]]
    assert [(o["--assignee-object-id"], o["--assignee-principal-type"]) for o in officer] == [
        ([DEPLOYER_SP_ID], ["ServicePrincipal"])
    ]
    sent = settings_sent(recorded)
    assert "POWERBI_PASSWORD" not in sent  # this mode has no use for it: neither stored nor referenced
    assert sent["POWERBI_CLIENT_SECRET"].startswith("@Microsoft.KeyVault(SecretUri=")
    assert sent["POWERBI_TENANT_ID"] == "contoso.com"
    assert list(state(env)["secrets"]) == [f"{VAULT}/powerbi-client-secret"]


def test_only_what_is_missing_is_added(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    assert run(env).returncode == 0
    azure = state(env)
    azure["roles"] = [r for r in azure["roles"] if r["roleDefinitionName"] != "Key Vault Secrets User"]
    azure["cors"]["contoso-embed"] = ORIGINS[:1]
    Path(env["FAKE_AZ_STATE"]).write_text(json.dumps(azure))
    before = len(calls(env))
    assert run(env).returncode == 0
    again = calls(env)[before:]
    assert changes(again) == [("role", "assignment", "create"), ("functionapp", "cors", "add")]
    assert options(the(again, "functionapp", "cors", "add")[0])["--allowed-origins"] == ORIGINS[1:]


@pytest.mark.parametrize("with_secrets", [True, False])
def test_dry_run_prints_the_az_commands_and_runs_none(tmp_path: Path, with_secrets: bool) -> None:
    env = base_env(tmp_path)
    if not with_secrets:
        del env["POWERBI_PASSWORD"], env["POWERBI_CLIENT_SECRET"]
    result = run(env, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert calls(env) == []
    out = result.stdout
    assert "+ az group create --name rg-embed --location westeurope" in out
    create = "+ az functionapp create --name contoso-embed --resource-group rg-embed --storage-account contosoembedst"
    assert create in out
    assert "--flexconsumption-location westeurope --runtime python --runtime-version 3.13" in out
    assert "+ az keyvault secret set --vault-name contoso-embed-kv --name powerbi-password --file " in out
    assert "+ az functionapp deployment source config-zip" in out
    assert "    function_app.py" in out  # the package listing
    assert_no_secret(out, result.stderr)


def test_help_explains_the_inputs_and_calls_nothing(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    result = run(env, "--help")
    assert result.returncode == 0
    for name in ("RESOURCE_GROUP", "LOCATION", "APP_NAME", "CORS_ORIGINS", "KEY_VAULT_NAME", "--dry-run"):
        assert name in result.stdout
    assert calls(env) == []


@pytest.mark.parametrize(
    ("origins", "message"),
    [("*", "ALLOW_ANY_ORIGIN=true"), ("https://www.contoso.com/app", "is not an origin"), (" , ", "names no origin")],
)
def test_cors_origins_are_checked_before_any_az_call(tmp_path: Path, origins: str, message: str) -> None:
    env = base_env(tmp_path, CORS_ORIGINS=origins)
    result = run(env)
    assert result.returncode == 1
    assert message in result.stderr
    assert calls(env) == []


def test_any_origin_only_when_asked_explicitly(tmp_path: Path) -> None:
    result = run(base_env(tmp_path, CORS_ORIGINS="*", ALLOW_ANY_ORIGIN="true"), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "--allowed-origins \\* --output none" in result.stdout


@pytest.mark.parametrize(
    "app_name", ["Contoso-Embed", "9lives--embed", "ab", "a-very-long-function-app-name-for-the-contoso-embed-service"]
)
def test_derived_names_follow_azure_naming_rules(tmp_path: Path, app_name: str) -> None:
    result = run(base_env(tmp_path, APP_NAME=app_name), "--dry-run")
    assert result.returncode == 0, result.stderr
    storage = re.search(r"az storage account create --name (\S+)", result.stdout)
    vault = re.search(r"az keyvault create --name (\S+)", result.stdout)
    assert storage and vault
    assert re.fullmatch(r"[a-z0-9]{3,24}", storage[1])
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{1,22}[A-Za-z0-9]", vault[1]) and "--" not in vault[1]


@pytest.mark.parametrize(
    ("variable", "value"), [("STORAGE_ACCOUNT", "Bad_Name"), ("KEY_VAULT_NAME", "1vault"), ("APP_NAME", "-app")]
)
def test_invalid_names_are_refused_by_name(tmp_path: Path, variable: str, value: str) -> None:
    env = base_env(tmp_path, **{variable: value})
    result = run(env)
    assert result.returncode == 1
    assert variable in result.stderr
    assert calls(env) == []


def test_signed_out_stops_with_a_clear_message(tmp_path: Path) -> None:
    env = base_env(tmp_path, FAKE_AZ_LOGGED_OUT="1")
    result = run(env)
    assert result.returncode == 1
    assert "az login" in result.stderr
    assert [words(c) for c in calls(env)] == [("account", "show")]


def test_flags_mirror_the_environment(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    del env["APP_NAME"], env["RESOURCE_GROUP"]
    result = run(env, "--dry-run", "--app-name", "fabrikam-embed", "--resource-group", "rg-fabrikam", "--doctor")
    assert result.returncode == 0, result.stderr
    assert "+ az group create --name rg-fabrikam" in result.stdout
    assert "+ az functionapp create --name fabrikam-embed" in result.stdout
    assert "+ python3 -m shared.doctor" in result.stdout


def test_managed_identity_mode_needs_no_secret_and_no_vault(tmp_path: Path) -> None:
    env = base_env(tmp_path, POWERBI_AUTH_MODE="ManagedIdentity")
    del env["POWERBI_PASSWORD"], env["POWERBI_CLIENT_SECRET"]
    result = run(env, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "keyvault" not in result.stdout and "role assignment" not in result.stdout
    assert "POWERBI_AUTH_MODE=ManagedIdentity" in result.stdout
    assert "functionapp identity assign" in result.stdout  # the identity that signs in


def test_doctor_checks_the_deployed_settings_and_its_verdict_is_the_exit_status(tmp_path: Path) -> None:
    # A client id that is no GUID: the doctor stops at the settings, before any network call.
    env = base_env(tmp_path, POWERBI_CLIENT_ID="not-a-guid")
    result = run(env, "--doctor")
    assert result.returncode == 1
    assert "the doctor found a problem" in result.stderr
    assert "POWERBI_CLIENT_ID" in result.stdout  # the doctor named the setting it refused
    assert re.search(r"POWERBI_PASSWORD\W+\(?set", result.stdout)  # it got the secret, and showed only that
    assert_no_secret(result.stdout, result.stderr)


def test_the_script_knows_the_same_secret_settings_as_the_function() -> None:
    from shared import settings

    line = next(line for line in SCRIPT.read_text().splitlines() if line.startswith("readonly SECRET_SETTINGS="))
    assert set(re.findall(r"POWERBI_[A-Z_]+", line)) == set(settings.SECRET_SETTINGS)


def test_scripts_are_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install -y shellcheck)")
    result = execute([shellcheck, str(SCRIPT), str(FAKE_AZ / "az")])
    assert result.returncode == 0, result.stdout
    assert result.stdout == ""


def _versions(path: Path, operator: str) -> dict[tuple[str, str], tuple[int, ...]]:
    """``(name, marker) -> version`` of each requirement line's ``operator`` clause (comments and -r skipped)."""
    found: dict[tuple[str, str], tuple[int, ...]] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        line, _, marker = line.partition(";")
        match = re.match(rf"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*[^#]*?{re.escape(operator)}\s*([0-9][0-9.]*)", line)
        assert match, f"{path.name}: {line!r} has no {operator} version"
        numbers = tuple(int(n) for n in match.group(2).split("."))
        key = (match.group(1).lower().replace("_", "-"), " ".join(marker.split()))
        found[key] = numbers + (0,) * (3 - len(numbers))
    return found


def test_every_runtime_dependency_is_pinned_to_its_lower_bound_for_the_lowest_run() -> None:
    # .ci/run installs constraints-lowest.txt and runs the suite: a lower bound is a tested version.
    # A package with a line per Python version (environment markers) has a pin per line, same marker.
    lower = _versions(REPO / "requirements.txt", ">=")
    pinned = _versions(REPO / "constraints-lowest.txt", "==")

    assert lower and pinned == lower


@pytest.mark.parametrize(("python", "major"), [("3.11", 1), ("3.12", 1), ("3.13", 2), ("3.14", 2)])
def test_azure_functions_1_below_python_3_13_and_2_from_it(python: str, major: int) -> None:
    from packaging.requirements import Requirement

    environment = {"python_version": python, "python_full_version": f"{python}.0"}
    for path in (REPO / "requirements.txt", REPO / "constraints-lowest.txt"):
        lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
        requirements = [Requirement(line) for line in lines if line and not line.startswith("-")]
        applying = [
            r for r in requirements
            if r.name == "azure-functions" and (r.marker is None or r.marker.evaluate(environment))
        ]  # fmt: skip
        assert len(applying) == 1, path.name
        (specifier,) = applying
        assert specifier.specifier.contains(f"{major}.99") or any(
            str(s).startswith(f"=={major}.") for s in specifier.specifier
        ), (path.name, str(specifier))
        assert not specifier.specifier.contains(f"{3 - major}.5"), (path.name, str(specifier))


def test_only_the_functions_own_settings_that_can_work_in_azure_are_set(tmp_path: Path) -> None:
    env = base_env(
        tmp_path,
        POWERBI_AUTHORITY_HOST="https://localhost:8443",
        POWERBI_API_URL="https://127.0.0.1:9000/",
        POWERBI_SCOPE="https://analysis.windows.net:8443/powerbi/api/.default",
        POWERBI_WORKSPACE_ID=WORKSPACE_ID,
        POWERBI_ALLOWED_REPORTS="3d9b93c6-7b6d-4801-a491-1738910904fd",
        POWERBI_TYPO_SETTING="x",
        POWERBI_CLIENT_CERTIFICATE_PATH="",  # empty: as if unset
    )

    result = run(env)

    assert result.returncode == 0, result.stderr
    sent = settings_sent(calls(env))
    assert "POWERBI_AUTHORITY_HOST" not in sent and "POWERBI_API_URL" not in sent and "POWERBI_SCOPE" not in sent
    assert "POWERBI_TYPO_SETTING" not in sent
    assert sent["POWERBI_ALLOWED_REPORTS"] == "3d9b93c6-7b6d-4801-a491-1738910904fd"
    out = result.stdout
    for name in ("POWERBI_AUTHORITY_HOST", "POWERBI_API_URL", "POWERBI_SCOPE"):
        assert f"skipped {name}: a loopback or emulator address cannot work in Azure" in out
    assert "skipped POWERBI_TYPO_SETTING: not a setting of the function" in out
    assert "localhost" not in " ".join(arg for call in calls(env) for arg in call["argv"])


def test_a_certificate_file_goes_to_the_vault_and_its_path_is_never_an_app_setting(tmp_path: Path) -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\nkey-5521\n"
    (tmp_path / "client.pem").write_text(pem + "-----END PRIVATE KEY-----\n")
    env = base_env(
        tmp_path,
        POWERBI_AUTH_MODE="ServicePrincipal",
        POWERBI_TENANT_ID="contoso.onmicrosoft.com",
        POWERBI_CLIENT_CERTIFICATE_PATH=str(tmp_path / "client.pem"),
    )
    for name in ("POWERBI_CLIENT_SECRET", "POWERBI_PASSWORD", "POWERBI_USERNAME"):
        del env[name]

    result = run(env)

    assert result.returncode == 0, result.stderr
    sent = settings_sent(calls(env))
    assert "POWERBI_CLIENT_CERTIFICATE_PATH" not in sent
    assert sent["POWERBI_CLIENT_CERTIFICATE"].startswith("@Microsoft.KeyVault(SecretUri=")
    stored = state(env)["secrets"][f"{VAULT}/powerbi-client-certificate"][-1]["value"]
    assert stored == (tmp_path / "client.pem").read_text().rstrip("\n")
    assert "skipped POWERBI_CLIENT_CERTIFICATE_PATH: a path to a file on this machine" in result.stdout
    assert all("key-5521" not in arg for call in calls(env) for arg in call["argv"])
    assert "key-5521" not in result.stdout + result.stderr


def test_a_certificate_path_that_cannot_be_read_stops_before_any_az_call(tmp_path: Path) -> None:
    env = base_env(tmp_path, POWERBI_CLIENT_CERTIFICATE_PATH=str(tmp_path / "missing.pem"))

    result = run(env)

    assert result.returncode != 0
    assert "POWERBI_CLIENT_CERTIFICATE_PATH names a file that cannot be read" in result.stderr
    assert calls(env) == []


def test_rls_from_the_principal_turns_on_cors_credentials(tmp_path: Path) -> None:
    env = base_env(tmp_path, POWERBI_RLS_USERNAME_SOURCE="Principal")

    result = run(env)

    assert result.returncode == 0, result.stderr
    (credentials,) = the(calls(env), "functionapp", "cors", "credentials")
    assert options(credentials)["--enable"] == ["true"]
    assert state(env)["cors_credentials"]["contoso-embed"] is True
    assert "CORS credentials: on" in result.stdout
    plain = base_env(tmp_path / "plain")
    (tmp_path / "plain").mkdir()
    assert run(plain).returncode == 0
    assert the(calls(plain), "functionapp", "cors", "credentials") == []


def test_any_origin_cannot_carry_the_sign_in_cookie(tmp_path: Path) -> None:
    env = base_env(tmp_path, CORS_ORIGINS="*", ALLOW_ANY_ORIGIN="true", POWERBI_RLS_USERNAME_SOURCE="principal")

    result = run(env)

    assert result.returncode != 0
    assert "cannot carry the sign-in cookie" in result.stderr
    assert calls(env) == []
