import { describe, expect, it } from "vitest";
import {
  executeKql,
  formatDatetimeTicks,
  KqlError,
  parseDatetimeTicks,
  parseKql,
  type KqlInputTable,
  type KqlResult,
} from "../../azure-emulator/logs/kql.js";

const NOW = new Date("2026-01-10T12:00:00.000Z");

const table: KqlInputTable = {
  name: "RunLog_CL",
  columns: [
    { name: "TimeGenerated", type: "datetime" },
    { name: "Seq", type: "long" },
    { name: "Run", type: "string" },
    { name: "Line", type: "string" },
    { name: "Score", type: "real" },
    { name: "Final", type: "bool" },
    { name: "Extra", type: "dynamic" },
  ],
  rows: [
    { TimeGenerated: "2026-01-10T11:00:00Z", Seq: 1, Run: "a", Line: "start", Score: 1.5, Final: false, Extra: { k: 1 } },
    { TimeGenerated: "2026-01-10T11:00:00Z", Seq: 2, Run: "a", Line: "middle", Score: 2, Final: false, Extra: null },
    { TimeGenerated: "2026-01-10T11:30:00.1234567Z", Seq: 3, Run: "a", Line: "end", Score: null, Final: true, Extra: [1, 2] },
    { TimeGenerated: "2026-01-09T08:00:00Z", Seq: 1, Run: "b", Line: "Start", Score: -3, Final: null },
    { TimeGenerated: "2026-01-10T11:59:00Z", Seq: 2, Run: "b", Line: "it's \"quoted\"", Score: 10, Final: true },
  ],
};

function run(q: string, t: KqlInputTable = table): KqlResult {
  return executeKql(parseKql(q), t, NOW);
}
function col(r: KqlResult, name: string): unknown[] {
  const i = r.columns.findIndex((c) => c.name === name);
  expect(i).toBeGreaterThanOrEqual(0);
  return r.rows.map((row) => row[i]);
}
function refusal(q: string, t: KqlInputTable = table): KqlError {
  try {
    run(q, t);
  } catch (e) {
    expect(e).toBeInstanceOf(KqlError);
    return e as KqlError;
  }
  throw new Error(`query was accepted: ${q}`);
}

describe("datetime handling", () => {
  it("keeps 100ns precision and formats like Log Analytics", () => {
    const t = parseDatetimeTicks("2026-01-10T11:30:00.1234567Z");
    expect(t).toBeDefined();
    expect(formatDatetimeTicks(t as bigint)).toBe("2026-01-10T11:30:00.1234567Z");
    expect(formatDatetimeTicks(parseDatetimeTicks("2026-01-10T11:30:00.500Z") as bigint)).toBe("2026-01-10T11:30:00.5Z");
    expect(formatDatetimeTicks(parseDatetimeTicks("2026-01-10") as bigint)).toBe("2026-01-10T00:00:00Z");
  });
  it("applies zone offsets and rejects impossible dates", () => {
    expect(formatDatetimeTicks(parseDatetimeTicks("2026-01-10T13:00:00+02:00") as bigint)).toBe("2026-01-10T11:00:00Z");
    expect(formatDatetimeTicks(parseDatetimeTicks("2026-01-10 11:00") as bigint)).toBe("2026-01-10T11:00:00Z");
    expect(parseDatetimeTicks("2026-02-30T00:00:00Z")).toBeUndefined();
    expect(parseDatetimeTicks("yesterday")).toBeUndefined();
    expect(parseDatetimeTicks("2026-01-10T25:00:00Z")).toBeUndefined();
  });
  it("formats dates before the epoch", () => {
    expect(formatDatetimeTicks(parseDatetimeTicks("1969-12-31T23:59:59.9999999Z") as bigint)).toBe("1969-12-31T23:59:59.9999999Z");
  });
});

