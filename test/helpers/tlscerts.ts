// Test helper: a private PKI made with the `openssl` CLI in a directory: a CA, a server certificate for
// 127.0.0.1 (subjectAltName IP:127.0.0.1 and DNS:localhost) and a client certificate, both signed by the
// CA, plus the client certificate and key in one PEM (containerd's single-file `client` form). Short-lived
// EC P-256 keys, so making a set takes a few tens of milliseconds.
import { execFile } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
/** Validity of the generated certificates (they only live as long as a test run). */
export const TEST_CERT_DAYS = 2;
const EC_KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

/** Paths of the generated PEM files (all in the directory given to makeTestCertificates). */
export interface TestCertificates {
  dir: string;
  caCert: string;
  caKey: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  /** Client certificate followed by its key, in one file. */
  clientCombined: string;
}

async function openssl(args: string[]): Promise<void> {
  try {
    await run('openssl', args);
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr?.trim() ?? '';
    throw new Error(`openssl ${args[0]} failed: ${stderr || (err as Error).message}`, { cause: err });
  }
}

/** Signs a new key's certificate with the CA; `extensions` is an openssl extfile text. */
async function issue(dir: string, name: string, subject: string, extensions: string, ca: { cert: string; key: string }): Promise<{ cert: string; key: string }> {
  const p = (suffix: string): string => join(dir, `${name}${suffix}`);
  await openssl(['req', ...EC_KEY, '-keyout', p('-key.pem'), '-out', p('.csr'), '-subj', subject]);
  await writeFile(p('.ext'), extensions);
  await openssl(['x509', '-req', '-in', p('.csr'), '-CA', ca.cert, '-CAkey', ca.key, '-CAcreateserial', '-out', p('.pem'), '-days', String(TEST_CERT_DAYS), '-extfile', p('.ext')]);
  return { cert: p('.pem'), key: p('-key.pem') };
}

/** Makes a CA (named `caName` in its subject) with a server and a client certificate in `dir` (created). */
export async function makeTestCertificates(dir: string, caName = 'erofs-lazy test CA'): Promise<TestCertificates> {
  await mkdir(dir, { recursive: true });
  const ca = { cert: join(dir, 'ca.pem'), key: join(dir, 'ca-key.pem') };
  await openssl(['req', '-x509', ...EC_KEY, '-keyout', ca.key, '-out', ca.cert, '-days', String(TEST_CERT_DAYS), '-subj', `/CN=${caName}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  const server = await issue(dir, 'server', '/CN=127.0.0.1',
    'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n', ca);
  const client = await issue(dir, 'client', '/CN=erofs-lazy test client',
    'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n', ca);
  const clientCombined = join(dir, 'client-combined.pem');
  await writeFile(clientCombined, `${await readFile(client.cert, 'utf8')}${await readFile(client.key, 'utf8')}`);
  return { dir, caCert: ca.cert, caKey: ca.key, serverCert: server.cert, serverKey: server.key, clientCert: client.cert, clientKey: client.key, clientCombined };
}
