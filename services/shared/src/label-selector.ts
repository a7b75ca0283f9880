// Kubernetes label selectors over timers' labels: parsed here (pure), and turned into SQL over
// the jsonb `labels` column whose every key and value travels as a query parameter, never as
// SQL text. Grammar (kubernetes.io/docs/concepts/overview/working-with-objects/labels):
//   selector := term ("," term)*
//   term     := key ("=" | "==" | "!=") value | key ("in" | "notin") "(" value ("," value)* ")"
//             | key | "!" key
// Keys follow the rule labels are stored under (services/timer/src/validation.ts): 1-63
// characters of [A-Za-z0-9._/-] starting with a letter or digit. Values may be empty; they are
// up to 256 characters without white space or any of `,()=!` (which the grammar uses).

/** One term of a selector; every term must match (AND). */
export type LabelRequirement =
  | { op: "equals" | "notEquals"; key: string; value: string }
  | { op: "in" | "notIn"; key: string; values: string[] }
  | { op: "exists" | "notExists"; key: string };

/** A selector that does not parse; the message names the 1-based character position. */
export class LabelSelectorError extends Error {
  override name = "LabelSelectorError";
  constructor(
    /** 1-based position in the selector text where the problem is. */
    readonly position: number,
    reason: string,
  ) {
    super(`at character ${position}: ${reason}`);
  }
}

const KEY_RE = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$/;
const MAX_VALUE_CHARS = 256;
/** Most terms one selector may have, and most values in one set. */
export const MAX_LABEL_TERMS = 64;
export const MAX_SET_VALUES = 100;
/** The longest selector text accepted. */
export const MAX_SELECTOR_CHARS = 4096;

/** A token's text and 1-based position. */
interface Token {
  kind: "word" | "op" | "punct" | "end";
  text: string;
  pos: number;
}

const PUNCT = new Set([",", "(", ")"]);

function tokenize(text: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  while (i < text.length) {
    const c = text[i]!;
    if (/\s/.test(c)) {
      i++;
      continue;
    }
    const pos = i + 1;
    if (PUNCT.has(c)) {
      tokens.push({ kind: "punct", text: c, pos });
      i++;
    } else if (c === "=" || c === "!") {
      const two = text.slice(i, i + 2);
      const op = two === "==" || two === "!=" ? two : c;
      tokens.push({ kind: "op", text: op, pos });
      i += op.length;
    } else {
      let j = i;
      while (j < text.length && !/[\s,()=!]/.test(text[j]!)) j++;
      tokens.push({ kind: "word", text: text.slice(i, j), pos });
      i = j;
    }
  }
  tokens.push({ kind: "end", text: "", pos: text.length + 1 });
  return tokens;
}

function checkKey(t: Token): string {
  if (t.kind !== "word") throw new LabelSelectorError(t.pos, `expected a label key, found ${describe(t)}`);
  if (!KEY_RE.test(t.text))
    throw new LabelSelectorError(
      t.pos,
      `label key "${t.text}" must be 1-63 characters of [A-Za-z0-9._/-] starting with a letter or digit`,
    );
  return t.text;
}

function checkValue(t: Token): string {
  if (t.text.length > MAX_VALUE_CHARS)
    throw new LabelSelectorError(t.pos, `label value is over ${MAX_VALUE_CHARS} characters`);
  return t.text;
}

function describe(t: Token): string {
  return t.kind === "end" ? "the end" : `"${t.text}"`;
}

/**
 * Parses a label selector; "" selects everything (no terms). Throws LabelSelectorError naming
 * the position of what is wrong.
 */
