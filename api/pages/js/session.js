// The bearer token a page calls the API with.
//
// It arrives in the URL fragment (`/#token=…`, which browsers never send to
// a server) or is pasted into the page. It is kept in this tab's session
// storage, so a reload keeps it and closing the tab forgets it, and it is
// removed from the address bar at once so it does not end up in a shared
// link, a screenshot or the history.

const KEY = "checkline.token";

/** Moves a token from the URL fragment into session storage. */
export function takeFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  if (token) {
    sessionStorage.setItem(KEY, token.trim());
    history.replaceState(null, "", location.pathname + location.search);
  }
}

export const token = () => sessionStorage.getItem(KEY);

export function setToken(value) {
  sessionStorage.setItem(KEY, value.trim());
}

export function forget() {
  sessionStorage.removeItem(KEY);
}

/**
 * The token's claims, read for display only (the API checks the signature):
 * `{sub, roles, exp}`, or null when there is no readable token.
 */
export function claims(value = token()) {
  if (!value) return null;
  const part = value.split(".")[1];
  if (!part) return null;
  try {
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    const payload = JSON.parse(new TextDecoder().decode(bytes));
    return {
      sub: typeof payload.sub === "string" ? payload.sub : "",
      roles: Array.isArray(payload.roles) ? payload.roles : [],
      exp: typeof payload.exp === "number" ? payload.exp : null,
    };
  } catch {
    return null;
  }
}

/** True when the token's `exp` has passed (a few seconds of slack). */
export function expired(c = claims()) {
  return !!c && c.exp !== null && c.exp * 1000 < Date.now() - 5000;
}

/** Session-scoped JSON values (a cart, a checkout in progress). */
export const stash = {
  get(key) {
    try {
      return JSON.parse(sessionStorage.getItem(key) ?? "null");
    } catch {
      return null;
    }
  },
  set(key, value) {
    sessionStorage.setItem(key, JSON.stringify(value));
  },
  remove(key) {
    sessionStorage.removeItem(key);
  },
};
