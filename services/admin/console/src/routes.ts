// Which page is shown, kept in the URL's fragment (#/timer/orders/t-1) so a page can be
// bookmarked and shared. The fragment names only pages, groups and timer ids: never the token.
import { useEffect, useState } from "preact/hooks";

export const PAGES = ["mesh", "groups", "timer", "failed", "schedules", "load", "audit"] as const;
export type PageName = (typeof PAGES)[number];

/** Pages whose every call is admin-only: a group token is shown why not, not an error. */
export const ADMIN_PAGES: ReadonlySet<PageName> = new Set(["mesh", "groups", "audit"]);

export const PAGE_TITLES: Record<PageName, string> = {
  mesh: "Mesh",
  groups: "Groups",
  timer: "Timer",
  failed: "Failed",
  schedules: "Schedules",
  load: "Load ahead",
  audit: "Audit",
};

export interface Route {
  page: PageName;
  /** Timer page: the timer looked up. */
  groupId?: string;
  timerId?: string;
}

export function parseRoute(hash: string): Route | undefined {
  const [page, ...rest] = hash.replace(/^#\/?/, "").split("/");
  const name = PAGES.find((p) => p === page);
  if (!name) return undefined;
  if (name === "timer" && rest.length === 2) {
    try {
      return { page: name, groupId: decodeURIComponent(rest[0]!), timerId: decodeURIComponent(rest[1]!) };
    } catch {
      return { page: name }; // a malformed escape: the lookup form, empty
    }
  }
  return { page: name };
}

export function hrefOf(route: Route): string {
  if (route.page === "timer" && route.groupId && route.timerId) {
    return `#/timer/${encodeURIComponent(route.groupId)}/${encodeURIComponent(route.timerId)}`;
  }
  return `#/${route.page}`;
}

export function navigate(route: Route): void {
  window.location.hash = hrefOf(route);
}

/** The current route; `fallback` when the fragment names no page. */
export function useRoute(fallback: PageName): Route {
  const [hash, setHash] = useState(window.location.hash);
  useEffect(() => {
    const onChange = () => setHash(window.location.hash);
    window.addEventListener("hashchange", onChange);
    return () => window.removeEventListener("hashchange", onChange);
  }, []);
  return parseRoute(hash) ?? { page: fallback };
}
