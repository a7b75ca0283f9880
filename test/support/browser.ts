// A real browser for the console's tests: Debian's Chromium (/usr/bin/chromium, or
// CHROMIUM_PATH), headless, driven by playwright-core. Nothing is downloaded: playwright-core
// ships no browser, and the flags keep Chromium off the network (this machine has none, and
// its background fetches would only be refused).
import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { type Browser, chromium, type Page } from "playwright-core";
import { REPO_ROOT } from "../../scripts/repo-root.js";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

/** Where the console tests write their screenshots (the README links here); CONSOLE_SCREENSHOTS overrides. */
export const SCREENSHOT_DIR = process.env.CONSOLE_SCREENSHOTS ?? join(REPO_ROOT, "test-results", "console");

export async function launchChromium(): Promise<Browser> {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `no Chromium at ${CHROMIUM}: apt-get install chromium (.ci/run installs it), or set CHROMIUM_PATH`,
    );
  }
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      // Tests run as root in CI, where Chromium's sandbox cannot start.
      "--no-sandbox",
      "--disable-gpu",
      "--disable-dev-shm-usage",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/**
 * What the page reported that a user would not see: uncaught errors and console errors
 * (a Content-Security-Policy violation is one). A test asserts the list stays empty.
 */
export function collectPageErrors(page: Page): string[] {
  const errors: string[] = [];
  page.on("pageerror", (err) => errors.push(`pageerror: ${err.message}`));
  page.on("console", (msg) => {
    if (msg.type() === "error") errors.push(`console: ${msg.text()}`);
  });
  return errors;
}

/** Saves a full-page screenshot as SCREENSHOT_DIR/<name>.png; returns its path. */
export async function screenshot(page: Page, name: string): Promise<string> {
  await mkdir(SCREENSHOT_DIR, { recursive: true });
  const path = join(SCREENSHOT_DIR, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}
