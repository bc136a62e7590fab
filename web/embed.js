// embed.js: the code every static site writes around powerbi-client, once.
//
// An ES module with no build step and no dependency but powerbi-client (loaded before it, as the page's
// <script src=".../powerbi.min.js">, which defines window.powerbi and window["powerbi-client"]). Copy it next
// to your page and import it:
//
//   import { embed, embedReports, stop, ERROR_EVENT } from "./embed.js";
//   const report = await embed(document.getElementById("report"), { endpoint: "/api", id: reportId });
//
// What it does for you:
// * powerbi.bootstrap(container) at once, so Power BI's frame loads while the token is fetched;
// * fetches the token from the embed-token function, embeds, and returns the embedded object;
// * refreshes the token with setAccessToken when less than `marginMinutes` remain: a timer checks every
//   `checkSeconds` against the wall clock, and so do the page's `visibilitychange` and `focus` events, so a
//   laptop that slept past the refresh time (its timers fire late, or not at all until it wakes) catches up;
// * on Power BI's TokenExpired error, fetches a new token, sets it and reloads (one that arrives while a
//   refresh is under way is not lost: the item reloads once that refresh has set its token);
// * on an answer with Retry-After (429, 503, and any other transient fault: 502 upstream_unreachable,
//   504 upstream_timeout), and on 429 or 503 without one, waits that long (bounded) before trying again;
// * shows the function's error message in the container and raises ERROR_EVENT on it (detail: an
//   EmbedTokenError with code, status, requestId, retryAfter, phase);
// * stop() clears every timer and listener it set and cancels a fetch under way. A promise of embed() or
//   embedReports() that has not settled yet (the first token still being fetched, or a Retry-After being
//   waited out) rejects with an EmbedStoppedError (code "stopped"), and the bootstrapped frame is removed;
//   items already embedded stay as they are, with their current token.
//
// The function's contract (GET /api/openapi.json): a token answer has accessToken, tokenId and expiration
// (ISO 8601); an error answer is {"error": {"code", "message", "requestId"?}}, with Retry-After when trying
// again later may help.

/** Raised on the container when the token could not be had; its detail is an EmbedTokenError. */
export const ERROR_EVENT = "powerbi-embed-error";
/** Raised on the container after each new token; detail: {reason, tokenId, expiration}. */
export const TOKEN_EVENT = "powerbi-embed-token";
/** The class of the element that shows an error inside the container. */
export const ERROR_CLASS = "powerbi-embed-error";

const DEFAULTS = Object.freeze({
  marginMinutes: 10, // the function hands out tokens with at least POWERBI_MIN_TOKEN_MINUTES (10) left
  checkSeconds: 30,
  retries: 3, // tries after a 429/503 before giving up on the first token
  maxWaitSeconds: 300, // the longest Retry-After obeyed; longer ones are cut to this
  defaultWaitSeconds: 5, // when a 429/503 has no usable Retry-After
});
const TOKEN_EXPIRED = "TokenExpired"; // powerbi-models' CommonErrorCodes.TokenExpired
const EMBED_TOKEN_TYPE = 1; // powerbi-models' TokenType.Embed

/** Why no token: the function's error (code, message, requestId), or "network_error" when it was not reached. */
export class EmbedTokenError extends Error {
  constructor(message, { code, status = 0, requestId = null, retryAfter = null, phase = "embed" } = {}) {
    super(message);
    this.name = "EmbedTokenError";
    this.code = code;
    this.status = status;
    this.requestId = requestId;
    this.retryAfter = retryAfter; // seconds, when the answer had Retry-After (or was a 429 or 503); else null
    this.phase = phase; // "embed" (no item shown) or "refresh" (the item keeps its current token)
  }
}

/** How embed() and embedReports() reject when stop() is called before they have embedded anything. */
export class EmbedStoppedError extends Error {
  constructor() {
    super("stop() was called before the item was embedded.");
    this.name = "EmbedStoppedError";
    this.code = "stopped";
  }
}

