/**
 * A process-wide hook through which providers report each cloud API call (no SDK types here).
 * The operator's metrics (src/metrics.ts) install the observer; without one, reports go nowhere.
 */
export type CloudCallOutcome = "success" | "throttled" | "error";

export interface CloudCall {
  provider: string;
  /** e.g. "EC2", "IAM" (AWS) or "Compute", "Network" (Azure). */
  service: string;
  /** e.g. "DescribeInstances". */
  operation: string;
  outcome: CloudCallOutcome;
  seconds: number;
}

let observer: ((c: CloudCall) => void) | undefined;

export function setCloudCallObserver(fn: ((c: CloudCall) => void) | undefined): void {
  observer = fn;
}

export function observeCloudCall(c: CloudCall): void {
  try {
    observer?.(c);
  } catch {
    // Metrics never break a cloud call.
  }
}

const THROTTLE_NAMES = new Set(["Throttling", "ThrottlingException", "ThrottledException", "RequestLimitExceeded", "TooManyRequestsException", "RequestThrottled", "RequestThrottledException", "SlowDown", "TooManyRequests"]);

/** "throttled" for a throttling error (by name, code or HTTP 429), else "error". */
export function errorOutcome(err: unknown): CloudCallOutcome {
  const e = err as { name?: string; code?: string; statusCode?: number; $metadata?: { httpStatusCode?: number } } | undefined;
  if (e && (THROTTLE_NAMES.has(e.name ?? "") || THROTTLE_NAMES.has(e.code ?? "") || e.statusCode === 429 || e.$metadata?.httpStatusCode === 429)) return "throttled";
  return "error";
}