describe("supported queries", () => {
  it("returns the whole table in stored order with wire types", () => {
    const r = run("RunLog_CL");
    expect(r.columns.map((c) => `${c.name}:${c.type}`)).toEqual([
      "TimeGenerated:datetime", "Seq:long", "Run:string", "Line:string", "Score:real", "Final:bool", "Extra:dynamic",
    ]);
    expect(r.rows).toHaveLength(5);
    expect(r.rows[0]).toEqual(["2026-01-10T11:00:00Z", 1, "a", "start", 1.5, false, '{"k":1}']);
    expect(r.rows[2]?.[6]).toBe("[1,2]");
    expect(r.rows[3]?.[6]).toBeNull();
  });

  it("where with string equality is case-sensitive", () => {
    expect(col(run("RunLog_CL | where Line == 'start'"), "Seq")).toEqual([1]);
    expect(col(run('RunLog_CL | where Line != "start" and Run == "b"'), "Line")).toEqual(["Start", "it's \"quoted\""]);
  });

  it("where with numbers, including int/real mixing and negative literals", () => {
    expect(col(run("RunLog_CL | where Score > 1.5"), "Score")).toEqual([2, 10]);
    expect(col(run("RunLog_CL | where Score >= 2"), "Score")).toEqual([2, 10]);
    expect(col(run("RunLog_CL | where Score < 0"), "Score")).toEqual([-3]);
    expect(col(run("RunLog_CL | where Score <= -3"), "Score")).toEqual([-3]);
    expect(col(run("RunLog_CL | where Seq == 2"), "Run")).toEqual(["a", "b"]);
  });

  it("null never satisfies a comparison, not even !=", () => {
    expect(col(run("RunLog_CL | where Score != 2"), "Seq")).toEqual([1, 1, 2]);
    expect(col(run("RunLog_CL | where Final != true"), "Line")).toEqual(["start", "middle"]);
  });

  it("where with datetime literals, now() and ago()", () => {
    expect(col(run("RunLog_CL | where TimeGenerated > datetime(2026-01-10T11:00:00Z)"), "Seq")).toEqual([3, 2]);
    expect(col(run("RunLog_CL | where TimeGenerated >= datetime('2026-01-10 11:00:00')"), "Seq")).toEqual([1, 2, 3, 2]);
    expect(col(run("RunLog_CL | where TimeGenerated > ago(1h)"), "Seq")).toEqual([3, 2]);
    expect(col(run("RunLog_CL | where TimeGenerated > ago(29m)"), "Seq")).toEqual([2]);
    expect(col(run("RunLog_CL | where TimeGenerated < ago(1d)"), "Seq")).toEqual([1]);
    expect(col(run("RunLog_CL | where TimeGenerated <= now()"), "Seq")).toHaveLength(5);
    // sub-millisecond precision is honoured
    expect(col(run("RunLog_CL | where TimeGenerated > datetime(2026-01-10T11:30:00.1234566Z)"), "Seq")).toEqual([3, 2]);
    expect(col(run("RunLog_CL | where TimeGenerated > datetime(2026-01-10T11:30:00.1234567Z)"), "Seq")).toEqual([2]);
  });

  it("a time-and-sequence cursor with or and parentheses", () => {
    const q =
      "RunLog_CL | where Run == 'a' and (TimeGenerated > datetime(2026-01-10T11:00:00Z) or (TimeGenerated == datetime(2026-01-10T11:00:00Z) and Seq > 1)) | order by TimeGenerated asc, Seq asc";
    expect(col(run(q), "Seq")).toEqual([2, 3]);
  });

  it("and binds tighter than or", () => {
    expect(col(run("RunLog_CL | where Run == 'b' and Seq == 1 or Seq == 3"), "Line")).toEqual(["end", "Start"]);
  });

  it("bool columns and literals as predicates", () => {
    expect(col(run("RunLog_CL | where Final"), "Seq")).toEqual([3, 2]);
    expect(col(run("RunLog_CL | where Final == false"), "Seq")).toEqual([1, 2]);
    expect(run("RunLog_CL | where false").rows).toEqual([]);
  });

  it("project keeps the listed columns in the listed order", () => {
    const r = run("RunLog_CL | where Run == 'b' | project Line, Seq");
    expect(r.columns).toEqual([{ name: "Line", type: "string" }, { name: "Seq", type: "long" }]);
    expect(r.rows).toEqual([["Start", 1], ["it's \"quoted\"", 2]]);
  });

  it("order by defaults to descending, supports several keys, stable, nulls placement", () => {
    expect(col(run("RunLog_CL | order by Seq"), "Seq")).toEqual([3, 2, 2, 1, 1]);
    expect(col(run("RunLog_CL | order by Seq asc, Run desc"), "Run")).toEqual(["b", "a", "b", "a", "a"]);
    expect(col(run("RunLog_CL | sort by Score asc"), "Score")).toEqual([null, -3, 1.5, 2, 10]);
    expect(col(run("RunLog_CL | sort by Score desc"), "Score")).toEqual([10, 2, 1.5, -3, null]);
    expect(col(run("RunLog_CL | sort by Score asc nulls last"), "Score")).toEqual([-3, 1.5, 2, 10, null]);
    expect(col(run("RunLog_CL | order by TimeGenerated asc, Seq asc"), "Seq")).toEqual([1, 1, 2, 3, 2]);
    expect(col(run("RunLog_CL | order by Line asc"), "Line")).toEqual(["Start", "end", "it's \"quoted\"", "middle", "start"]);
  });

  it("take/limit/top", () => {
    expect(run("RunLog_CL | take 2").rows).toHaveLength(2);
    expect(run("RunLog_CL | limit 0").rows).toHaveLength(0);
    expect(col(run("RunLog_CL | top 2 by Score"), "Score")).toEqual([10, 2]);
    expect(col(run("RunLog_CL | order by TimeGenerated asc | take 2 | project Seq"), "Seq")).toEqual([1, 1]);
  });

  it("comments, bracketed names, verbatim strings, whitespace", () => {
    const r = run("RunLog_CL // all runs\n| where ['Run'] == @'b'\n  | project Seq");
    expect(col(r, "Seq")).toEqual([1, 2]);
  });

  it("'//' inside a string literal is not a comment", () => {
    const t: KqlInputTable = { name: "U_CL", columns: [{ name: "Url", type: "string" }], rows: [{ Url: "http://x" }, { Url: "http:" }] };
    expect(run("U_CL | where Url == 'http://x' // trailing comment", t).rows).toEqual([["http://x"]]);
  });

  it("a table whose columns were never ingested answers empty", () => {
    expect(run("RunLog_CL | where Seq > 0", { ...table, rows: [] }).rows).toEqual([]);
  });
});