const sessions = new Set();

/**
 * Embed one report or dashboard.
 * @param {HTMLElement} container
 * @param {{endpoint: string, type?: "report"|"dashboard", id: string, workspaceId?: string, settings?: object,
 *          headers?: object, credentials?: RequestCredentials, marginMinutes?: number, checkSeconds?: number,
 *          retries?: number, maxWaitSeconds?: number, hostname?: string, powerbi?: object}} options
 * @returns {Promise<object>} the embedded Report or Dashboard; rejects with an EmbedTokenError
 */
export async function embed(container, options) {
  const type = options.type || "report";
  if (type !== "report" && type !== "dashboard") throw new TypeError(`embed.js embeds reports and dashboards, not ${type}`);
  if (!options.id) throw new TypeError("embed.js needs the item's id");
  const session = new Session(options, `${type}s/${encodeURIComponent(options.id)}`, [container], type);
  return (await session.start())[0];
}

/**
 * Embed several reports under one token (`?ids=`), each in its container (same order as ids); they are
 * refreshed together.
 * @param {HTMLElement[]} containers
 * @param {{endpoint: string, ids: string[], workspaceId?: string, settings?: object}} options and as embed()
 * @returns {Promise<object[]>} the embedded Reports, in the order of ids
 */
export async function embedReports(containers, options) {
  const ids = options.ids || [];
  if (!ids.length || ids.length !== containers.length) {
    throw new TypeError("embedReports needs one container per report id");
  }
  const session = new Session(options, `reports?ids=${ids.map(encodeURIComponent).join(",")}`, containers, "report");
  session.ids = ids;
  return session.start();
}

/** Stop refreshing: the embeds in `container` (any of a group), or every embed when no container is given. */
export function stop(container) {
  for (const session of [...sessions]) {
    if (!container || session.containers.includes(container)) session.stop();
  }
}

