#!/usr/bin/env node
// Builds the operator console (services/admin/console) into services/admin/console/dist, which
// the admin service serves on CONSOLE_PORT (services/admin/src/console-server.ts):
//   src/main.tsx -> dist/app.js (+ app.js.map), console.css -> dist/app.css, index.html copied.
// Runs on `npm ci`/`npm install` (the "prepare" script), `npm run build:console` and before
// `npm start` spawns the services. Plain JavaScript on esbuild's API, so it needs neither tsx nor
// anything of devDependencies: the images build it with `npm ci --omit=dev`.
//
//   node scripts/build-console.mjs    builds, or exits 1 naming what failed
import { copyFile, mkdir, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const CONSOLE_DIR = fileURLToPath(new URL("../services/admin/console/", import.meta.url));

/** Where the built console is written. */
export const CONSOLE_DIST = join(CONSOLE_DIR, "dist");

/**
 * Builds the console into dist/. The new build is written next to it and put in place at the
 * end, so a running admin never serves half of one build and a failed build leaves the last one.
 * Throws with esbuild's messages when a source does not compile.
 * @param {{ consoleDir?: string, quiet?: boolean }} [opts] consoleDir: another console's folder (tests)
 * @returns {Promise<{ dist: string }>}
 */
export async function buildConsole(opts = {}) {
  const dir = opts.consoleDir ?? CONSOLE_DIR;
  const dist = join(dir, "dist");
  const next = join(dir, `.dist-${process.pid}`);
  await rm(next, { recursive: true, force: true });
  await mkdir(next, { recursive: true });
  try {
    const common = {
      bundle: true,
      minify: true,
      sourcemap: "linked",
      logLevel: opts.quiet ? "silent" : "warning",
      // Never a silent partial result: any error fails the build.
      write: true,
    };
    // Every step settles before the temporary folder is removed on a failure.
    const steps = await Promise.allSettled([
      build({
        ...common,
        entryPoints: [join(dir, "src/main.tsx")],
        outfile: join(next, "app.js"),
        format: "esm",
        platform: "browser",
        target: "es2022",
        jsx: "automatic",
        jsxImportSource: "preact",
        // process.env.NODE_ENV is what libraries test for their production builds.
        define: { "process.env.NODE_ENV": '"production"' },
      }),
      build({
        ...common,
        entryPoints: [join(dir, "console.css")],
        outfile: join(next, "app.css"),
        loader: { ".css": "css" },
      }),
      copyFile(join(dir, "index.html"), join(next, "index.html")),
    ]);
    const failed = steps.find((step) => step.status === "rejected");
    if (failed) throw failed.reason;
    await replaceDir(next, dist);
  } catch (err) {
    await rm(next, { recursive: true, force: true });
    throw err;
  }
  return { dist };
}

/** Puts `next` in place of `dist`; another build finishing at the same moment is retried around. */
async function replaceDir(next, dist) {
  for (let attempt = 0; ; attempt++) {
    const old = `${dist}.old-${process.pid}-${attempt}`;
    try {
      await rename(dist, old);
    } catch (err) {
      if (err.code !== "ENOENT") throw err;
    }
    try {
      await rename(next, dist);
      await rm(old, { recursive: true, force: true });
      return;
    } catch (err) {
      await rm(old, { recursive: true, force: true });
      if ((err.code !== "ENOTEMPTY" && err.code !== "EEXIST") || attempt >= 5) throw err;
    }
  }
}

/** The esbuild messages of a failed build, or the error's own message. */
function describe(err) {
  const errors = err && Array.isArray(err.errors) ? err.errors : [];
  if (errors.length === 0) return err instanceof Error ? err.message : String(err);
  return errors
    .map((e) =>
      e.location ? `${e.location.file}:${e.location.line}:${e.location.column}: ${e.text}` : e.text,
    )
    .join("\n");
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const started = Date.now();
  try {
    const { dist } = await buildConsole({ quiet: true });
    console.log(`console built in ${Date.now() - started} ms: ${dist}`);
  } catch (err) {
    console.error(`building the console failed:\n${describe(err)}`);
    process.exit(1);
  }
}
