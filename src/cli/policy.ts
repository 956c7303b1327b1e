/**
 * `vmforge policy aws`: prints, as JSON, the IAM policy the operator's AWS identity needs, split by
 * phase as in the product document (create, validate, launch, logs, delete, and the optional read).
 *
 *   vmforge policy aws                         phases with purposes, plus the combined document
 *   vmforge policy aws --document              only the combined policy document (for iam create-policy)
 *   vmforge policy aws --phase create,delete   only these phases
 *   vmforge policy aws --required              leave out the optional read phase
 *   vmforge policy aws --work-dir s3://b/p     scope s3:GetObject to that work directory
 *   vmforge policy aws --with-additions        add the optional statement beyond the seed
 *                                              (logs:DeleteLogGroup on /vmforge/*, explained on stderr)
 *
 *   vmforge policy azure [--phase create|launch|logs|dispose] [--subscription <id>] [--with-additions]
 *     the seed's Azure custom role JSON per phase, the subscription filled in; --with-additions adds
 *     the few actions the operator needs beyond the seed (each explained on stderr)
 */
import {
  LOG_GROUP_CLEANUP_STATEMENT,
  POLICY_PHASES,
  operatorPolicyByPhase,
  renderOperatorPolicy,
  type PolicyPhase,
  type RenderOptions,
} from "../cloud/aws/policy.js";
import { AZURE_PHASES, azureAdditions, renderAzureRole, type AzurePhase } from "../cloud/azure/policy.js";

export interface CommandIo {
  out: (text: string) => void;
  err: (text: string) => void;
}

const USAGE = `usage: vmforge policy aws [--document] [--phase <p>[,<p>...]] [--required] [--work-dir s3://bucket[/path]] [--with-additions]
phases: ${POLICY_PHASES.join(", ")}`;

const AZURE_USAGE = `usage: vmforge policy azure [--phase <p>[,<p>...]] [--subscription <id>] [--with-additions]
phases: ${AZURE_PHASES.join(", ")}`;

const GUID = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;

function azurePolicyCommand(rest: readonly string[], io: CommandIo): number {
  let phases: AzurePhase[] = [...AZURE_PHASES];
  let subscriptionId: string | undefined;
  let withAdditions = false;
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i]!;
    const value = (): string | undefined => {
      const eq = a.indexOf("=");
      if (eq >= 0) return a.slice(eq + 1);
      i++;
      return rest[i];
    };
    if (a === "--phase" || a.startsWith("--phase=")) {
      const v = value();
      const list = (v ?? "").split(",").map((s) => s.trim()).filter(Boolean);
      const bad = list.filter((p) => !(AZURE_PHASES as readonly string[]).includes(p));
      if (list.length === 0 || bad.length > 0) {
        io.err(`--phase: unknown phase ${JSON.stringify(bad[0] ?? v ?? "")}\n${AZURE_USAGE}\n`);
        return 2;
      }
      phases = list as AzurePhase[];
    } else if (a === "--subscription" || a.startsWith("--subscription=")) {
      subscriptionId = value();
      if (!subscriptionId || !GUID.test(subscriptionId)) {
        io.err(`--subscription needs a subscription ID (a GUID)\n${AZURE_USAGE}\n`);
        return 2;
      }
    } else if (a === "--with-additions") withAdditions = true;
    else if (a === "--help" || a === "-h") {
      io.out(`${AZURE_USAGE}\n`);
      return 0;
    } else {
      io.err(`unknown option ${JSON.stringify(a)}\n${AZURE_USAGE}\n`);
      return 2;
    }
  }
  if (subscriptionId === undefined) io.err("note: no --subscription given; assignableScopes keeps the <SUBSCRIPTION-ID> placeholder\n");
  const roles = phases.map((p) => renderAzureRole(p, { ...(subscriptionId ? { subscriptionId } : {}), withAdditions }));
  if (withAdditions) {
    for (const p of phases) for (const x of azureAdditions()[p]) io.err(`${p}: added ${x.action}: ${x.why}\n`);
  }
  io.out(`${JSON.stringify(roles.length === 1 ? roles[0] : roles, null, 2)}\n`);
  return 0;
}

/** Runs `vmforge policy <args>`; returns the exit code. */
export function policyCommand(args: readonly string[], io: CommandIo): number {
  const [cloud, ...rest] = args;
  if (cloud === "--help" || cloud === "-h") {
    io.out(`${USAGE}\n${AZURE_USAGE}\n`);
    return 0;
  }
  if (cloud === "azure") return azurePolicyCommand(rest, io);
  if (cloud !== "aws") {
    io.err(`${cloud === undefined ? "missing cloud" : `unknown cloud ${JSON.stringify(cloud)}`} (aws or azure)\n${USAGE}\n${AZURE_USAGE}\n`);
    return 2;
  }
  let documentOnly = false;
  let phases: PolicyPhase[] = [...POLICY_PHASES];
  let workDir: string | undefined;
  let withAdditions = false;
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i]!;
    const value = (): string | undefined => {
      const eq = a.indexOf("=");
      if (eq >= 0) return a.slice(eq + 1);
      i++;
      return rest[i];
    };
    if (a === "--document") documentOnly = true;
    else if (a === "--with-additions") withAdditions = true;
    else if (a === "--required") phases = phases.filter((p) => operatorPolicyByPhase()[p].required);
    else if (a === "--phase" || a.startsWith("--phase=")) {
      const v = value();
      const list = (v ?? "").split(",").map((s) => s.trim()).filter(Boolean);
      const bad = list.filter((p) => !(POLICY_PHASES as readonly string[]).includes(p));
      if (list.length === 0 || bad.length > 0) {
        io.err(`--phase: unknown phase ${JSON.stringify(bad[0] ?? v ?? "")}\n${USAGE}\n`);
        return 2;
      }
      phases = list as PolicyPhase[];
    } else if (a === "--work-dir" || a.startsWith("--work-dir=")) {
      workDir = value();
      if (!workDir) {
        io.err(`--work-dir needs a value\n${USAGE}\n`);
        return 2;
      }
    } else if (a === "--help" || a === "-h") {
      io.out(`${USAGE}\n`);
      return 0;
    } else {
      io.err(`unknown option ${JSON.stringify(a)}\n${USAGE}\n`);
      return 2;
    }
  }
  const opts: RenderOptions = { phases };
  if (workDir !== undefined) opts.workDir = workDir;
  if (withAdditions) {
    opts.withAdditions = true;
    io.err(`addition beyond the documented policy: ${[LOG_GROUP_CLEANUP_STATEMENT.Action].flat().join(", ")} on ${String(LOG_GROUP_CLEANUP_STATEMENT.Resource)}: deletes the ComputeEnvironment's CloudWatch Logs group when it is disposed of (without it the group is left, its events expiring by spec.logRetentionDays)\n`);
  }
  let document;
  try {
    document = renderOperatorPolicy(opts);
  } catch (e) {
    io.err(`${(e as Error).message}\n`);
    return 2;
  }
  if (documentOnly) {
    io.out(`${JSON.stringify(document, null, 2)}\n`);
    return 0;
  }
  const byPhase = operatorPolicyByPhase();
  const out: Record<string, unknown> = {};
  for (const p of phases) {
    const one = renderOperatorPolicy({ ...opts, phases: [p] });
    out[p] = { required: byPhase[p].required, purpose: byPhase[p].purpose, statements: one.Statement };
  }
  io.out(`${JSON.stringify({ phases: out, document }, null, 2)}\n`);
  return 0;
}
