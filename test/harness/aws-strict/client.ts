// Typed client of the strict AWS layer's control API (test/harness/aws-strict/server.ts).
//
//   const aws = new StrictAwsControl(motoEndpoint());
//   await aws.configure({ idempotency: true, faults: [{ action: "ec2:RunInstances", error: "throttle", count: 2 }] });
//   ...
//   await aws.reset(); // everything off again (each integration test file also starts that way)
import { CONTROL_PREFIX, type CrashPoint, type CrashState, type StrictAwsConfig, type StrictAwsConfigPatch, type StrictAwsStats } from "./config.js";

export type { CapacityRule, ConsistencyConfig, CrashPoint, CrashRecord, CrashState, FaultRule, HoldRule, IamConfig, LatencyRule, RateLimitRule, StrictAwsConfig, StrictAwsConfigPatch, StrictAwsStats } from "./config.js";

export class StrictAwsControl {
  constructor(readonly endpoint: string) {}

  private async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await fetch(new URL(`${CONTROL_PREFIX}${path}`, this.endpoint), {
      method,
      ...(body !== undefined ? { body: JSON.stringify(body), headers: { "content-type": "application/json" } } : {}),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`strict AWS layer: ${method} ${path}: HTTP ${res.status} ${text}`);
    return JSON.parse(text) as T;
  }

  /** Changes some behaviours; returns the whole configuration now in force. */
  configure(patch: StrictAwsConfigPatch): Promise<StrictAwsConfig> {
    return this.call("PUT", "/config", patch);
  }

  config(): Promise<StrictAwsConfig> {
    return this.call("GET", "/config");
  }

  /** Every behaviour off (what the layer learnt, such as access keys and launch times, stays). */
  async reset(): Promise<void> {
    await this.call("POST", "/reset");
  }

  /** Requests per IAM action since the start, the last moto reset or resetStats(). */
  stats(): Promise<StrictAwsStats> {
    return this.call("GET", "/stats");
  }

  async resetStats(): Promise<void> {
    await this.call("POST", "/stats/reset");
  }

  /** Lets every request held by a hold rule go on; returns how many there were. */
  async releaseHolds(): Promise<number> {
    return (await this.call<{ released: number }>("POST", "/holds/release")).released;
  }

  /**
   * Arms a crash point: at `atWrite` (counted per access key, see stats().writes) the layer
   * SIGKILLs `pid` before or after passing the write on. Fires once; reset() disarms.
   */
  armCrash(point: CrashPoint): Promise<CrashState> {
    return this.call("POST", "/crash", point);
  }

  /** Armed crash points and the ones that fired. */
  crashes(): Promise<CrashState> {
    return this.call("GET", "/crash");
  }

  /** The writes of one access key so far, in order (IAM actions). */
  async writesOf(accessKeyId: string): Promise<string[]> {
    return (await this.stats()).writes[accessKeyId] ?? [];
  }
}
