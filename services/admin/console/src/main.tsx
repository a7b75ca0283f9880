// The operator console: sign in with a bearer token, then one page per on-call question
// (routes.ts). Everything it shows and changes goes through the public API (api.ts).
import { render } from "preact";
import { useCallback, useEffect, useState } from "preact/hooks";
import {
  type ConsoleConfig,
  createApi,
  errorText,
  loadConfig,
  type Session,
  SessionContext,
  useSession,
} from "./api.js";
import { Forbidden } from "./components.js";
import { AuditPage } from "./pages/audit.js";
import { FailedPage } from "./pages/failed.js";
import { GroupsPage } from "./pages/groups.js";
import { LoadPage } from "./pages/load.js";
import { MeshPage } from "./pages/mesh.js";
import { SchedulesPage } from "./pages/schedules.js";
import { TimerPage } from "./pages/timer.js";
import { ADMIN_PAGES, hrefOf, PAGE_TITLES, PAGES, type Route, useRoute } from "./routes.js";
import { forgetToken, storedToken, storeToken } from "./session.js";

function App() {
  const [config, setConfig] = useState<ConsoleConfig | undefined>(undefined);
  const [session, setSession] = useState<Session | undefined>(undefined);
  const [error, setError] = useState<string | undefined>(undefined);
  const [checking, setChecking] = useState(storedToken() !== null);

  const signOut = useCallback(() => {
    forgetToken();
    setSession(undefined);
  }, []);
  /** Asks the API who the token is; only a token it accepts is kept. */
  const signIn = async (token: string, cfg: ConsoleConfig) => {
    const api = createApi(token, signOut);
    try {
      const me = await api.admin.whoAmI({});
      storeToken(token);
      setError(undefined);
      setSession({ api, me, config: cfg, signOut });
    } catch (err) {
      forgetToken();
      setError(errorText(err));
    }
  };

  useEffect(() => {
    loadConfig()
      .then(async (cfg) => {
        setConfig(cfg);
        const token = storedToken();
        if (token) await signIn(token, cfg);
      })
      .catch((err: unknown) => setError(errorText(err)))
      .finally(() => setChecking(false));
  }, []);

  if (checking) return <p class="muted">Signing in…</p>;
  if (!session || !config) return <SignIn error={error} onSubmit={(t) => config && void signIn(t, config)} />;
  return (
    <SessionContext.Provider value={session}>
      <Shell />
    </SessionContext.Provider>
  );
}

function SignIn(props: { error: string | undefined; onSubmit: (token: string) => void }) {
  const [token, setToken] = useState("");
  return (
    <section class="sign-in">
      <h1>timer-mesh console</h1>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          if (token.trim()) props.onSubmit(token.trim());
        }}
      >
        <label>
          Bearer token{" "}
          <input
            name="token"
            type="password"
            autocomplete="off"
            value={token}
            onInput={(e) => setToken(e.currentTarget.value)}
            required
          />
        </label>
        <button type="submit">Sign in</button>
      </form>
      {props.error && (
        <p class="error" role="alert">
          {props.error}
        </p>
      )}
      <p class="muted">
        The token stays in this tab (session storage) and is sent only as an Authorization header. An admin
        token sees every page; a group token its groups' timers, schedules and load. `npm start` prints the
        development admin token.
      </p>
    </section>
  );
}

function Shell() {
  const { me, signOut, config } = useSession();
  const route = useRoute(me.admin ? "mesh" : "timer");
  return (
    <>
      <header class="top">
        <h1>timer-mesh</h1>
        <nav>
          {PAGES.map((p) => (
            <a key={p} href={hrefOf({ page: p })} aria-current={route.page === p ? "page" : undefined}>
              {PAGE_TITLES[p]}
            </a>
          ))}
        </nav>
        <div class="whoami" data-testid="whoami">
          <span>
            {me.name} · {me.admin ? "admin" : `groups ${me.groups.join(", ")}`}
            {me.authDisabled && <b class="bad-text"> · AUTH DISABLED</b>}
          </span>
          <span class="muted">{config.version}</span>
          <button type="button" onClick={signOut}>
            Sign out
          </button>
        </div>
      </header>
      <main>
        <Page route={route} admin={me.admin} />
      </main>
    </>
  );
}

function Page(props: { route: Route; admin: boolean }) {
  const { route } = props;
  if (ADMIN_PAGES.has(route.page) && !props.admin) return <Forbidden page={PAGE_TITLES[route.page]} />;
  switch (route.page) {
    case "mesh":
      return <MeshPage />;
    case "groups":
      return <GroupsPage />;
    case "timer":
      // Keyed by the timer, so its form starts from the looked-up ids.
      return (
        <TimerPage
          key={`${route.groupId}/${route.timerId}`}
          groupId={route.groupId ?? ""}
          timerId={route.timerId ?? ""}
        />
      );
    case "failed":
      return <FailedPage />;
    case "schedules":
      return <SchedulesPage />;
    case "load":
      return <LoadPage />;
    case "audit":
      return <AuditPage />;
  }
}

const root = document.getElementById("app");
if (root) {
  root.textContent = ""; // the "Loading…" line, shown until this script runs
  render(<App />, root);
}
