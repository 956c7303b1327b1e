/**
 * Lease moves made by "another process" in the leader-election tests: what a rival replica does
 * when it takes the Lease (as after a partition) or when the tests read who holds it.
 */
import { KubeApiError, type KubeClient } from "../../src/engine/kube.js";
import { LeaseResource } from "../../src/engine/leader.js";
import type { Lease } from "../../src/engine/leader.js";
import { formatMicroTime } from "../../src/engine/events.js";

export { LeaseResource };
export type { Lease };

/** The Lease's holder, or undefined when nobody holds it (absent, or released with an empty holder). */
export async function leaseHolder(client: KubeClient, ns: string, name: string): Promise<string | undefined> {
  return (await client.get<Lease>(LeaseResource, ns, name))?.spec?.holderIdentity || undefined;
}

/**
 * Another holder takes the Lease for an hour, as an elector that acquired it would write it
 * (acquired and renewed now, one more transition): its former holder must stop acting.
 */
export async function stealLease(client: KubeClient, ns: string, name: string, thief = "thief"): Promise<void> {
  // The holder renews meanwhile (every fraction of a second in the tests): read again on a conflict.
  for (let attempt = 1; ; attempt++) {
    const lease = await client.get<Lease>(LeaseResource, ns, name);
    if (!lease) throw new Error(`no Lease ${ns}/${name}`);
    const now = formatMicroTime(new Date());
    try {
      await client.replace<Lease>(LeaseResource, {
        ...lease,
        spec: {
          ...lease.spec, holderIdentity: thief, acquireTime: now, renewTime: now, leaseDurationSeconds: 3600,
          leaseTransitions: (lease.spec?.leaseTransitions ?? 0) + 1,
        },
      });
      return;
    } catch (e) {
      if (!(e instanceof KubeApiError && e.status === 409) || attempt >= 10) throw e;
    }
  }
}
