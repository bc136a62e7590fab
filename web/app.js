// Static-site sample: embed a report or dashboard with embed.js, which gets the token from the function,
// keeps it fresh and shows the function's errors in the container.
//
// Query parameters (all optional but id):
//   id              the report or dashboard id
//   type            "report" (default) or "dashboard"
//   workspaceId     its workspace, when not the function's default one
//   api             the function's base URL, default http://127.0.0.1:7071/api; "/api" behind Static Web Apps
//   key             a function key, sent as the x-functions-key header (not a secret in a browser)
//   refreshMinutes  refresh the token when this many minutes or fewer remain (default 10)
//   checkSeconds    how often to check (default 30); the page also checks when its tab regains focus
import { embed, ERROR_EVENT, TOKEN_EVENT } from "./embed.js";

const params = new URLSearchParams(window.location.search);
const number = (name, fallback) => {
  const value = Number.parseFloat(params.get(name));
  return Number.isFinite(value) && value >= 0 ? value : fallback;
};
const settings = {
  id: params.get("id") || "",
  type: params.get("type") === "dashboard" ? "dashboard" : "report",
  workspaceId: params.get("workspaceId") || "",
  api: (params.get("api") || "http://127.0.0.1:7071/api").replace(/\/+$/, ""),
  key: params.get("key") || "",
  refreshMinutes: number("refreshMinutes", 10),
  checkSeconds: number("checkSeconds", 30),
};
// Behind Static Web Apps (or any host that forwards /api on the page's own origin) sign-in is on this origin.
const sameOrigin = new URL(settings.api, window.location.href).origin === window.location.origin;

const container = document.getElementById("embed-container");
const statusLine = document.getElementById("status");
const userLine = document.getElementById("user");
let expiry = null; // the current token's expiration, from embed.js's TOKEN_EVENT
const time = (iso) => new Date(iso).toLocaleTimeString();
const showStatus = (text) => { statusLine.textContent = text; };

function link(text, href) {
  const a = document.createElement("a");
  a.textContent = text;
  a.href = href;
  return a;
}

// Static Web Apps (and its CLI) say who is signed in at /.auth/me: {"clientPrincipal": {...} | null}.
async function showUser() {
  const here = window.location.pathname + window.location.search;
  let principal = null;
  try {
    const response = await fetch("/.auth/me", { cache: "no-store" });
    principal = response.ok ? (await response.json()).clientPrincipal : null;
  } catch (notThere) {
    return;
  }
  if (principal) {
    const roles = principal.userRoles.filter((r) => r !== "anonymous" && r !== "authenticated");
    userLine.replaceChildren(
      `Signed in as ${principal.userDetails}${roles.length ? ` (roles: ${roles.join(", ")})` : ""}. `,
      link("Sign out", `/.auth/logout?post_logout_redirect_uri=${encodeURIComponent(here)}`),
    );
  } else {
    userLine.replaceChildren("Not signed in. ", link("Sign in", `/.auth/login/aad?post_login_redirect_uri=${encodeURIComponent(here)}`));
  }
  userLine.hidden = false;
}

container.addEventListener(TOKEN_EVENT, (event) => {
  const { reason, expiration } = event.detail;
  expiry = expiration;
  if (reason === "embed") {
    showStatus(`Got a token (it expires at ${time(expiration)}); embedding ${settings.type} ${settings.id}…`);
  } else {
    showStatus(`Token ${reason === "expired" ? "renewed after it expired" : "refreshed"} at ` +
      `${time(new Date().toISOString())}; it expires at ${time(expiration)}.`);
  }
});
container.addEventListener(ERROR_EVENT, (event) => {
  // embed.js shows the message in the container; on a refresh the item keeps its token and the next check retries.
  if (event.detail.phase === "embed") showStatus(`No ${settings.type} embedded.`);
});

async function start() {
  if (sameOrigin) showUser();
  if (!settings.id) {
    showStatus(`Add ?id=<${settings.type} id> to this page's address (and &type=dashboard for a dashboard).`);
    return;
  }
  showStatus(`Fetching an embed token for ${settings.type} ${settings.id}…`);
  let embedded;
  try {
    embedded = await embed(container, {
      endpoint: settings.api,
      type: settings.type,
      id: settings.id,
      workspaceId: settings.workspaceId || undefined,
      headers: settings.key ? { "x-functions-key": settings.key } : {},
      marginMinutes: settings.refreshMinutes,
      checkSeconds: settings.checkSeconds,
    });
  } catch (error) {
    return; // shown in the container; the status line says so (ERROR_EVENT above)
  }
  embedded.on("loaded", () => {
    showStatus(`The ${settings.type} loaded. Its token expires at ${time(expiry)}.`);
  });
}

start();
