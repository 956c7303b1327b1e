// IAM policy evaluation as AWS does it for one account's identity-based policies: an explicit
// Deny wins, else any Allow, else the request is implicitly denied. Action/NotAction,
// Resource/NotResource with * and ? wildcards (actions case-insensitive, resources not), and the
// common condition operators. Also role trust policies (Principal) for sts:AssumeRole.

export interface PolicyStatement {
  Sid?: string;
  Effect: "Allow" | "Deny";
  Action?: string | string[];
  NotAction?: string | string[];
  Resource?: string | string[];
  NotResource?: string | string[];
  Principal?: "*" | Record<string, string | string[]>;
  Condition?: Record<string, Record<string, string | string[] | boolean>>;
}

export interface PolicyDocument {
  Version?: string;
  Statement: PolicyStatement | PolicyStatement[];
}

/** Values of condition keys for one request ("sts:ExternalId", "aws:RequestedRegion", ...). */
export type ConditionContext = Record<string, string | string[] | undefined>;

export type Decision = "Allow" | "ExplicitDeny" | "ImplicitDeny";

const list = <T>(v: T | T[] | undefined): T[] => (v === undefined ? [] : Array.isArray(v) ? v : [v]);

function globToRegExp(pattern: string, caseInsensitive: boolean): RegExp {
  const body = pattern.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".");
  return new RegExp(`^${body}$`, caseInsensitive ? "is" : "s");
}

const cache = new Map<string, RegExp>();
export function globMatch(pattern: string, value: string, caseInsensitive = false): boolean {
  const key = `${caseInsensitive ? "i" : "s"}:${pattern}`;
  let re = cache.get(key);
  if (!re) {
    re = globToRegExp(pattern, caseInsensitive);
    cache.set(key, re);
  }
  return re.test(value);
}

function matchesAction(st: PolicyStatement, action: string): boolean {
  if (st.Action !== undefined) return list(st.Action).some((p) => globMatch(p, action, true));
  if (st.NotAction !== undefined) return !list(st.NotAction).some((p) => globMatch(p, action, true));
  return false;
}

function matchesResource(st: PolicyStatement, resource: string): boolean {
  if (st.Resource !== undefined) return list(st.Resource).some((p) => globMatch(p, resource));
  if (st.NotResource !== undefined) return !list(st.NotResource).some((p) => globMatch(p, resource));
  return false;
}

function conditionHolds(op: string, key: string, wanted: string[], ctx: ConditionContext): boolean {
  const ifExists = op.endsWith("IfExists");
  let base = ifExists ? op.slice(0, -"IfExists".length) : op;
  let setMode: "any" | "all" | undefined;
  if (base.startsWith("ForAnyValue:")) {
    setMode = "any";
    base = base.slice("ForAnyValue:".length);
  } else if (base.startsWith("ForAllValues:")) {
    setMode = "all";
    base = base.slice("ForAllValues:".length);
  }
  const raw = ctx[key] ?? ctx[Object.keys(ctx).find((k) => k.toLowerCase() === key.toLowerCase()) ?? ""];
  if (base === "Null") return (raw === undefined) === (wanted[0] === "true");
  if (raw === undefined) {
    if (ifExists || setMode === "all") return true;
    // Negated operators hold when the key is absent (AWS evaluates them as "not equal").
    return /^(StringNot|ArnNot)/.test(base);
  }
  const values = list(raw);
  const one = (v: string): boolean => {
    switch (base) {
      case "StringEquals":
      case "ArnEquals":
        return wanted.includes(v);
      case "StringNotEquals":
      case "ArnNotEquals":
        return !wanted.includes(v);
      case "StringEqualsIgnoreCase":
        return wanted.some((w) => w.toLowerCase() === v.toLowerCase());
      case "StringNotEqualsIgnoreCase":
        return !wanted.some((w) => w.toLowerCase() === v.toLowerCase());
      case "StringLike":
      case "ArnLike":
        return wanted.some((w) => globMatch(w, v));
      case "StringNotLike":
      case "ArnNotLike":
        return !wanted.some((w) => globMatch(w, v));
      case "Bool":
        return wanted.some((w) => w.toLowerCase() === v.toLowerCase());
      default:
        // An operator this layer does not know: the statement does not apply (fail closed for Allow).
        return false;
    }
  };
  if (setMode === "all") return values.every(one);
  return values.some(one);
}

function conditionsHold(st: PolicyStatement, ctx: ConditionContext): boolean {
  for (const [op, entries] of Object.entries(st.Condition ?? {})) {
    for (const [key, want] of Object.entries(entries)) {
      const wanted = list(want).map((w) => String(w));
      if (!conditionHolds(op, key, wanted, ctx)) return false;
    }
  }
  return true;
}

export function statementsOf(docs: PolicyDocument[]): PolicyStatement[] {
  return docs.flatMap((d) => list(d.Statement));
}

/** The decision for one action on one resource. */
export function evaluate(docs: PolicyDocument[], action: string, resource: string, ctx: ConditionContext = {}): Decision {
  let allowed = false;
  for (const st of statementsOf(docs)) {
    if (!matchesAction(st, action) || !matchesResource(st, resource) || !conditionsHold(st, ctx)) continue;
    if (st.Effect === "Deny") return "ExplicitDeny";
    if (st.Effect === "Allow") allowed = true;
  }
  return allowed ? "Allow" : "ImplicitDeny";
}

function principalMatches(p: PolicyStatement["Principal"], callerArn: string, account: string): "exact" | "account" | undefined {
  if (p === undefined) return undefined;
  if (p === "*") return "exact";
  for (const v of list(p.AWS)) {
    if (v === "*" || v === callerArn) return "exact";
    if (v === account || v === `arn:aws:iam::${account}:root`) return "account";
  }
  return undefined;
}

/**
 * Whether a role's trust policy lets the caller assume it: "exact" when it names the caller (no
 * identity policy needed in the same account), "account" when it trusts the whole account (the
 * caller's identity policy must allow sts:AssumeRole too), undefined when it does not trust them.
 */
export function trustAllows(trust: PolicyDocument, callerArn: string, account: string, ctx: ConditionContext): "exact" | "account" | undefined {
  let best: "exact" | "account" | undefined;
  for (const st of statementsOf([trust])) {
    if (!matchesAction(st, "sts:AssumeRole")) continue;
    const who = principalMatches(st.Principal, callerArn, account);
    if (!who || !conditionsHold(st, ctx)) continue;
    if (st.Effect === "Deny") return undefined;
    if (who === "exact" || best === undefined) best = who;
  }
  return best;
}
