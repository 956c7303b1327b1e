/**
 * A process-wide hook through which the controllers report each read they send to the
 * kube-apiserver although a watch cache holds what they read: the places where a stale read could
 * do harm (README, "Reads"). The operator's metrics (src/metrics.ts) install the observer as
 * vmforge_fresh_reads_total; without one, reports go nowhere.
 */
export type FreshReadWhy =
  /** A Run whose launch was decided and whose machine is not recorded: the stored Run, before the launch is tried again. */
  | "launch-in-flight"
  /** Recording a launched machine met a newer version of the Run: that version, to record the machine on it. */
  | "record-conflict"
  /** A CE about to dispose of its environment or release its finalizer: its Runs, which the cache may not show yet. */
  | "before-disposal"
  /** Releasing credentials Secrets no CE needs: the protected Secrets and the CEs. */
  | "secret-release";

let observer: ((resource: string, why: FreshReadWhy) => void) | undefined;

export function setFreshReadObserver(fn: ((resource: string, why: FreshReadWhy) => void) | undefined): void {
  observer = fn;
}

export function noteFreshRead(resource: string, why: FreshReadWhy): void {
  try {
    observer?.(resource, why);
  } catch {
    // Metrics never break a read.
  }
}
