// A throw-away PKI for one test cluster, made with the openssl command-line tool:
// a CA, the kube-apiserver serving certificate, client certificates, and the
// service-account signing key pair.
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

async function openssl(args: string[], cwd: string): Promise<void> {
  try {
    await run("openssl", args, { cwd });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === "ENOENT") throw new Error("the openssl command is not installed (needed to create the test cluster's certificates)");
    throw new Error(`openssl ${args[0]} failed: ${e.stderr ?? e.message}`);
  }
}

export interface ClientCert {
  cert: string; // PEM file path
  key: string;
}

export interface ClusterPki {
  caCert: string;
  caKey: string;
  serverCert: string;
  serverKey: string;
  saPublicKey: string;
  saPrivateKey: string;
}

const serial = (): string => `0x${randomBytes(12).toString("hex")}`;

async function signedCert(
  dir: string,
  base: string,
  subject: string,
  extensions: string[],
  ca: { cert: string; key: string },
): Promise<ClientCert> {
  const key = join(dir, `${base}.key`);
  const csr = join(dir, `${base}.csr`);
  const cert = join(dir, `${base}.crt`);
  const ext = join(dir, `${base}.ext`);
  await openssl(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-subj", subject, "-out", csr], dir);
  await writeFile(ext, extensions.join("\n") + "\n");
  await openssl(["x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-set_serial", serial(), "-days", "7", "-sha256", "-extfile", ext, "-out", cert], dir);
  return { cert, key };
}

export async function createClusterPki(dir: string): Promise<ClusterPki> {
  const caCert = join(dir, "ca.crt");
  const caKey = join(dir, "ca.key");
  await openssl(
    [
      "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
      "-keyout", caKey, "-out", caCert, "-days", "7", "-sha256", "-subj", "/CN=vmforge-test-ca",
      "-addext", "basicConstraints=critical,CA:TRUE",
      "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    ],
    dir,
  );
  const ca = { cert: caCert, key: caKey };
  const server = await signedCert(
    dir,
    "apiserver",
    "/CN=kube-apiserver",
    [
      "basicConstraints=critical,CA:FALSE",
      "keyUsage=critical,digitalSignature,keyEncipherment",
      "extendedKeyUsage=serverAuth",
      "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.0.0.1",
    ],
    ca,
  );
  const saPrivateKey = join(dir, "sa.key");
  const saPublicKey = join(dir, "sa.pub");
  await openssl(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", saPrivateKey], dir);
  await openssl(["pkey", "-in", saPrivateKey, "-pubout", "-out", saPublicKey], dir);
  return { caCert, caKey, serverCert: server.cert, serverKey: server.key, saPublicKey, saPrivateKey };
}

/** A client certificate for Kubernetes: CN = user name, O = groups. */
export async function createClientCert(dir: string, pki: ClusterPki, base: string, user: string, groups: string[]): Promise<ClientCert> {
  const subject = `/CN=${user}` + groups.map((g) => `/O=${g}`).join("");
  return signedCert(
    dir,
    base,
    subject,
    ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment", "extendedKeyUsage=clientAuth"],
    { cert: pki.caCert, key: pki.caKey },
  );
}

export interface ServingPki {
  caCert: string;
  caKey: string;
  cert: string;
  key: string;
}

/** A throw-away CA and a serving certificate for 127.0.0.1/localhost signed by it (e.g. for the Azure emulator). */
export async function createServingPki(dir: string, cn: string): Promise<ServingPki> {
  const caCert = join(dir, "ca.crt");
  const caKey = join(dir, "ca.key");
  await openssl(
    [
      "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
      "-keyout", caKey, "-out", caCert, "-days", "7", "-sha256", "-subj", `/CN=${cn} test CA`,
      "-addext", "basicConstraints=critical,CA:TRUE",
      "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    ],
    dir,
  );
  const server = await signedCert(
    dir,
    "server",
    `/CN=${cn}`,
    [
      "basicConstraints=critical,CA:FALSE",
      "keyUsage=critical,digitalSignature,keyEncipherment",
      "extendedKeyUsage=serverAuth",
      "subjectAltName=IP:127.0.0.1,DNS:localhost",
    ],
    { cert: caCert, key: caKey },
  );
  return { caCert, caKey, cert: server.cert, key: server.key };
}
