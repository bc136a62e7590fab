"""deploy/deploy.sh --telemetry against the stand-in az: a workspace-based Application Insights (or an
existing one by name), its connection string and the host's OpenTelemetry mode as app settings, and the
workbook; a second run creates nothing; without --telemetry, nothing of it is touched."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.test_deploy import FAKE_AZ, REPO, base_env, calls, changes, options, run, state, the, words

INSIGHTS = "contoso-embed-insights"
WORKSPACE = "contoso-embed-logs"


def telemetry_settings(recorded: list[dict[str, Any]]) -> dict[str, str]:
    """What the app-settings calls set beside the POWERBI_* ones."""
    sent: dict[str, str] = {}
    for call in the(recorded, "functionapp", "config", "appsettings", "set"):
        sent |= dict(pair.split("=", 1) for pair in options(call)["--settings"])
    return {k: v for k, v in sent.items() if not k.startswith(("POWERBI_", "PYTHON_THREADPOOL"))}


def test_without_telemetry_nothing_of_it_is_touched(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    result = run(env)
    assert result.returncode == 0, result.stderr
    recorded = calls(env)
    assert not [c for c in recorded if words(c)[0] in ("monitor", "deployment")]
    assert telemetry_settings(recorded) == {}


@dataclass(frozen=True)
class Runs:
    env: dict[str, str]
    first: list[dict[str, Any]]
    second: list[dict[str, Any]]
    second_stdout: str


@pytest.fixture(scope="module")
def twice(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    env = base_env(tmp_path_factory.mktemp("deploy-telemetry"))
    first = run(env, "--telemetry")
    assert first.returncode == 0, first.stderr
    first_calls = calls(env)
    second = run(env, "--telemetry")
    assert second.returncode == 0, second.stderr
    return Runs(env, first_calls, calls(env)[len(first_calls) :], second.stdout)


def test_creates_a_workspace_based_application_insights(twice: Runs) -> None:
    (workspace,) = the(twice.first, "monitor", "log-analytics", "workspace", "create")
    assert options(workspace)["--workspace-name"] == [WORKSPACE]
    (insights,) = the(twice.first, "monitor", "app-insights", "component", "create")
    made = options(insights)
    assert made["--app"] == [INSIGHTS]
    assert made["--workspace"] == [state(twice.env)["workspaces"][WORKSPACE]["id"]]


def test_sets_the_connection_string_and_the_hosts_opentelemetry_mode(twice: Runs) -> None:
    connection = state(twice.env)["insights"][INSIGHTS]["connectionString"]
    assert telemetry_settings(twice.first) == {
        "APPLICATIONINSIGHTS_CONNECTION_STRING": connection,
        "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": "false",
        "AzureFunctionsJobHost__telemetryMode": "OpenTelemetry",
    }
    # The settings reach the app after it exists, and the code is deployed after them.
    names = [words(c) for c in twice.first]
    settings_at = max(i for i, w in enumerate(names) if w == ("functionapp", "config", "appsettings", "set"))
    assert (
        names.index(("functionapp", "create"))
        < settings_at
        < names.index(("functionapp", "deployment", "source", "config-zip"))
    )


def test_deploys_the_workbook_on_application_insights_and_updates_the_same_one(twice: Runs) -> None:
    deployed = state(twice.env)["deployed"]
    (key,) = deployed  # two runs, one workbook
    first, second = deployed[key]
    assert first == second
    assert first["type"] == "Microsoft.Insights/workbooks" and first["kind"] == "shared"
    insights_id = state(twice.env)["insights"][INSIGHTS]["id"]
    assert first["properties"]["sourceId"] == insights_id
    book = json.loads(first["properties"]["serializedData"])
    expected = json.loads((REPO / "deploy" / "workbook.json").read_text())
    assert book["items"] == expected["items"]
    assert book["fallbackResourceIds"] == [insights_id]


def test_a_second_run_creates_nothing(twice: Runs) -> None:
    made = [w for w in changes(twice.second) if w[0] != "deployment"]  # the workbook's deployment updates it
    assert made == []
    assert f"application insights {INSIGHTS}: exists, reused" in twice.second_stdout
    assert f"log analytics workspace {WORKSPACE}: exists, reused" in twice.second_stdout


def test_an_existing_application_insights_is_used_by_name(tmp_path: Path) -> None:
    env = base_env(tmp_path, APP_INSIGHTS_NAME="shared-insights", LOG_WORKSPACE_NAME="shared-logs")
    fake = [sys.executable, str(FAKE_AZ / "fake_az.py")]
    group = ["group", "create", "--name", "rg-embed", "--location", "westeurope"]
    workspace = ["monitor", "log-analytics", "workspace", "create", "--workspace-name", "shared-logs"]
    for argv in (group, [*workspace, "--resource-group", "rg-embed", "--location", "westeurope"]):
        subprocess.run([*fake, *argv], env=env, check=True, capture_output=True)  # noqa: S603
    workspace_id = state(env)["workspaces"]["shared-logs"]["id"]
    component = ["monitor", "app-insights", "component", "create", "--app", "shared-insights", "-g", "rg-embed"]
    component += ["--location", "westeurope", "--kind", "web", "--workspace", workspace_id]
    subprocess.run([*fake, *component], env=env, check=True, capture_output=True)  # noqa: S603
    before = len(calls(env))

    result = run(env, "--telemetry")
    assert result.returncode == 0, result.stderr
    recorded = calls(env)[before:]
    assert not the(recorded, "monitor", "app-insights", "component", "create")
    assert "application insights shared-insights: exists, reused" in result.stdout
    connection = state(env)["insights"]["shared-insights"]["connectionString"]
    assert telemetry_settings(recorded)["APPLICATIONINSIGHTS_CONNECTION_STRING"] == connection


def test_dry_run_shows_the_telemetry_commands(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    result = run(env, "--dry-run", "--telemetry")
    assert result.returncode == 0, result.stderr
    assert "az monitor app-insights component create --app contoso-embed-insights" in result.stdout
    assert "az deployment group create --resource-group rg-embed --name powerbi-embed-workbook" in result.stdout
    assert calls(env) == []