export function parseLabelSelector(text: string): LabelRequirement[] {
  if (text.length > MAX_SELECTOR_CHARS)
    throw new LabelSelectorError(
      MAX_SELECTOR_CHARS + 1,
      `a selector is at most ${MAX_SELECTOR_CHARS} characters`,
    );
  const tokens = tokenize(text);
  let at = 0;
  const peek = () => tokens[at]!;
  const next = () => tokens[at++]!;
  const out: LabelRequirement[] = [];
  if (peek().kind === "end") return out;

  for (;;) {
    if (out.length === MAX_LABEL_TERMS)
      throw new LabelSelectorError(peek().pos, `a selector has at most ${MAX_LABEL_TERMS} terms`);
    out.push(parseTerm());
    const t = next();
    if (t.kind === "end") return out;
    if (t.text !== ",") throw new LabelSelectorError(t.pos, `expected "," or the end, found ${describe(t)}`);
  }

  function parseTerm(): LabelRequirement {
    const first = peek();
    if (first.kind === "op" && first.text === "!") {
      next();
      return { op: "notExists", key: checkKey(next()) };
    }
    const key = checkKey(next());
    const t = peek();
    if (t.kind === "end" || t.text === ",") return { op: "exists", key };
    if (t.kind === "op") {
      next();
      if (t.text === "!") throw new LabelSelectorError(t.pos, `expected "=", "==" or "!=", found "!"`);
      const v = peek();
      // `k=` (then the end or a comma) is the empty value, as in Kubernetes.
      const value = v.kind === "word" ? checkValue(next()) : "";
      if (v.kind !== "word" && v.kind !== "end" && v.text !== ",")
        throw new LabelSelectorError(v.pos, `expected a value, found ${describe(v)}`);
      return { op: t.text === "!=" ? "notEquals" : "equals", key, value };
    }
    if (t.kind === "word" && (t.text === "in" || t.text === "notin")) {
      next();
      return { op: t.text === "in" ? "in" : "notIn", key, values: parseSet() };
    }
    throw new LabelSelectorError(
      t.pos,
      `expected an operator (=, ==, !=, in, notin), "," or the end, found ${describe(t)}`,
    );
  }

  function parseSet(): string[] {
    const open = next();
    if (open.text !== "(") throw new LabelSelectorError(open.pos, `expected "(", found ${describe(open)}`);
    const values: string[] = [];
    for (;;) {
      const v = next();
      if (v.kind !== "word") throw new LabelSelectorError(v.pos, `expected a value, found ${describe(v)}`);
      if (values.length === MAX_SET_VALUES)
        throw new LabelSelectorError(v.pos, `a set has at most ${MAX_SET_VALUES} values`);
      values.push(checkValue(v));
      const sep = next();
      if (sep.text === ")") return values;
      if (sep.text !== ",")
        throw new LabelSelectorError(sep.pos, `expected "," or ")", found ${describe(sep)}`);
    }
  }
}

/** One term as selector text. */
function termText(t: LabelRequirement): string {
  switch (t.op) {
    case "equals":
      return `${t.key}=${t.value}`;
    case "notEquals":
      return `${t.key}!=${t.value}`;
    case "in":
      return `${t.key} in (${t.values.join(",")})`;
    case "notIn":
      return `${t.key} notin (${t.values.join(",")})`;
    case "exists":
      return t.key;
    case "notExists":
      return `!${t.key}`;
  }
}

/** The selector's terms written back as text, in a canonical form (for page tokens, audit). */
export function formatLabelSelector(terms: readonly LabelRequirement[]): string {
  return terms.map(termText).join(",");
}

/** Parameters of a statement being built: each value pushed gets the next $n. */
export class SqlParams {
  readonly values: unknown[];

  /** `existing` are the statement's parameters so far ($1..$existing.length). */
  constructor(existing: readonly unknown[] = []) {
    this.values = [...existing];
  }

  /** Adds a value and returns its placeholder with a cast, e.g. "$7::text". */
  add(value: unknown, cast: string): string {
    this.values.push(value);
    return `$${this.values.length}::${cast}`;
  }
}

/** SQL for one term over `column`, its key and values pushed onto `params`. */
function termSql(t: LabelRequirement, params: SqlParams, column: string): string {
  const key = () => params.add(t.key, "text");
  switch (t.op) {
    case "equals":
      return `${column} @> ${params.add(JSON.stringify({ [t.key]: t.value }), "jsonb")}`;
    case "notEquals":
      return `NOT (${column} @> ${params.add(JSON.stringify({ [t.key]: t.value }), "jsonb")})`;
    case "in":
      return `coalesce((${column} ->> ${key()}) = ANY(${params.add(t.values, "text[]")}), false)`;
    case "notIn":
      return `NOT coalesce((${column} ->> ${key()}) = ANY(${params.add(t.values, "text[]")}), false)`;
    case "exists":
      return `jsonb_exists(${column}, ${key()})`;
    case "notExists":
      return `NOT jsonb_exists(${column}, ${key()})`;
  }
}

/**
 * SQL that is true for rows whose `column` (a jsonb object of string labels) matches every term,
 * with Kubernetes semantics: `!=` and `notin` also match rows without the key. Returns "true"
 * for no terms. Keys and values are pushed onto `params`, never written into the SQL.
 */
export function labelSelectorSql(
  terms: readonly LabelRequirement[],
  params: SqlParams,
  column = "labels",
): string {
  if (terms.length === 0) return "true";
  return terms.map((t) => `(${termSql(t, params, column)})`).join(" AND ");
}
