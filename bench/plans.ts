// EXPLAIN (ANALYZE, BUFFERS) of the services' own statements, for the benchmarks: the store
// function (dispatch-store.ts's claimTimers, loadWindow...) runs against a stand-in pool that
// sends its exact SQL and parameters to EXPLAIN on a real connection instead, inside a
// transaction that is rolled back (EXPLAIN ANALYZE executes the statement: a claim's UPDATE
// must not stay). Then the plan is summed up: the index entries it read, the buffers it touched.
import type pg from "pg";

/** A node of EXPLAIN (FORMAT JSON), the fields used here. */
interface PlanNode {
  "Node Type": string;
  "Relation Name"?: string;
  "Index Name"?: string;
  "Index Cond"?: string;
  "Recheck Cond"?: string;
  Filter?: string;
  "Actual Rows": number;
  "Actual Loops": number;
  "Rows Removed by Filter"?: number;
  "Rows Removed by Index Recheck"?: number;
  "Shared Hit Blocks": number;
  "Shared Read Blocks": number;
  "Actual Total Time": number;
  Plans?: PlanNode[];
}

/** What one executed statement cost, from its plan. */
export interface PlanFigures {
  /** Rows the statement returned (or changed). */
  rows: number;
  /** Index entries read over all index scans and loops (before any filter). */
  indexRows: number;
  /** Shared buffers hit + read, the whole statement. */
  buffers: number;
  executionMs: number;
  /** The plan as an indented tree, one node a line. */
  text: string;
  /** Indexes the plan scans. */
  indexes: string[];
}

/**
 * Runs `call` with a pool whose first query is EXPLAINed (ANALYZE, BUFFERS) on `pool` in a
 * rolled-back transaction, and returns its figures. The call sees an empty result.
 */
export async function explainCall(
  pool: pg.Pool,
  call: (p: pg.Pool) => Promise<unknown>,
): Promise<PlanFigures> {
  const client = await pool.connect();
  let figures: PlanFigures | undefined;
  try {
    const standIn = {
      query: async (sql: string, params?: unknown[]) => {
        if (figures) throw new Error("explainCall: the call made more than one query");
        await client.query("BEGIN");
        try {
          const { rows } = await client.query<{
            "QUERY PLAN": [{ Plan: PlanNode; "Execution Time": number }];
          }>(`EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ${sql}`, params);
          const top = rows[0]!["QUERY PLAN"][0];
          figures = summarize(top.Plan, top["Execution Time"]);
        } finally {
          await client.query("ROLLBACK");
        }
        return { rows: [], rowCount: 0 };
      },
    } as unknown as pg.Pool;
    await call(standIn);
  } finally {
    client.release();
  }
  if (!figures) throw new Error("explainCall: the call made no query");
  return figures;
}

const INDEX_SCANS = new Set(["Index Scan", "Index Only Scan", "Bitmap Index Scan"]);

function summarize(root: PlanNode, executionMs: number): PlanFigures {
  let indexRows = 0;
  const indexes = new Set<string>();
  const lines: string[] = [];
  const walk = (n: PlanNode, depth: number) => {
    const loops = n["Actual Loops"];
    const rows = n["Actual Rows"] * loops;
    const removed = ((n["Rows Removed by Filter"] ?? 0) + (n["Rows Removed by Index Recheck"] ?? 0)) * loops;
    if (INDEX_SCANS.has(n["Node Type"])) {
      // A Bitmap Index Scan's rows are the entries it read; an Index Scan's, those its filter kept.
      indexRows += rows + (n["Node Type"] === "Bitmap Index Scan" ? 0 : removed);
      if (n["Index Name"]) indexes.add(n["Index Name"]);
    }
    const what = [
      n["Node Type"],
      n["Index Name"] ? `using ${n["Index Name"]}` : "",
      n["Relation Name"] ? `on ${n["Relation Name"]}` : "",
    ]
      .filter(Boolean)
      .join(" ");
    const cond = n["Index Cond"] ?? n["Recheck Cond"];
    lines.push(
      `${"  ".repeat(depth)}-> ${what}  rows=${n["Actual Rows"]}${loops > 1 ? ` x ${loops} loops` : ""}` +
        `${removed ? ` (removed ${removed})` : ""}  buffers=${n["Shared Hit Blocks"] + n["Shared Read Blocks"]}` +
        `${cond ? `  [${cond.length > 160 ? `${cond.slice(0, 157)}...` : cond}]` : ""}`,
    );
    for (const c of n.Plans ?? []) walk(c, depth + 1);
  };
  walk(root, 0);
  return {
    rows: root["Actual Rows"] * root["Actual Loops"],
    indexRows,
    buffers: root["Shared Hit Blocks"] + root["Shared Read Blocks"],
    executionMs,
    text: lines.join("\n"),
    indexes: [...indexes],
  };
}
