// Static-site sample: get an embed token from the function, embed the report or dashboard with
// powerbi-client, and keep the token fresh.
//
// Query parameters (all optional but id):
//   id              the report or dashboard id
//   type            "report" (default) or "dashboard"
//   workspaceId     its workspace, when not the function's default one
//   api             the function's base URL, default http://127.0.0.1:7071/api
//   key             a function key, sent as the x-functions-key header (not a secret in a browser)
//   refreshMinutes  refresh the token when this many minutes or fewer remain (default 10)
//   checkSeconds    how often to check (default 30); the page also checks when its tab regains focus
"use strict";

(function () {
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

  const models = window["powerbi-client"].models;
  const container = document.getElementById("embed-container");
  const statusLine = document.getElementById("status");
  const errorBox = document.getElementById("error");
  let embedded = null; // the powerbi-client Report or Dashboard
  let current = null; // the function's latest answer: accessToken, expiration, tokenId, ...
  let pending = null; // the refresh under way, so that a timer and a focus event share one

  const time = (iso) => new Date(iso).toLocaleTimeString();
  const showStatus = (text) => { statusLine.textContent = text; };
  const showError = (text) => { errorBox.textContent = text; errorBox.hidden = false; };
  const clearError = () => { errorBox.hidden = true; errorBox.textContent = ""; };

  // GET a token; throws an Error whose message is plain words for the person reading the page.
  async function fetchToken() {
    const url = new URL(`${settings.api}/embed/${settings.type}s/${encodeURIComponent(settings.id)}`);
    if (settings.workspaceId) url.searchParams.set("workspaceId", settings.workspaceId);
    let response;
    try {
      response = await fetch(url, {
        cache: "no-store",
        headers: settings.key ? { "x-functions-key": settings.key } : {},
      });
    } catch (networkOrCors) {
      throw new Error(`Could not reach the embed-token function at ${settings.api}. ` +
        "Is it running, and does it allow this page's origin (Host.CORS)?");
    }
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const message = body && body.error && body.error.message;
      throw new Error(message || `The embed-token function answered HTTP ${response.status}.`);
    }
    return body;
  }

  function minutesLeft() {
    return (Date.parse(current.expiration) - Date.now()) / 60000;
  }

  // Fetch a token and hand it to the embed; after TokenExpired the embed is reloaded with it too.
  function refresh(reload) {
    pending = pending || (async () => {
      try {
        const next = await fetchToken();
        // The function reuses a token while it has POWERBI_MIN_TOKEN_MINUTES left: only a new one is news.
        if (next.tokenId !== current.tokenId || reload) {
          await embedded.setAccessToken(next.accessToken);
          current = next;
        }
        if (reload) await embedded.reload();
        clearError();
        showStatus(`Token ${reload ? "renewed after it expired" : "refreshed"} at ` +
          `${time(new Date().toISOString())}; it expires at ${time(current.expiration)}.`);
      } catch (error) {
        showError(error.message); // the embed keeps its token; the next check tries again
      } finally {
        pending = null;
      }
    })();
    return pending;
  }

  function refreshIfDue() {
    if (embedded && current && minutesLeft() <= settings.refreshMinutes) refresh(false);
  }

  async function start() {
    if (!settings.id) {
      showStatus(`Add ?id=<${settings.type} id> to this page's address (and &type=dashboard for a dashboard).`);
      return;
    }
    showStatus(`Fetching an embed token for ${settings.type} ${settings.id}…`);
    try {
      current = await fetchToken();
    } catch (error) {
      showStatus(`No ${settings.type} embedded.`);
      showError(error.message);
      return;
    }
    embedded = window.powerbi.embed(container, {
      type: current.type,
      id: current.id,
      embedUrl: current.embedUrl,
      accessToken: current.accessToken,
      tokenType: models.TokenType.Embed,
    });
    showStatus(`Got a token (it expires at ${time(current.expiration)}); embedding ${current.type} ${current.id}…`);
    embedded.on("loaded", () => {
      showStatus(`The ${current.type} loaded. Its token expires at ${time(current.expiration)}.`);
    });
    embedded.on("error", (event) => {
      const detail = event.detail || {};
      const expired = models.CommonErrorCodes.TokenExpired;
      if (detail.message === expired || detail.errorCode === expired) {
        refresh(true);
      } else {
        showError(detail.detailedMessage || detail.message || "Power BI could not show this item.");
      }
    });
    window.setInterval(refreshIfDue, Math.max(settings.checkSeconds, 0.1) * 1000);
    window.addEventListener("focus", refreshIfDue);
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") refreshIfDue();
    });
  }

  start();
})();