describe("refusals", () => {
  const notSupported: [string, RegExp][] = [
    ["RunLog_CL | summarize count() by Run", /'summarize' operator/],
    ["RunLog_CL | extend x = 1", /'extend' operator/],
    ["RunLog_CL | project-away Extra", /'project-away' operator/],
    ["RunLog_CL | where Line has 'x'", /'has' operator/],
    ["RunLog_CL | where Line contains 'x'", /'contains' operator/],
    ["RunLog_CL | where Line =~ 'x'", /'=~' operator/],
    ["RunLog_CL | where Line !contains 'x'", /'!contains' operator/],
    ["RunLog_CL | where Run in (Line)", /Non-literal values in an 'in' list/],
    ["RunLog_CL | where Seq + 1 > 2", /'\+' operator/],
    ["RunLog_CL | where isnotempty(Line)", /function 'isnotempty\(\)'/],
    ["RunLog_CL | where not(Final)", /function 'not\(\)'/],
    ["RunLog_CL | where Extra.k == 1", /Property access/],
    ["RunLog_CL | where Extra == 1", /type dynamic/],
    ["RunLog_CL | project x = Seq", /computed or renamed column/],
    ["RunLog_CL | order by strlen(Line)", /function call/],
    ["RunLog_CL | take Seq", /count that is not an integer literal/],
    ["RunLog_CL | where TimeGenerated > ago(1y)", /timespan unit 'y'/],
    ["RunLog_CL | where TimeGenerated > ago(totimespan('1h'))", /function 'totimespan\(\)'/],
    ["let x = 1; RunLog_CL", /'let' statement/],
    ["union RunLog_CL, Other_CL", /'union' statement/],
    ["RunLog_CL; RunLog_CL", /Multiple statements/],
    ["RunLog_CL | where Line == ```x```", /multi-line string/],
    ["RunLog_CL | top 1 by Seq, Run", /more than one sort key/],
    ["RunLog_CL | where Line == 'a\\x'", /escape sequence/],
  ];
  it("in, !in and startswith (case-insensitive) filter as KQL does", () => {
    expect(col(run("RunLog_CL | where Run in ('b') | project Seq"), "Seq")).toEqual([1, 2]);
    expect(col(run("RunLog_CL | where Seq in (1, 3) and Run !in ('b') | project Seq"), "Seq")).toEqual([1, 3]);
    expect(col(run("RunLog_CL | where Line startswith 'st' | project Run"), "Run")).toEqual(["a", "b"]);
    expect(col(run("RunLog_CL | where Run in ('a') and (Line startswith 'END' or Line == 'start') | project Seq"), "Seq")).toEqual([1, 3]);
  });

  for (const [q, msg] of notSupported) {
    it(`refuses: ${q}`, () => {
      const e = refusal(q);
      expect(e.kind).toBe("NotSupported");
      expect(e.message).toMatch(msg);
      expect(e.message).toMatch(/not supported by the emulator/);
    });
  }

  const semantic: [string, RegExp][] = [
    ["Other_CL", /table or column expression named 'Other_CL'/],
    ["runlog_cl", /named 'runlog_cl'/],
    ["RunLog_CL | where Nope == 1", /scalar expression named 'Nope'/],
    ["RunLog_CL | where seq == 1", /scalar expression named 'seq'/],
    ["RunLog_CL | project Seq | where Run == 'a'", /scalar expression named 'Run'/],
    ["RunLog_CL | where Line == 1", /types string and long/],
    ["RunLog_CL | where TimeGenerated > '2026-01-01'", /types datetime and string/],
    ["RunLog_CL | where Line > 'a'", /string and string/],
    ["RunLog_CL | where Seq startswith 'a'", /operands of 'startswith' must be strings/],
    ["RunLog_CL | where Run in (1)", /'in' list values must be of type string/],
    ["RunLog_CL | where Seq", /must be boolean/],
    ["RunLog_CL | where Seq == 1 and Line", /must be boolean/],
    ["RunLog_CL | project Seq, Seq", /more than once/],
    ["RunLog_CL | order by Nope", /named 'Nope'/],
  ];
  for (const [q, msg] of semantic) {
    it(`semantic error: ${q}`, () => {
      const e = refusal(q);
      expect(e.kind).toBe("SemanticError");
      expect(e.message).toMatch(msg);
    });
  }

  const syntax: [string, RegExp][] = [
    ["", /empty/],
    ["| take 1", /must start with a table name/],
    ["RunLog_CL | where", /expected an expression/],
    ["RunLog_CL | where Seq ==", /expected an expression/],
    ["RunLog_CL | where (Seq == 1", /expected '\)'/],
    ["RunLog_CL | where Seq == 1 == 2", /cannot be chained/],
    ["RunLog_CL | order Seq", /expected 'by'/],
    ["RunLog_CL | take", /non-negative integer/],
    ["RunLog_CL | where Line == 'abc", /unterminated string/],
    ["RunLog_CL take 1", /expected '\|'/],
    ["RunLog_CL | where TimeGenerated > datetime(last tuesday)", /not a datetime literal/],
    ["RunLog_CL | where Seq == #", /unexpected character '#'/],
    ["RunLog_CL | sort by Seq nulls middle", /'first' or 'last'/],
  ];
  for (const [q, msg] of syntax) {
    it(`syntax error: ${JSON.stringify(q)}`, () => {
      const e = refusal(q);
      expect(e.kind).toBe("SyntaxError");
      expect(e.message).toMatch(msg);
    });
  }

  it("checks the whole query before touching a row (an error in a later stage wins over an empty table)", () => {
    const e = refusal("RunLog_CL | take 0 | where Nope == 1", { ...table, rows: [] });
    expect(e.kind).toBe("SemanticError");
  });
});
