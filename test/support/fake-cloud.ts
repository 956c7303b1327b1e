/**
 * An in-memory cloud for controller tests (unit and integration against the real API server).
 * It implements the CloudProvider contract faithfully enough to drive the reconcilers: idempotent
 * launches keyed by Run UID, one describe call for many Runs, termination that takes a poll to
 * complete, ownership by CE UID, and knobs to inject failures. Like a cloud, it shows a machine only
 * where it was launched (the CE's region, or Azure subscription): a look from elsewhere finds none.
 */
import type { ComputeEnvironment, Run } from "../../src/api/types.js";
import type {
  CloudProvider,
  EnvContext,
  EnvObservation,
  LaunchHints,
  MachineState,
  RunDescription,
  RunLogChunk,
} from "../../src/cloud/provider.js";
import { CloudError } from "../../src/cloud/provider.js";

export interface FakeMachine {
  id: string;
  runUid: string;
  ceUid: string;
  /** Where it runs: the launching CE's region (or subscription); unset (a machine a test put in place), seen from anywhere. */
  where?: string;
  state: MachineState;
  exitCode?: number;
  stateReason?: string;
  interrupted?: boolean;
  /** Ended with its outcome on its way (see FakeCloud.endAwaitingOutcome). */
  outcomeDue?: boolean;
  /** Its launcher said the pipeline started (seen only with FakeCloud.reportsPipelineStart). */
  pipelineStarted?: boolean;
  /** Accepted and not placed (see FakeCloud.unplaced): it stays pending and says why. */
  launchFailure?: { reason: string; message: string };
  launchedAt: string;
  log: string[];
}

export class FakeCloud implements CloudProvider {
  readonly name = "fake";
  readonly environments = new Map<string, { resources: { kind: string; id: string; name: string }[] }>();
  readonly machines = new Map<string, FakeMachine>();
  readonly calls = { observe: 0, provision: 0, dispose: 0, launch: 0, describe: 0, terminate: 0, readLog: 0, sweep: 0 };
  /** The Run UID of each terminateRun call, in order. */
  readonly terminatedUids: string[] = [];
  /**
   * Each describeRuns call: where it looked (its CE's region or subscription), for which Run UIDs,
   * and whether it was a full look (no `observed` given: nothing the caller saw before is assumed).
   */
  readonly describes: { where: string; runUids: string[]; full: boolean }[] = [];
  /**
   * As the real providers do (AWS once a recorded instance is no longer listed, Azure for a VM
   * missing from the list): a machine the Run recorded that this look does not see is described
   * as terminated, marked `unlisted` (an inference, not a find). Off: described as unknown.
   */
  inferUnlisted = false;
  /** describeRuns throws this while set. */
  describeError: CloudError | undefined;
  /** terminateRun throws this while set (e.g. a Terminal AccessDenied). */
  terminateError: CloudError | undefined;
  /** disposeEnvironment throws this while set. */
  disposeError: CloudError | undefined;
  /** Credential data seen by the last call (to prove rotation reaches the provider). */
  lastCredentials: Record<string, string> | undefined;
  /** Next provision fails with this error (then clears unless sticky). */
  provisionError: CloudError | undefined;
  provisionErrorSticky = false;
  /**
   * While set, a launch is accepted and the machine is not placed (as Azure answers a VM it cannot
   * allocate: the VM exists, its provisioning failed): it stays pending, and describes report this
   * as its `launchFailure`.
   */
  unplaced: { reason: string; message: string } | undefined;
  /** Next launch creates the machine and then throws this (a crash after the cloud call). */
  launchErrorAfterCreate: CloudError | undefined;
  /** Machines start "pending" and turn "running" on the next describe. */
  /** Reported launch time offset (ms in the past), to test timeouts without waiting. */
  launchedAgoMs = 0;
  /**
   * See CloudProvider.reportsPipelineStart: set, a running machine is setting up until the test
   * says its launcher started the pipeline (startPipeline). Unset, running means the pipeline runs.
   */
  reportsPipelineStart = false;
  /** See CloudProvider.unlistedLaunchMs (this fake lists a machine at once; set it to test the wait). */
  unlistedLaunchMs: number | undefined;
  private seq = 0;

  private ceUid(ctx: EnvContext): string {
    return ctx.ce.metadata.uid ?? "";
  }

  static where(ce: ComputeEnvironment): string {
    return ce.spec.aws?.region ?? ce.spec.azure?.subscriptionId ?? "";
  }

  /** The Run's machine, as a look with this CE (a region, a subscription) can see it. */
  private seenFrom(ce: ComputeEnvironment, run: Run): FakeMachine | undefined {
    const m = this.machines.get(run.metadata.uid ?? "");
    return m && (m.where === undefined || m.where === FakeCloud.where(ce)) ? m : undefined;
  }

