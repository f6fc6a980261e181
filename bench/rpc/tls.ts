/**
 * The certificates of the TLS columns: the test-only ones of `test/fixtures/tls/` (a test CA, a
 * server certificate for localhost and 127.0.0.1), TLS 1.3 as both libraries negotiate it.
 */
import { readFileSync } from "node:fs";

const read = (name: string): Buffer => readFileSync(new URL(`../../test/fixtures/tls/${name}`, import.meta.url));

/** The server's key and certificate chain. */
export const serverKey = read("server.key");
/** The server's certificate. */
export const serverCert = read("server.pem");
/** The CA the clients trust. */
export const caCert = read("ca.pem");
