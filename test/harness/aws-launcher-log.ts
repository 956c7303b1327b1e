// What a Run's launcher leaves in CloudWatch Logs through the agent, played into moto: every line
// in the Run's stream, and its machine-readable lines (VMFORGE_...) in the markers stream as well,
// as the launcher writes them to a file of their own (src/cloud/aws/launcher.sh, MARKER_LOG).
import { CreateLogGroupCommand, CreateLogStreamCommand, PutLogEventsCommand, type CloudWatchLogsClient } from "@aws-sdk/client-cloudwatch-logs";
import type { Run } from "../../src/api/types.js";
import { logStreamName, markerLogStreamName } from "../../src/cloud/aws/logs.js";

/** The launcher's machine-readable lines (what goes to the markers stream too). */
export function isMarkerLine(line: string): boolean {
  return /^VMFORGE_[A-Z_]+(=[a-z0-9-]*)?$/.test(line.trim());
}

/** Writes `lines` as the launcher would: all to the Run's stream, the markers to the markers stream too. */
export async function shipLauncherLines(logs: CloudWatchLogsClient, group: string, run: Run, lines: string[]): Promise<void> {
  await logs.send(new CreateLogGroupCommand({ logGroupName: group })).catch(() => undefined);
  const t = Date.now();
  const put = async (stream: string, messages: string[]): Promise<void> => {
    if (messages.length === 0) return;
    await logs.send(new CreateLogStreamCommand({ logGroupName: group, logStreamName: stream })).catch((e: unknown) => {
      if ((e as { name?: string }).name !== "ResourceAlreadyExistsException") throw e;
    });
    await logs.send(new PutLogEventsCommand({ logGroupName: group, logStreamName: stream, logEvents: messages.map((message, i) => ({ message, timestamp: t + i })) }));
  };
  await put(logStreamName(run), lines);
  await put(markerLogStreamName(run), lines.filter(isMarkerLine));
}
