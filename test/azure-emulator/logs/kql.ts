// A deliberately small KQL (Kusto Query Language) engine for the emulator's Log Analytics query
// API. It accepts exactly the subset below and refuses everything else with a KqlError that says
// what is not supported — it must never answer a query it does not fully understand.
//
//   <Table> [| where <predicate>] [| project c1, c2] [| order by c [asc|desc] [nulls first|last], ...]
//           [| take N | limit N] [| top N by c [asc|desc]]   (operators in any order, any number)
//   predicate: comparisons (== != > >= < <=), `in (...)` / `!in (...)` (case-sensitive list
//   membership) and `startswith` (case-insensitive, as KQL's) joined by `and` / `or`,
//   parentheses, bool columns;
//   operands: columns, string/number/bool literals, datetime(...), now(), ago(<timespan>),
//   timespan literals (1d, 2h, 30m, 10s, 100ms).
//
// Pure module: no I/O, no clock (callers pass `now`).

export type KqlType = "string" | "int" | "long" | "real" | "bool" | "datetime" | "guid" | "dynamic" | "timespan";
export type KqlValue = unknown;

export type KqlErrorKind = "SyntaxError" | "SemanticError" | "NotSupported";

export class KqlError extends Error {
  constructor(
    readonly kind: KqlErrorKind,
    message: string,
  ) {
    super(message);
    this.name = "KqlError";
  }
}

const unsupported = (what: string): KqlError =>
  new KqlError(
    "NotSupported",
    `${what} is not supported by the emulator's KQL subset (supported: a table name, then | where with ==, !=, >, >=, <, <=, in, !in, startswith, and, or; | project <columns>; | order by/sort by; | take/limit; | top N by)`,
  );

// ---------------------------------------------------------------------------------------------
// Datetimes: KQL has 100 ns ticks. Internally a datetime is a bigint count of ticks since the Unix
// epoch; storage and output use ISO 8601 UTC text.

const TICKS_PER_MS = 10_000n;
const DT_RE = /^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?)?\s*(Z|[+-]\d{2}:?\d{2})?$/i;

/** Parses an ISO 8601 date/time (UTC when no zone is given) to ticks since the epoch, or undefined. */
export function parseDatetimeTicks(text: string): bigint | undefined {
  const m = DT_RE.exec(text.trim());
  if (!m) return undefined;
  const [y, mo, d, h = "0", mi = "0", s = "0"] = [m[1], m[2], m[3], m[4], m[5], m[6]].map((v) => v) as string[];
  const year = Number(y), month = Number(mo), day = Number(d), hour = Number(h), minute = Number(mi), second = Number(s);
  if (month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || minute > 59 || second > 59) return undefined;
  const date = new Date(0);
  date.setUTCFullYear(year, month - 1, day);
  date.setUTCHours(hour, minute, second, 0);
  if (date.getUTCDate() !== day || date.getUTCMonth() !== month - 1) return undefined; // e.g. Feb 30
  let ticks = BigInt(date.getTime()) * TICKS_PER_MS;
  const frac = (m[7] ?? "").slice(0, 7).padEnd(7, "0");
  ticks += BigInt(frac);
  const zone = m[8];
  if (zone && zone.toUpperCase() !== "Z") {
    const sign = zone.startsWith("-") ? -1n : 1n;
    const digits = zone.slice(1).replace(":", "");
    const offH = BigInt(digits.slice(0, 2)), offM = BigInt(digits.slice(2, 4));
    if (offH > 14n || offM > 59n) return undefined;
    ticks -= sign * (offH * 60n + offM) * 60n * 1000n * TICKS_PER_MS;
  }
  return ticks;
}

/** Formats ticks as Log Analytics does: ISO 8601 UTC, fraction trimmed of trailing zeros. */
export function formatDatetimeTicks(ticks: bigint): string {
  let ms = ticks / TICKS_PER_MS;
  let rest = ticks % TICKS_PER_MS;
  if (rest < 0n) {
    rest += TICKS_PER_MS;
    ms -= 1n;
  }
  const date = new Date(Number(ms));
  const base = date.toISOString(); // YYYY-MM-DDTHH:MM:SS.mmmZ
  const frac = (base.slice(20, 23) + rest.toString().padStart(4, "0")).replace(/0+$/, "");
  return base.slice(0, 19) + (frac ? `.${frac}` : "") + "Z";
}

