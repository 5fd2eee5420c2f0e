import { execFileSync } from "node:child_process";
import { join } from "node:path";

/**
 * A self-signed certificate made with openssl into `dir` as `<name>.crt` / `<name>.key`, valid two
 * days, for `commonName` with `subjectAltName` (e.g. "IP:127.0.0.1", "DNS:cvm.tencentcloudapi.com").
 * The certificate is its own CA: trust `cert` to trust the server.
 */
export function selfSignedCertificate(
  dir: string,
  name: string,
  commonName: string,
  subjectAltName: string,
): { cert: string; key: string } {
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  execFileSync(
    "openssl",
    [
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      key,
      "-out",
      cert,
      "-days",
      "2",
      "-subj",
      `/CN=${commonName}`,
      "-addext",
      `subjectAltName=${subjectAltName}`,
    ],
    { stdio: "ignore" },
  );
  return { cert, key };
}
