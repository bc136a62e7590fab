"""The steps of ``python -m shared.customers``: add (onboard), check and remove a customer.

``add`` makes what is missing, in order, and only that: the service principal profile (found by display
name), the profile's workspace (found by name, as the profile), the capacity assignment, the PBIX import
(skipped when the workspace has a report of the file's name; it replaces rather than duplicates), and the
directory entry. A second run finds everything and says nothing changed. A failure says what was done before
it and that running the same command again finishes the job.

``check`` asks Power BI, once per workspace and as the customer's profile, whether the workspace is visible:
the doctor runs the same check.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from shared.clock import Clock
from shared.customers.admin import PowerBIAdmin, Profile, Workspace
from shared.customers.directory import Customer
from shared.customers.store import Store, same_entry
from shared.errors import EmbedError, PowerBIRefused

IMPORT_POLL_SECONDS = 5.0
IMPORT_TIMEOUT_SECONDS = 1800.0  # Power BI publishes a large PBIX in minutes
PROFILES_TENANT_SETTING = "Allow service principals to create and use profiles"


@dataclass(frozen=True)
class Onboarding:
    """What ``add`` was asked to do."""

    customer_id: str
    name: str
    capacity_id: str | None = None
    pbix: Path | None = None


@dataclass
class Steps:
    """What a run has done so far, for its summary and for the message after a failure."""

    out: TextIO
    done: list[str] = field(default_factory=list)

    def did(self, text: str) -> None:
        self.done.append(text)
        print(f"  done  {text}", file=self.out)

    def asked(self, text: str) -> None:
        """A step left to the person (an app setting to change): counted as a change, printed as it is."""
        self.done.append("printed the directory entry")
        print(text, file=self.out)

    def found(self, text: str) -> None:
        print(f"  ok    {text}", file=self.out)

    def failed(self, error: EmbedError) -> int:
        print(f"  FAIL  {error.message}", file=self.out)
        hint = _hint(error)
        if hint:
            print(f"        {hint}", file=self.out)
        print("Done before the failure: " + ("; ".join(self.done) or "nothing"), file=self.out)
        print("Run the same command again to finish: it skips what is already done.", file=self.out)
        return 1


def _hint(error: EmbedError) -> str:
    upstream = error.upstream
    if upstream is None:
        return ""
    if upstream.status == 409:
        return "a workspace of that name exists in the tenant but this profile is not its member: choose another --name"
    if upstream.status in (401, 403):
        return (
            f"check the tenant settings 'Service principals can use Fabric APIs' and '{PROFILES_TENANT_SETTING}', "
            "and, for --capacity, that the app has Admin or Contributor rights on the capacity"
        )
    return ""


class Onboarder:
    def __init__(
        self,
        admin: PowerBIAdmin,
        store: Store,
        out: TextIO,
        clock: Clock,
        poll_seconds: float = IMPORT_POLL_SECONDS,
        timeout_seconds: float = IMPORT_TIMEOUT_SECONDS,
    ) -> None:
        self.admin, self.store, self.out, self.clock = admin, store, out, clock
        self.poll_seconds, self.timeout_seconds = poll_seconds, timeout_seconds

    # -- add ----------------------------------------------------------------------------------------------

    def add(self, plan: Onboarding) -> int:
        steps = Steps(self.out)
        print(
            f"Onboarding customer {plan.customer_id} ({plan.name}); the directory: {self.store.description}",
            file=self.out,
        )
        try:
            existing = self.store.get(plan.customer_id)
            profile = self._profile(plan, existing, steps)
            workspace = self._workspace(plan, profile, steps)
            if plan.capacity_id:
                self._capacity(workspace, plan.capacity_id, profile, steps)
            if plan.pbix:
                self._import(workspace, plan.pbix, profile, steps)
            customer = _entry(plan, existing, profile, workspace)
            if same_entry(existing, customer):
                steps.found(f"customer {customer.id} is in the {self.store.description}")
            elif self.store.writes:
                steps.did(self.store.put(customer, existing))
            else:
                steps.asked(self.store.put(customer, existing))
        except EmbedError as error:
            return steps.failed(error)
        if not steps.done:
            outcome = "is already onboarded: nothing changed"
        elif self.store.writes:
            outcome = "is onboarded"
        else:
            outcome = "is set up in Power BI; it is served once POWERBI_CUSTOMERS holds the object above"
        print(f"Customer {plan.customer_id} {outcome}.", file=self.out)
        return 0

    def _profile(self, plan: Onboarding, existing: Customer | None, steps: Steps) -> Profile:
        named = [p for p in self.admin.profiles() if p.display_name == plan.name]
        if len(named) > 1:
            ids = ", ".join(p.id for p in named)
            raise PowerBIRefused(f"several profiles are named {plan.name!r} ({ids}): delete the extra ones first")
        if existing is not None and existing.profile_id and (not named or named[0].id != existing.profile_id):
            raise PowerBIRefused(
                f"customer {existing.id} is in the {self.store.description} with profile {existing.profile_id}, "
                f"not the profile named {plan.name!r}: remove the customer first, or give its profile's name"
            )
        if named:
            steps.found(f"profile {plan.name} ({named[0].id})")
            return named[0]
        profile = self.admin.create_profile(plan.name)
        steps.did(f"created profile {plan.name} ({profile.id})")
        return profile

    def _workspace(self, plan: Onboarding, profile: Profile, steps: Steps) -> Workspace:
        found = self.admin.workspaces_named(plan.name, profile.id)
        if found:
            steps.found(f"workspace {plan.name} ({found[0].id}) of the profile")
            return found[0]
        workspace = self.admin.create_workspace(plan.name, profile.id)
        steps.did(f"created workspace {plan.name} ({workspace.id}) as the profile")
        return workspace

    def _capacity(self, workspace: Workspace, capacity_id: str, profile: Profile, steps: Steps) -> None:
        if workspace.capacity_id == capacity_id:
            steps.found(f"workspace {workspace.name} is on capacity {capacity_id}")
            return
        self.admin.assign_capacity(workspace.id, capacity_id, profile.id)
        steps.did(f"assigned workspace {workspace.name} to capacity {capacity_id}")

    def _import(self, workspace: Workspace, pbix: Path, profile: Profile, steps: Steps) -> None:
        report = pbix.name.removesuffix(".pbix")
        if report.lower() in self.admin.report_names(workspace.id, profile.id):
            steps.found(f"report {report} is in workspace {workspace.name}")
            return
        import_id = self.admin.start_import(workspace.id, pbix, profile.id)
        deadline = self.clock.monotonic() + self.timeout_seconds
        while (state := self.admin.import_state(workspace.id, import_id, profile.id)).state == "Publishing":
            if self.clock.monotonic() >= deadline:
                raise PowerBIRefused(
                    f"the import of {pbix.name} ({import_id}) was still publishing after {self.timeout_seconds:.0f} s"
                )
            self.clock.sleep(self.poll_seconds)
        if state.state != "Succeeded":
            raise PowerBIRefused(f"Power BI could not import {pbix.name} ({import_id}): import state {state.state}")
        steps.did(f"imported {pbix.name} into workspace {workspace.name} (report {', '.join(state.report_ids)})")

    # -- remove -------------------------------------------------------------------------------------------

    def remove(self, customer_id: str, delete_workspace: bool) -> int:
        steps = Steps(self.out)
        try:
            customer = self.store.get(customer_id)
            if customer is None:
                where = self.store.description
                print(f"Customer {customer_id} is not in the {where}: nothing to remove.", file=self.out)
                return 0
            if delete_workspace:
                self._delete_workspaces(customer, steps)
            steps.did(self.store.delete(customer))
        except EmbedError as error:
            return steps.failed(error)
        return 0

    def _delete_workspaces(self, customer: Customer, steps: Steps) -> None:
        """The workspaces, then the profile: a profile deleted first would leave its workspaces unreachable."""
        profile = customer.profile_id
        if profile and profile not in {p.id for p in self.admin.profiles()}:
            steps.found(f"profile {profile} was already deleted (with it, access to its workspaces)")
            return
        for workspace_id in customer.workspaces:
            if self.admin.delete_workspace(workspace_id, profile):
                steps.did(f"deleted workspace {workspace_id}")
            else:
                steps.found(f"workspace {workspace_id} was already deleted")
        if profile and self.admin.delete_profile(profile):
            steps.did(f"deleted profile {profile}")

    # -- check --------------------------------------------------------------------------------------------

    def check(self, customers: Iterable[Customer]) -> int:
        failures = 0
        for customer in customers:
            for ok, text, fix in check_customer(self.admin, customer):
                print(f"  {'ok' if ok else 'FAIL':<5} {text}", file=self.out)
                if fix:
                    print(f"        fix: {fix}", file=self.out)
                failures += not ok
        return 1 if failures else 0


def _entry(plan: Onboarding, existing: Customer | None, profile: Profile, workspace: Workspace) -> Customer:
    """The directory entry: the workspace first (the default), keeping what the entry already lists."""
    if existing is None:
        return Customer(plan.customer_id, (workspace.id,), profile.id, display_name=plan.name)
    workspaces = existing.workspaces if workspace.id in existing.workspaces else (workspace.id, *existing.workspaces)
    return Customer(existing.id, workspaces, profile.id, existing.reports, existing.dashboards, plan.name)


CheckLine = tuple[bool, str, str]  # ok, what, fix


def check_customer(admin: PowerBIAdmin, customer: Customer) -> list[CheckLine]:
    """Whether the customer's profile (or the app, without one) sees each of its workspaces: one call each."""
    who = f"profile {customer.profile_id}" if customer.profile_id else "the app itself (no profile)"
    lines: list[CheckLine] = []
    for workspace_id in customer.workspaces:
        where = f"customer {customer.id}: workspace {workspace_id} as {who}"
        try:
            found = admin.workspace(workspace_id, customer.profile_id)
        except EmbedError as error:
            lines.append((False, f"{where}: {error.message}", _check_fix(error, customer)))
            continue
        if found is None:
            fix = "add the profile (or the app) to the workspace as Admin or Member, or correct the directory entry"
            lines.append((False, f"{where}: not visible", fix))
        else:
            lines.append((True, f"{where}: visible ({found.name})", ""))
    return lines


def _check_fix(error: EmbedError, customer: Customer) -> str:
    upstream = error.upstream
    if upstream is not None and upstream.status == 401 and customer.profile_id:
        return (
            f"the profile may be deleted or belong to another app; check '{PROFILES_TENANT_SETTING}' in the Power BI "
            "admin portal, and the customer's profileId"
        )
    return ""