const TIMESPAN_UNITS: Record<string, bigint> = {
  d: 864_000_000_000n,
  day: 864_000_000_000n,
  days: 864_000_000_000n,
  h: 36_000_000_000n,
  hr: 36_000_000_000n,
  hrs: 36_000_000_000n,
  hour: 36_000_000_000n,
  hours: 36_000_000_000n,
  m: 600_000_000n,
  min: 600_000_000n,
  minute: 600_000_000n,
  minutes: 600_000_000n,
  s: 10_000_000n,
  sec: 10_000_000n,
  second: 10_000_000n,
  seconds: 10_000_000n,
  ms: 10_000n,
  milli: 10_000n,
  millis: 10_000n,
  millisecond: 10_000n,
  milliseconds: 10_000n,
};

// ---------------------------------------------------------------------------------------------
// Tokens

type Tok =
  | { t: "ident"; v: string; pos: number; end: number }
  | { t: "string"; v: string; pos: number; end: number }
  | { t: "number"; v: string; pos: number; end: number } // raw text, may carry a timespan unit
  | { t: "punct"; v: string; pos: number; end: number }
  | { t: "raw"; v: string; pos: number; end: number } // the inside of datetime(...)
  | { t: "eof"; v: ""; pos: number; end: number };

const PUNCT = ["==", "!=", ">=", "<=", "=~", "!~", "<>", "|", "(", ")", ",", "<", ">", "=", "!", "+", "-", "*", "/", "%", ".", "[", "]", "{", "}", ";", ":"];