  async observeEnvironment(ctx: EnvContext): Promise<EnvObservation> {
    this.calls.observe++;
    return this.observation(ctx);
  }

  private observation(ctx: EnvContext): EnvObservation {
    const env = this.environments.get(this.ceUid(ctx));
    return {
      resources: env?.resources ?? [],
      ready: env !== undefined,
      missing: env ? [] : ["role", "instance profile"],
      status: env ? { aws: { roleArn: env.resources[0]?.id ?? "", instanceProfileArn: env.resources[1]?.id ?? "" } } : {},
    };
  }

  async provisionEnvironment(ctx: EnvContext): Promise<EnvObservation> {
    this.calls.provision++;
    this.lastCredentials = { ...ctx.credentials.data };
    if (this.provisionError) {
      const e = this.provisionError;
      if (!this.provisionErrorSticky) this.provisionError = undefined;
      throw e;
    }
    const uid = this.ceUid(ctx);
    if (!this.environments.has(uid)) {
      const name = `TowerForge-${ctx.ce.metadata.name}-${uid.slice(0, 8)}`;
      this.environments.set(uid, {
        resources: [
          { kind: "IAMRole", id: `arn:aws:iam::000000000000:role/${name}`, name },
          { kind: "InstanceProfile", id: `arn:aws:iam::000000000000:instance-profile/${name}`, name },
        ],
      });
    }
    return this.observation(ctx);
  }

  async disposeEnvironment(ctx: EnvContext): Promise<void> {
    this.calls.dispose++;
    if (this.disposeError) throw this.disposeError;
    this.environments.delete(this.ceUid(ctx));
  }

  async launchRun(ctx: EnvContext, run: Run, hints?: LaunchHints): Promise<RunDescription> {
    this.calls.launch++;
    const uid = run.metadata.uid ?? "";
    let m = this.machines.get(uid);
    if (m && m.where !== undefined && m.where !== FakeCloud.where(ctx.ce) && m.state !== "terminated") {
      // A cloud would launch a second machine there; this fake keeps one per Run and says so.
      throw new Error(`FakeCloud: Run ${uid} launched in ${FakeCloud.where(ctx.ce)} while its machine ${m.id} runs in ${m.where}`);
    }
    if (!m || (m.where !== undefined && m.where !== FakeCloud.where(ctx.ce))) {
      m = {
        id: `i-${(++this.seq).toString(16).padStart(17, "0")}`,
        runUid: uid,
        ceUid: this.ceUid(ctx),
        where: FakeCloud.where(ctx.ce),
        state: "pending",
        launchedAt: new Date(Date.now() - this.launchedAgoMs).toISOString(),
        log: [],
        ...(this.unplaced ? { launchFailure: { ...this.unplaced } } : {}),
      };
      this.machines.set(uid, m);
    } else if (m.launchFailure && m.state !== "shutting-down" && m.state !== "terminated") {
      // Found not placed and not deleted yet: deleted now and refused, naming the machine (the one
      // the Run waits for when the operator says so), as the Azure provider does with a failed VM.
      m.state = "shutting-down";
      throw CloudError.capacity(m.launchFailure.reason, `machine ${m.id} of an earlier attempt could not be placed; it is being deleted`, undefined, m.id, hints?.capacityReason !== undefined);
    } else if (m.launchFailure && (m.state === "shutting-down" || m.state === "terminated")) {
      // An unplaced machine terminated (as its Run's capacity wait does) and launched again: made
      // anew under the same ID, as Azure makes a VM again under its name; placed unless `unplaced`.
      m.state = "pending";
      m.launchedAt = new Date(Date.now() - this.launchedAgoMs).toISOString();
      if (this.unplaced) m.launchFailure = { ...this.unplaced };
      else delete m.launchFailure;
    }
    if (this.launchErrorAfterCreate) {
      const e = this.launchErrorAfterCreate;
      this.launchErrorAfterCreate = undefined;
      throw e;
    }
    return this.describe(m);
  }

  async describeRuns(ctx: EnvContext, runs: Run[]): Promise<Map<string, RunDescription | undefined>> {
    this.calls.describe++;
    this.describes.push({ where: FakeCloud.where(ctx.ce), runUids: runs.map((r) => r.metadata.uid ?? ""), full: !ctx.observed });
    if (this.describeError) throw this.describeError;
    const out = new Map<string, RunDescription | undefined>();
    for (const run of runs) {
      const uid = run.metadata.uid ?? "";
      const m = this.seenFrom(ctx.runCe?.(run) ?? ctx.ce, run);
      if (!m) {
        const recorded = run.status?.instance?.id;
        out.set(uid, this.inferUnlisted && recorded ? { instanceId: recorded, state: "terminated", unlisted: true } : undefined);
        continue;
      }
      if (m.state === "pending" && !m.launchFailure) m.state = "running";
      else if (m.state === "shutting-down") m.state = "terminated";
      out.set(uid, this.describe(m));
    }
    return out;
  }

