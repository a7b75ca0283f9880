// The operator's bearer token. It lives in this tab's sessionStorage (gone when the tab closes,
// never shared with other tabs) and leaves the page only in the Authorization header of API
// calls: never in a URL (history, logs, Referer) and never in a cookie, so no other site can
// make the browser send it (CSRF has nothing to ride on).
const TOKEN_KEY = "timer-console.token";

export function storedToken(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function storeToken(token: string): void {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function forgetToken(): void {
  sessionStorage.removeItem(TOKEN_KEY);
}