function tokenize(src: string): Tok[] {
  const out: Tok[] = [];
  let i = 0;
  const isIdStart = (c: string) => /[A-Za-z_$]/.test(c);
  const isId = (c: string) => /[A-Za-z0-9_$]/.test(c);
  while (i < src.length) {
    const c = src[i] as string;
    if (/\s/.test(c)) {
      i++;
      continue;
    }
    if (src.startsWith("//", i)) {
      while (i < src.length && src[i] !== "\n") i++;
      continue;
    }
    const start = i;
    if (src.startsWith("```", i)) throw unsupported("A multi-line string literal (```)");
    // Strings: '...' "..." with escapes; @'...' @"..." verbatim; h'...' obfuscated.
    if (c === "'" || c === '"' || ((c === "@" || c === "h" || c === "H") && (src[i + 1] === "'" || src[i + 1] === '"'))) {
      const verbatim = c === "@";
      if (c !== "'" && c !== '"') i++;
      const q = src[i] as string;
      i++;
      let v = "";
      for (;;) {
        if (i >= src.length) throw new KqlError("SyntaxError", `Query could not be parsed: unterminated string literal at position ${start}`);
        const ch = src[i] as string;
        if (ch === "\n" && !verbatim) throw new KqlError("SyntaxError", `Query could not be parsed: unterminated string literal at position ${start}`);
        if (ch === q) {
          if (verbatim && src[i + 1] === q) {
            v += q;
            i += 2;
            continue;
          }
          i++;
          break;
        }
        if (ch === "\\" && !verbatim) {
          const e = src[i + 1];
          const map: Record<string, string> = { "\\": "\\", "'": "'", '"': '"', n: "\n", t: "\t", r: "\r" };
          if (e === undefined || !(e in map)) throw unsupported(`The escape sequence '\\${e ?? ""}' in a string literal`);
          v += map[e];
          i += 2;
          continue;
        }
        v += ch;
        i++;
      }
      out.push({ t: "string", v, pos: start, end: i });
      continue;
    }
    if (/[0-9]/.test(c) || (c === "." && /[0-9]/.test(src[i + 1] ?? ""))) {
      const m = /^(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[A-Za-z]*/.exec(src.slice(i));
      const raw = (m as RegExpExecArray)[0];
      i += raw.length;
      out.push({ t: "number", v: raw, pos: start, end: i });
      continue;
    }
    if (c === "[" && (src[i + 1] === "'" || src[i + 1] === '"')) {
      const q = src[i + 1] as string;
      const close = src.indexOf(q + "]", i + 2);
      if (close < 0) throw new KqlError("SyntaxError", `Query could not be parsed: unterminated [' identifier at position ${start}`);
      out.push({ t: "ident", v: src.slice(i + 2, close), pos: start, end: close + 2 });
      i = close + 2;
      continue;
    }
    if (isIdStart(c)) {
      while (i < src.length && isId(src[i] as string)) i++;
      const v = src.slice(start, i);
      out.push({ t: "ident", v, pos: start, end: i });
      // datetime( ... ) takes raw text up to the closing parenthesis.
      let j = i;
      while (j < src.length && /\s/.test(src[j] as string)) j++;
      if (v === "datetime" && src[j] === "(") {
        const close = src.indexOf(")", j);
        if (close < 0) throw new KqlError("SyntaxError", `Query could not be parsed: missing ')' after datetime( at position ${start}`);
        out.push({ t: "punct", v: "(", pos: j, end: j + 1 });
        out.push({ t: "raw", v: src.slice(j + 1, close), pos: j + 1, end: close });
        out.push({ t: "punct", v: ")", pos: close, end: close + 1 });
        i = close + 1;
      }
      continue;
    }
    const p = PUNCT.find((x) => src.startsWith(x, i));
    if (!p) throw new KqlError("SyntaxError", `Query could not be parsed: unexpected character '${c}' at position ${i}`);
    out.push({ t: "punct", v: p, pos: i, end: i + p.length });
    i += p.length;
  }
  out.push({ t: "eof", v: "", pos: src.length, end: src.length });
  return out;
}

// ---------------------------------------------------------------------------------------------
// AST

export type Expr =
  | { k: "col"; name: string }
  | { k: "lit"; type: KqlType; value: KqlValue }
  | { k: "ago"; ticks: bigint }
  | { k: "now" }
  | { k: "cmp"; op: CmpOp; left: Expr; right: Expr }
  | { k: "in"; negate: boolean; left: Expr; list: Expr[] }
  | { k: "startswith"; left: Expr; right: Expr }
  | { k: "and" | "or"; left: Expr; right: Expr };
type CmpOp = "==" | "!=" | ">" | ">=" | "<" | "<=";

export interface SortKey {
  column: string;
  desc: boolean;
  nullsFirst: boolean;
}
export type Stage =
  | { op: "where"; expr: Expr }
  | { op: "project"; columns: string[] }
  | { op: "order"; keys: SortKey[] }
  | { op: "take"; count: number };

export interface KqlQuery {
  table: string;
  stages: Stage[];
}

const FIRST_POSITION_KEYWORDS = new Set([
  "let", "union", "search", "print", "datatable", "range", "find", "evaluate", "set", "declare", "alias", "restrict",
  "pattern", "externaldata", "external_data", "materialize", "table", "view", "workspace", "app", "resource", "cluster", "database",
]);
const CMP_OPS = new Set(["==", "!=", ">", ">=", "<", "<="]);

class Parser {
  private i = 0;
  constructor(private readonly toks: Tok[]) {}
  private peek(n = 0): Tok {
    return this.toks[Math.min(this.i + n, this.toks.length - 1)] as Tok;
  }
  private next(): Tok {
    const t = this.peek();
    if (this.i < this.toks.length - 1) this.i++;
    return t;
  }
  private isPunct(v: string, n = 0): boolean {
    const t = this.peek(n);
    return t.t === "punct" && t.v === v;
  }
  private isIdent(v: string, n = 0): boolean {
    const t = this.peek(n);
    return t.t === "ident" && t.v === v;
  }
  private expectPunct(v: string): void {
    const t = this.next();
    if (t.t !== "punct" || t.v !== v) throw syntaxAt(t, `expected '${v}'`);
  }
  private describe(t: Tok): string {
    return t.t === "eof" ? "end of query" : `'${t.v}'`;
  }

  parse(): KqlQuery {
    const first = this.next();
    if (first.t !== "ident") {
      if (first.t === "eof") throw new KqlError("SyntaxError", "Query could not be parsed: the query is empty");
      throw syntaxAt(first, "a query must start with a table name");
    }
    if (FIRST_POSITION_KEYWORDS.has(first.v)) throw unsupported(`The '${first.v}' statement`);
    if (this.isPunct("(")) throw unsupported(`The function call '${first.v}()' as a query source`);
    if (this.isPunct(".")) throw unsupported(`A qualified name ('${first.v}.')`);
    const stages: Stage[] = [];
    while (!(this.peek().t === "eof")) {
      if (this.isPunct(";")) throw unsupported("Multiple statements (';')");
      if (!this.isPunct("|")) throw syntaxAt(this.peek(), "expected '|' or end of query");
      this.next();
      stages.push(...this.parseStage());
    }
    return { table: first.v, stages };
  }

  private operatorName(): Tok & { t: "ident" } {
    const t = this.next();
    if (t.t !== "ident") throw syntaxAt(t, "expected a query operator after '|'");
    // Hyphenated operator names (project-away, mv-expand, ...) are one word in KQL.
    let name = t.v;
    let end = t.end;
    while (this.isPunct("-") && this.peek().pos === end && this.peek(1).t === "ident" && this.peek(1).pos === end + 1) {
      this.next();
      const part = this.next();
      name += "-" + part.v;
      end = part.end;
    }
    return { t: "ident", v: name, pos: t.pos, end };
  }

  private parseStage(): Stage[] {
    const op = this.operatorName();
    switch (op.v) {
      case "where":
      case "filter":
        return [{ op: "where", expr: this.parseExpr() }];
      case "project": {
        const columns: string[] = [];
        do {
          const c = this.next();
          if (c.t !== "ident") throw syntaxAt(c, "expected a column name in project");
          if (this.isPunct("=")) throw unsupported("A computed or renamed column in project ('name = ...')");
          if (!this.isPunct(",") && !this.isPunct("|") && this.peek().t !== "eof") {
            throw this.unsupportedAfterOperand("in project");
          }
          columns.push(c.v);
        } while (this.isPunct(",") && this.next());
        return [{ op: "project", columns }];
      }
      case "order":
      case "sort": {
        if (!this.isIdent("by")) throw syntaxAt(this.peek(), `expected 'by' after '${op.v}'`);
        this.next();
        return [{ op: "order", keys: this.parseSortKeys() }];
      }
      case "take":
      case "limit":
        return [{ op: "take", count: this.parseCount(op.v) }];
      case "top": {
        const count = this.parseCount("top");
        if (!this.isIdent("by")) throw syntaxAt(this.peek(), "expected 'by' after 'top N'");
        this.next();
        const keys = this.parseSortKeys();
        if (keys.length !== 1) throw unsupported("'top' with more than one sort key");
        return [{ op: "order", keys }, { op: "take", count }];
      }
      default:
        throw unsupported(`The '${op.v}' operator`);
    }
  }

  private parseCount(opName: string): number {
    const t = this.next();
    if (t.t !== "number" || !/^\d+$/.test(t.v)) {
      if (t.t === "ident" || t.t === "punct") throw unsupported(`A '${opName}' count that is not an integer literal`);
      throw syntaxAt(t, `expected a non-negative integer after '${opName}'`);
    }
    const n = Number(t.v);
    if (!Number.isSafeInteger(n)) throw syntaxAt(t, `the '${opName}' count is too large`);
    return n;
  }

  private parseSortKeys(): SortKey[] {
    const keys: SortKey[] = [];
    do {
      const c = this.next();
      if (c.t !== "ident") throw syntaxAt(c, "expected a column name to sort by");
      if (this.isPunct("(")) throw unsupported(`Sorting by a function call ('${c.v}(...)')`);
      let desc = true; // KQL sorts descending unless told otherwise
      if (this.isIdent("asc")) {
        this.next();
        desc = false;
      } else if (this.isIdent("desc")) {
        this.next();
      }
      let nullsFirst = !desc; // KQL: nulls first when ascending, last when descending
      if (this.isIdent("nulls")) {
        this.next();
        const w = this.next();
        if (w.t === "ident" && w.v === "first") nullsFirst = true;
        else if (w.t === "ident" && w.v === "last") nullsFirst = false;
        else throw syntaxAt(w, "expected 'first' or 'last' after 'nulls'");
      }
      if (!this.isPunct(",") && !this.isPunct("|") && this.peek().t !== "eof") throw this.unsupportedAfterOperand("in a sort key");
      keys.push({ column: c.v, desc, nullsFirst });
    } while (this.isPunct(",") && this.next());
    return keys;
  }

  private parseExpr(): Expr {
    let left = this.parseAnd();
    while (this.isIdent("or")) {
      this.next();
      left = { k: "or", left, right: this.parseAnd() };
    }
    return left;
  }
  private parseAnd(): Expr {
    let left = this.parseCmp();
    while (this.isIdent("and")) {
      this.next();
      left = { k: "and", left, right: this.parseCmp() };
    }
    return left;
  }
  private parseCmp(): Expr {
    const left = this.parsePrimary();
    const t = this.peek();
    // `x in (a, b)`, `x !in (a, b)`
    const negatedIn = t.t === "punct" && t.v === "!" && this.isIdent("in", 1) && this.peek(1).pos === t.end;
    if (this.isIdent("in") || negatedIn) {
      if (negatedIn) this.next();
      this.next();
      this.expectPunct("(");
      const list: Expr[] = [this.parsePrimary()];
      while (this.isPunct(",")) {
        this.next();
        list.push(this.parsePrimary());
      }
      this.expectPunct(")");
      this.checkOperandEnd();
      return { k: "in", negate: negatedIn, left, list };
    }
    if (this.isIdent("startswith")) {
      this.next();
      const right = this.parsePrimary();
      this.checkOperandEnd();
      return { k: "startswith", left, right };
    }
    if (t.t === "punct" && CMP_OPS.has(t.v)) {
      this.next();
      const right = this.parsePrimary();
      const after = this.peek();
      if (after.t === "punct" && CMP_OPS.has(after.v)) throw syntaxAt(after, "comparisons cannot be chained");
      this.checkOperandEnd();
      return { k: "cmp", op: t.v as CmpOp, left, right };
    }
    this.checkOperandEnd();
    return left;
  }
  /** After an operand only a comparison, and/or, ')', ',', '|' or the end may follow. */
  private checkOperandEnd(): void {
    const t = this.peek();
    if (t.t === "eof") return;
    if (t.t === "punct" && (t.v === ")" || t.v === "|" || t.v === "," || CMP_OPS.has(t.v))) return;
    if (t.t === "ident" && (t.v === "and" || t.v === "or")) return;
    throw this.unsupportedAfterOperand("in a where predicate");
  }
  private unsupportedAfterOperand(where: string): KqlError {
    const t = this.peek();
    if (t.t === "punct") {
      if (t.v === "!" && this.peek(1).t === "ident") return unsupported(`The '!${this.peek(1).v}' operator`);
      if (t.v === ";") return unsupported("Multiple statements (';')");
      return unsupported(`The '${t.v}' operator ${where}`);
    }
    if (t.t === "ident") return unsupported(`The '${t.v}' operator ${where}`);
    return syntaxAt(t, `unexpected ${this.describe(t)} ${where}`);
  }

  private parsePrimary(): Expr {
    const t = this.next();
    if (t.t === "punct" && t.v === "(") {
      const inner = this.parseExpr();
      this.expectPunct(")");
      return inner;
    }
    if (t.t === "punct" && t.v === "-" && this.peek().t === "number" && this.peek().pos === t.end) {
      const n = this.next();
      return this.numberLiteral(n, true);
    }
    if (t.t === "string") return { k: "lit", type: "string", value: t.v };
    if (t.t === "number") return this.numberLiteral(t, false);
    if (t.t === "ident") {
      if (this.isPunct("(")) return this.parseCall(t);
      if (t.v === "true" || t.v === "True" || t.v === "TRUE") return { k: "lit", type: "bool", value: true };
      if (t.v === "false" || t.v === "False" || t.v === "FALSE") return { k: "lit", type: "bool", value: false };
      if (t.v === "not") throw unsupported("The 'not' operator");
      if (this.isPunct(".") || this.isPunct("[")) throw unsupported(`Property access on '${t.v}' (dynamic values)`);
      return { k: "col", name: t.v };
    }
    if (t.t === "eof") throw syntaxAt(t, "expected an expression");
    if (t.t === "punct" && t.v === "!") throw unsupported("The '!' operator");
    if (t.t === "punct" && (t.v === "[" || t.v === "{")) throw unsupported("Dynamic array/property-bag literals");
    throw syntaxAt(t, `unexpected '${t.v}' where an expression was expected`);
  }

  private numberLiteral(t: Tok, negative: boolean): Expr {
    const m = /^((?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)([A-Za-z]*)$/.exec(t.v);
    if (!m) throw syntaxAt(t, `malformed number '${t.v}'`);
    const [, num = "", unit = ""] = m;
    if (unit) {
      const per = TIMESPAN_UNITS[unit];
      if (per === undefined) throw unsupported(`The literal '${t.v}' (timespan unit '${unit}')`);
      const ticks = BigInt(Math.round(Number(num) * Number(per)));
      return { k: "lit", type: "timespan", value: negative ? -ticks : ticks };
    }
    const value = Number(num) * (negative ? -1 : 1);
    const isReal = /[.eE]/.test(num);
    if (!isReal && !Number.isSafeInteger(value)) throw unsupported(`The integer literal '${t.v}' beyond 2^53`);
    return { k: "lit", type: isReal ? "real" : "long", value };
  }

  private parseCall(name: Tok & { t: "ident" }): Expr {
    this.expectPunct("(");
    switch (name.v) {
      case "datetime": {
        const raw = this.next();
        this.expectPunct(")");
        const text = (raw.t === "raw" ? raw.v : "").trim().replace(/^(['"])(.*)\1$/, "$2");
        if (text === "null") return { k: "lit", type: "datetime", value: null };
        const ticks = parseDatetimeTicks(text);
        if (ticks === undefined) throw syntaxAt(raw, `'${text}' is not a datetime literal the emulator understands (use ISO 8601, e.g. datetime(2024-05-01T10:00:00Z))`);
        return { k: "lit", type: "datetime", value: ticks };
      }
      case "now": {
        if (!this.isPunct(")")) throw unsupported("now() with an offset argument");
        this.next();
        return { k: "now" };
      }
      case "ago": {
        const arg = this.parsePrimary();
        this.expectPunct(")");
        if (arg.k !== "lit" || arg.type !== "timespan") throw unsupported("ago() with an argument other than a timespan literal (e.g. ago(1h))");
        return { k: "ago", ticks: arg.value as bigint };
      }
      default:
        throw unsupported(`The function '${name.v}()'`);
    }
  }
}

function syntaxAt(t: Tok, what: string): KqlError {
  return new KqlError("SyntaxError", `Query could not be parsed at ${t.t === "eof" ? "the end of the query" : `'${t.v}' (position ${t.pos})`}: ${what}`);
}

/** Parses a query. Throws KqlError for syntax errors and anything outside the supported subset. */
export function parseKql(text: string): KqlQuery {
  return new Parser(tokenize(text)).parse();
}

// ---------------------------------------------------------------------------------------------
// Evaluation

export interface KqlColumn {
  name: string;
  type: KqlType;
}
/** A table's rows as stored: datetimes as ISO text (or ticks), dynamic as JSON values. */
export interface KqlInputTable {
  name: string;
  columns: KqlColumn[];
  rows: Record<string, unknown>[];
}
export interface KqlResult {
  columns: KqlColumn[];
  /** Rows in the Log Analytics wire format: datetime as ISO text, dynamic as JSON text. */
  rows: unknown[][];
}

type Row = unknown[];
type Schema = KqlColumn[];

function semantic(msg: string): KqlError {
  return new KqlError("SemanticError", msg);
}

const NUMERIC = new Set<KqlType>(["int", "long", "real"]);

function typeOf(e: Expr, schema: Schema): KqlType {
  switch (e.k) {
    case "col": {
      const c = schema.find((x) => x.name === e.name);
      if (!c) throw semantic(`Failed to resolve scalar expression named '${e.name}'`);
      return c.type;
    }
    case "lit":
      return e.type;
    case "ago":
    case "now":
      return "datetime";
    case "and":
    case "or": {
      for (const side of [e.left, e.right]) {
        const t = typeOf(side, schema);
        if (t !== "bool") throw semantic(`The operands of '${e.k}' must be boolean, got ${t}`);
      }
      return "bool";
    }
    case "in": {
      const l = typeOf(e.left, schema);
      for (const item of e.list) {
        if (item.k !== "lit") throw unsupported("Non-literal values in an 'in' list");
        const t = typeOf(item, schema);
        if (t !== l && !(NUMERIC.has(t) && NUMERIC.has(l))) throw semantic(`'in' list values must be of type ${l}, got ${t}`);
      }
      return "bool";
    }
    case "startswith": {
      for (const side of [e.left, e.right]) {
        const t = typeOf(side, schema);
        if (t !== "string") throw semantic(`The operands of 'startswith' must be strings, got ${t}`);
      }
      return "bool";
    }
    case "cmp": {
      const l = typeOf(e.left, schema), r = typeOf(e.right, schema);
      const ordered = e.op !== "==" && e.op !== "!=";
      if (NUMERIC.has(l) && NUMERIC.has(r)) return "bool";
      if (l === "datetime" && r === "datetime") return "bool";
      if (l === "timespan" && r === "timespan" && e.left.k === "lit" && e.right.k === "lit") return "bool";
      if (l === "string" && r === "string") {
        if (ordered) throw semantic(`Cannot compare values of types string and string with '${e.op}'`);
        return "bool";
      }
      if (l === "bool" && r === "bool") {
        if (ordered) throw semantic(`Cannot compare values of types bool and bool with '${e.op}'`);
        return "bool";
      }
      for (const t of [l, r]) {
        if (t === "dynamic" || t === "guid" || t === "timespan") throw unsupported(`Comparing values of type ${t}`);
      }
      throw semantic(`Cannot compare values of types ${l} and ${r}. Try adding explicit casts`);
    }
  }
}

function compile(e: Expr, schema: Schema, nowTicks: bigint): (row: Row) => unknown {
  switch (e.k) {
    case "col": {
      const idx = schema.findIndex((x) => x.name === e.name);
      return (row) => row[idx] ?? null;
    }
    case "lit": {
      const v = e.value;
      return () => v;
    }
    case "now":
      return () => nowTicks;
    case "ago": {
      const v = nowTicks - e.ticks;
      return () => v;
    }
    case "and": {
      const l = compile(e.left, schema, nowTicks), r = compile(e.right, schema, nowTicks);
      return (row) => {
        const a = l(row), b = r(row);
        if (a === false || b === false) return false;
        if (a === null || b === null) return null;
        return true;
      };
    }
    case "or": {
      const l = compile(e.left, schema, nowTicks), r = compile(e.right, schema, nowTicks);
      return (row) => {
        const a = l(row), b = r(row);
        if (a === true || b === true) return true;
        if (a === null || b === null) return null;
        return false;
      };
    }
    case "in": {
      const l = compile(e.left, schema, nowTicks);
      const values = e.list.map((item) => compile(item, schema, nowTicks)([]));
      const negate = e.negate;
      return (row) => {
        const a = l(row);
        if (a === null) return null;
        const found = values.some((v) => v !== null && compareValues(a, v) === 0);
        return negate ? !found : found;
      };
    }
    case "startswith": {
      const l = compile(e.left, schema, nowTicks), r = compile(e.right, schema, nowTicks);
      return (row) => {
        const a = l(row), b = r(row);
        if (a === null || b === null) return null;
        return String(a).toLowerCase().startsWith(String(b).toLowerCase());
      };
    }
    case "cmp": {
      const l = compile(e.left, schema, nowTicks), r = compile(e.right, schema, nowTicks);
      const op = e.op;
      return (row) => {
        const a = l(row), b = r(row);
        if (a === null || b === null) return null;
        const c = compareValues(a, b);
        switch (op) {
          case "==":
            return c === 0;
          case "!=":
            return c !== 0;
          case ">":
            return c > 0;
          case ">=":
            return c >= 0;
          case "<":
            return c < 0;
          case "<=":
            return c <= 0;
        }
      };
    }
  }
}

function compareValues(a: unknown, b: unknown): number {
  if (typeof a === "bigint" && typeof b === "bigint") return a < b ? -1 : a > b ? 1 : 0;
  if (typeof a === "number" && typeof b === "number") return a < b ? -1 : a > b ? 1 : 0;
  if (typeof a === "boolean" && typeof b === "boolean") return a === b ? 0 : a ? 1 : -1;
  const sa = String(a), sb = String(b);
  return sa < sb ? -1 : sa > sb ? 1 : 0; // ordinal
}

function toInternal(value: unknown, type: KqlType): unknown {
  if (value === null || value === undefined) return type === "string" ? "" : null;
  switch (type) {
    case "datetime":
      if (typeof value === "bigint") return value;
      return typeof value === "string" ? (parseDatetimeTicks(value) ?? null) : null;
    default:
      return value;
  }
}

function toWire(value: unknown, type: KqlType): unknown {
  if (value === null || value === undefined) return null;
  switch (type) {
    case "datetime":
      return formatDatetimeTicks(value as bigint);
    case "dynamic":
      return typeof value === "string" ? value : JSON.stringify(value);
    default:
      return value;
  }
}

/**
 * Checks a parsed query against the table's schema (throws SemanticError/NotSupported without
 * touching any row), then runs it. `now` anchors now() and ago().
 */
export function executeKql(query: KqlQuery, table: KqlInputTable, now: Date): KqlResult {
  if (query.table !== table.name) throw semantic(`Failed to resolve table or column expression named '${query.table}'`);
  const nowTicks = BigInt(now.getTime()) * TICKS_PER_MS;
  // Plan: validate every stage against the schema it sees before evaluating anything.
  let schema: Schema = table.columns.map((c) => ({ ...c }));
  const steps: ((rows: Row[]) => Row[])[] = [];
  for (const stage of query.stages) {
    const s = schema;
    switch (stage.op) {
      case "where": {
        const t = typeOf(stage.expr, s);
        if (t !== "bool") throw semantic(`The where predicate must be boolean, got ${t}`);
        const pred = compile(stage.expr, s, nowTicks);
        steps.push((rows) => rows.filter((r) => pred(r) === true));
        break;
      }
      case "project": {
        const seen = new Set<string>();
        const idx = stage.columns.map((name) => {
          if (seen.has(name)) throw semantic(`A column named '${name}' is projected more than once`);
          seen.add(name);
          const i = s.findIndex((c) => c.name === name);
          if (i < 0) throw semantic(`Failed to resolve scalar expression named '${name}'`);
          return i;
        });
        schema = idx.map((i) => s[i] as KqlColumn);
        steps.push((rows) => rows.map((r) => idx.map((i) => r[i] ?? null)));
        break;
      }
      case "order": {
        const keys = stage.keys.map((k) => {
          const i = s.findIndex((c) => c.name === k.column);
          if (i < 0) throw semantic(`Failed to resolve scalar expression named '${k.column}'`);
          const type = (s[i] as KqlColumn).type;
          if (type === "dynamic") throw unsupported("Sorting by a dynamic column");
          return { ...k, i };
        });
        steps.push((rows) =>
          rows
            .map((r, n) => ({ r, n }))
            .sort((x, y) => {
              for (const k of keys) {
                const a = x.r[k.i] ?? null, b = y.r[k.i] ?? null;
                if (a === null && b === null) continue;
                if (a === null) return k.nullsFirst ? -1 : 1;
                if (b === null) return k.nullsFirst ? 1 : -1;
                const c = compareValues(a, b);
                if (c !== 0) return k.desc ? -c : c;
              }
              return x.n - y.n;
            })
            .map((x) => x.r),
        );
        break;
      }
      case "take": {
        const n = stage.count;
        steps.push((rows) => rows.slice(0, n));
        break;
      }
    }
  }
  let rows: Row[] = table.rows.map((obj) => table.columns.map((c) => toInternal(obj[c.name], c.type)));
  for (const step of steps) rows = step(rows);
  const out = schema;
  return { columns: out.map((c) => ({ ...c })), rows: rows.map((r) => out.map((c, i) => toWire(r[i], c.type))) };
}