  /** One call for all; each Run is terminateRun's, counted there (terminateError refuses each, named in the answer). */
  async terminateRuns(ctx: EnvContext, runs: Run[]): Promise<Map<string, unknown>> {
    const failed = new Map<string, unknown>();
    for (const run of runs) {
      try {
        await this.terminateRun(ctx, run);
      } catch (e) {
        failed.set(run.metadata.uid ?? "", e);
      }
    }
    return failed;
  }

  async terminateRun(ctx: EnvContext, run: Run): Promise<void> {
    this.calls.terminate++;
    this.terminatedUids.push(run.metadata.uid ?? "");
    if (this.terminateError) throw this.terminateError;
    const m = this.seenFrom(ctx.ce, run);
    if (m && m.state !== "terminated") m.state = "shutting-down";
  }

  async readRunLog(ctx: EnvContext, run: Run, from?: string): Promise<RunLogChunk> {
    this.calls.readLog++;
    const m = this.seenFrom(ctx.ce, run);
    if (!m) return { lines: [] };
    const start = from ? Number(from) : 0;
    return { lines: m.log.slice(start), next: String(m.log.length) };
  }

  async sweepOrphans(ctx: EnvContext, live: Set<string>): Promise<string[]> {
    this.calls.sweep++;
    const stopped: string[] = [];
    for (const m of this.machines.values()) {
      if (m.ceUid === this.ceUid(ctx) && !live.has(m.runUid) && m.state !== "terminated") {
        m.state = "terminated";
        stopped.push(m.id);
      }
    }
    return stopped;
  }

  /** Test control: the launcher on this Run's machine says the pipeline started (see reportsPipelineStart). */
  startPipeline(runUid: string): void {
    this.mustGet(runUid).pipelineStarted = true;
  }

  /** Test control: the pipeline on this Run's machine ends with `exitCode` and the machine powers off. */
  finish(runUid: string, exitCode: number): void {
    const m = this.mustGet(runUid);
    m.log.push("N E X T F L O W  ~  version 25.04.0", `VMFORGE_EXIT_CODE=${exitCode}`);
    m.exitCode = exitCode;
    m.state = "terminated";
  }

  /** Test control: the pipeline ends and the machine powers off, its outcome still on its way (as an exit line Log Analytics has not made queryable yet). */
  endAwaitingOutcome(runUid: string): void {
    const m = this.mustGet(runUid);
    m.state = "terminated";
    m.outcomeDue = true;
  }

  /** Test control: the machine disappears without an exit code (e.g. a Spot interruption when `reclaimed`). */
  interrupt(runUid: string, reason: string, reclaimed = false): void {
    const m = this.mustGet(runUid);
    m.state = "terminated";
    m.stateReason = reason;
    if (reclaimed) m.interrupted = true;
  }

  /** Test control: the pipeline ends with `exitCode` but the machine keeps running (its shutdown failed). */
  endWithoutShutdown(runUid: string, exitCode: number): void {
    const m = this.mustGet(runUid);
    m.log.push(`VMFORGE_EXIT_CODE=${exitCode}`);
    m.exitCode = exitCode;
  }

  machineOf(runUid: string): FakeMachine | undefined {
    return this.machines.get(runUid);
  }

  private mustGet(runUid: string): FakeMachine {
    const m = this.machines.get(runUid);
    if (!m) throw new Error(`no machine for run ${runUid}`);
    return m;
  }

  private describe(m: FakeMachine): RunDescription {
    return {
      instanceId: m.id,
      state: m.state,
      launchedAt: m.launchedAt,
      ...(m.exitCode !== undefined ? { exitCode: m.exitCode } : {}),
      ...(m.stateReason ? { stateReason: m.stateReason } : {}),
      ...(m.interrupted ? { interrupted: true } : {}),
      ...(this.reportsPipelineStart ? { pipelineStarted: m.pipelineStarted === true } : {}),
      ...(m.outcomeDue && m.exitCode === undefined ? { outcomeUnknown: true, outcomeDue: true, stateReason: "its exit line is on its way" } : {}),
      // Said while the unplaced machine is there (not once its termination was sent).
      ...(m.launchFailure && m.state === "pending" ? { launchFailure: { ...m.launchFailure } } : {}),
      instance: { id: m.id, type: "m6i.large", zone: "us-east-1a" },
      log: { provider: "cloudwatch", group: "/vmforge/test", stream: m.runUid },
    };
  }
}