class Session {
  constructor(options, path, containers, type) {
    this.options = { ...DEFAULTS, ...options };
    this.powerbi = options.powerbi || globalThis.powerbi;
    if (!this.powerbi) throw new TypeError("embed.js needs powerbi-client: load powerbi.min.js before it");
    const base = new URL(String(options.endpoint || "/api").replace(/\/*$/, "/"), location.href);
    this.url = new URL(`embed/${path}`, base);
    if (options.workspaceId) this.url.searchParams.set("workspaceId", options.workspaceId);
    this.endpoint = base.href.replace(/\/$/, "");
    this.containers = containers;
    this.type = type;
    this.ids = [options.id];
    this.embeds = [];
    this.current = null; // the function's latest answer
    this.pending = null; // the refresh under way: a timer, an event and TokenExpired share one
    this.expired = new Set(); // embeds that reported TokenExpired and still wait for their reload
    this.waking = new Set(); // resolvers of the waits under way, so that stop() can end them
    this.aborter = new AbortController(); // cancels a fetch under way on stop()
    this.notBefore = 0; // after a 429/503, no refresh before this (ms since the epoch)
    this.timers = new Set();
    this.stopped = false;
    this.check = () => this.refreshIfDue();
    this.onVisible = () => { if (document.visibilityState === "visible") this.refreshIfDue(); };
  }

  async start() {
    sessions.add(this);
    // Bootstrap first: Power BI's frame and scripts load while the function is asked for a token.
    for (const container of this.containers) {
      this.powerbi.bootstrap(container, {
        type: this.type,
        hostname: this.options.hostname,
        settings: this.options.settings,
      });
    }
    try {
      this.current = await this.fetchWithRetries();
      if (this.stopped) throw new EmbedStoppedError();
    } catch (error) {
      const stopped = this.stopped;
      this.stop();
      for (const container of this.containers) {
        if (!stopped) this.fail(container, error); // stop() asked for it: no error to show
      }
      throw stopped ? new EmbedStoppedError() : error;
    }
    const items = this.items(this.current);
    this.embeds = this.containers.map((container, i) => {
      const item = items.get(String(this.ids[i]).toLowerCase()) || items.values().next().value;
      const embedded = this.powerbi.embed(container, {
        type: this.type,
        id: item.id,
        embedUrl: item.embedUrl,
        groupId: item.workspaceId,
        accessToken: this.current.accessToken,
        tokenType: EMBED_TOKEN_TYPE,
        settings: this.options.settings,
      });
      embedded.on("error", (event) => {
        const detail = (event && event.detail) || {};
        if (detail.message === TOKEN_EXPIRED || detail.errorCode === TOKEN_EXPIRED) {
          this.expired.add(embedded);
          this.refresh("expired");
        }
      });
      return embedded;
    });
    this.announce("embed");
    this.timers.add(setInterval(this.check, Math.max(Number(this.options.checkSeconds), 0.1) * 1000));
    window.addEventListener("focus", this.check);
    document.addEventListener("visibilitychange", this.onVisible);
    return this.embeds;
  }

  stop() {
    if (!this.stopped && !this.embeds.length) {
      // Nothing embedded yet: the bootstrapped frame would only wait forever, and so would a message.
      for (const container of this.containers) this.powerbi.reset(container);
      this.clear();
    }
    this.stopped = true;
    for (const timer of this.timers) {
      clearInterval(timer); // clearInterval and clearTimeout share one list of ids
    }
    this.timers.clear();
    for (const wake of this.waking) wake(); // a Retry-After wait ends now; its caller sees `stopped`
    this.waking.clear();
    this.aborter.abort();
    window.removeEventListener("focus", this.check);
    document.removeEventListener("visibilitychange", this.onVisible);
    sessions.delete(this);
  }

  /** id -> {id, workspaceId, embedUrl}, from a single-item answer or a several-reports one. */
  items(answer) {
    const list = answer.items || [{ id: answer.id, workspaceId: answer.workspaceId, embedUrl: answer.embedUrl }];
    return new Map(list.map((item) => [String(item.id).toLowerCase(), item]));
  }

  due() {
    return Date.parse(this.current.expiration) - Number(this.options.marginMinutes) * 60000;
  }

  refreshIfDue() {
    const now = Date.now();
    if (!this.stopped && this.current && now >= this.due() && now >= this.notBefore) this.refresh("refresh");
  }

  /** Fetch a token and set it on every embed; reload those that reported TokenExpired (``this.expired``).
   * One refresh at a time: a TokenExpired that arrives after this one took its list of embeds to reload is
   * kept, and a second refresh reloads it as soon as this one is done. */
  refresh(reason) {
    this.pending = this.pending || (async () => {
      let done = false;
      try {
        const next = await this.fetchToken("refresh");
        if (this.stopped) return;
        const reload = [...this.expired];
        this.expired.clear();
        // The function reuses a token while it has enough time left: only a new one is news, unless expired.
        if (next.tokenId !== this.current.tokenId || reload.length) {
          await Promise.all(this.embeds.map((embedded) => embedded.setAccessToken(next.accessToken)));
          this.current = next;
          await Promise.all(reload.map((embedded) => embedded.reload()));
          this.announce(reload.length ? "expired" : reason);
        }
        this.clear();
        done = true;
      } catch (caught) {
        if (this.stopped) return;
        const error = caught instanceof EmbedTokenError ? caught : new EmbedTokenError(
          "Power BI did not take the new token; the next check tries again.", { code: "sdk_error", phase: "refresh" });
        if (error.retryAfter !== null) this.backOff(error.retryAfter, () => this.refresh(reason));
        for (const container of this.containers) this.fail(container, error);
      } finally {
        this.pending = null;
      }
      // A TokenExpired came in while this refresh was setting the token: reload with a token fetched after it.
      if (done && this.expired.size && !this.stopped) this.refresh("expired");
    })();
    return this.pending;
  }

  backOff(seconds, then) {
    const wait = this.wait(seconds);
    this.notBefore = Date.now() + wait;
    this.later(wait, then);
  }

  wait(seconds) {
    const usable = Number.isFinite(seconds) && seconds >= 0 ? seconds : this.options.defaultWaitSeconds;
    return Math.min(usable, Number(this.options.maxWaitSeconds)) * 1000;
  }

  later(ms, then) {
    const timer = setTimeout(() => { this.timers.delete(timer); if (!this.stopped) then(); }, ms);
    this.timers.add(timer);
  }

  /** Wait `ms`, or until stop(): the caller checks `this.stopped` after. */
  sleep(ms) {
    return new Promise((resolve) => {
      const wake = () => { this.waking.delete(wake); resolve(); };
      this.waking.add(wake);
      this.later(ms, wake);
    });
  }

  /** The first token: a 429/503 is waited out (Retry-After) up to `retries` times. */
  async fetchWithRetries() {
    for (let attempt = 0; ; attempt += 1) {
      try {
        return await this.fetchToken("embed");
      } catch (error) {
        if (!(error instanceof EmbedTokenError) || error.retryAfter === null || attempt >= this.options.retries) {
          throw error;
        }
        for (const container of this.containers) this.fail(container, error, false);
        await this.sleep(this.wait(error.retryAfter));
        if (this.stopped) throw new EmbedStoppedError();
        this.clear();
      }
    }
  }

  async fetchToken(phase) {
    let response;
    try {
      response = await fetch(this.url, {
        cache: "no-store",
        credentials: this.options.credentials || "same-origin",
        headers: this.options.headers || {},
        signal: this.aborter.signal,
      });
    } catch (networkOrCors) {
      if (this.stopped) throw new EmbedStoppedError();
      throw new EmbedTokenError(
        `Could not reach the embed-token function at ${this.endpoint}. ` +
          "Is it running, and does it allow this page's origin (CORS)?",
        { code: "network_error", phase },
      );
    }
    const body = await response.json().catch(() => null);
    if (this.stopped) throw new EmbedStoppedError();
    if (response.ok && body && body.accessToken) return body;
    const error = (body && body.error) || {};
    // Worth waiting for: what the function says (Retry-After, on every transient fault), or a 429/503 without it.
    const told = response.headers.get("Retry-After");
    const retryable = told !== null || response.status === 429 || response.status === 503;
    throw new EmbedTokenError(error.message || `The embed-token function answered HTTP ${response.status}.`, {
      code: error.code || "http_error",
      status: response.status,
      requestId: error.requestId || null,
      retryAfter: retryable ? retryAfterSeconds(told) : null,
      phase,
    });
  }

  fail(container, error, raise = true) {
    let box = container.querySelector(`:scope > .${ERROR_CLASS}`);
    if (!box) {
      box = document.createElement("p");
      box.className = ERROR_CLASS;
      box.setAttribute("role", "alert");
      container.prepend(box);
    }
    box.textContent = error.message;
    if (raise) container.dispatchEvent(new CustomEvent(ERROR_EVENT, { bubbles: true, detail: error }));
  }

  clear() {
    for (const container of this.containers) {
      const box = container.querySelector(`:scope > .${ERROR_CLASS}`);
      if (box) box.remove();
    }
  }

  announce(reason) {
    const detail = { reason, tokenId: this.current.tokenId, expiration: this.current.expiration };
    for (const container of this.containers) {
      container.dispatchEvent(new CustomEvent(TOKEN_EVENT, { bubbles: true, detail }));
    }
  }
}

/** Retry-After in seconds (a number or an HTTP date), or NaN when there is none. */
function retryAfterSeconds(value) {
  if (!value) return Number.NaN;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return seconds;
  const date = Date.parse(value);
  return Number.isFinite(date) ? Math.max(0, (date - Date.now()) / 1000) : Number.NaN;
}
