/**
 * The tls transport beyond the conformance suite: what a refused handshake looks like (an
 * untrusted certificate, a wrong host, mutual TLS without a client certificate, plaintext and
 * TLS ends that do not match), the TLS options and their checks, and the peer's identity.
 */
import { suite } from "uvu";
import * as assert from "uvu/assert";
import tls from "node:tls";
import { Code, KoalaError, RpcError, closeClient, createClient, createServer } from "../../src/index.js";
import { connect, listen, parseAddress, transportInfo, type Connection, type Listener, type TransportOptions } from "../../src/transport/index.js";
import { EchoService } from "../fixtures/rpc/gen/echo.js";
import { clientTls, mutualClientTls, pem, pemPath, serverTls } from "../fixtures/tls/certs.js";
import { echoImpl, observe } from "../rpc/echo-service.js";
import { quietly, rejection } from "../helpers.js";
import { policies } from "../../src/policy/index.js";

/** Short enough that a hang shows, long enough for a loaded machine. */
const CONNECT_MS = 5_000;

const open: (Listener | Connection)[] = [];

/** A listener whose connections echo every message; closed after the test. */
async function echoListener(address: string, options: TransportOptions): Promise<Listener> {
  const l = await listen(address, options);
  open.push(l);
  l.onConnection((c) => {
    open.push(c);
    c.onMessage((m) => {
      if (!c.isClosed) c.send([m]);
    });
  });
  return l;
}

async function dial(address: string, options?: TransportOptions): Promise<Connection> {
  const c = await connect(address, { connectTimeoutMs: CONNECT_MS, ...options });
  open.push(c);
  return c;
}

/** Sends one message on `c`, whose peer echoes, and checks that it comes back. */
async function echoes(c: Connection, what: string): Promise<void> {
  const back = new Promise<Uint8Array>((resolve) => c.onMessage(resolve));
  c.send([new TextEncoder().encode(what)]);
  assert.is(new TextDecoder().decode(await back), what);
}

/** The KoalaError `p` rejects with, and how long that took. */
async function failure(p: Promise<unknown>): Promise<{ err: KoalaError; ms: number }> {
  const start = Date.now();
  try {
    const c = await p;
    if (c !== undefined && typeof (c as Connection).close === "function") (c as Connection).close();
  } catch (err) {
    assert.ok(err instanceof KoalaError, `expected a KoalaError, got ${String(err)}`);
    return { err: err as KoalaError, ms: Date.now() - start };
  }
  throw new Error("expected a failure; it succeeded");
}

const t = suite("tls transport");

t.after.each(async () => {
  for (const x of open.splice(0).reverse()) {
    if ("accept" in x) await x.close();
    else x.close();
  }
});

// ---- addresses --------------------------------------------------------------------------------

t("tls://host:port addresses parse like tcp ones, IPv6 in brackets; tls is listed wherever schemes are", () => {
  assert.equal(parseAddress("tls://example.org:443"), { scheme: "tls", host: "example.org", port: 443, path: "" });
  assert.equal(parseAddress("tls://[::1]:5000"), { scheme: "tls", host: "::1", port: 5000, path: "" });
  assert.throws(() => parseAddress("tls://example.org"), /expected host:port/);
  assert.throws(() => parseAddress("tls:example.org:1"), /expected tls:\/\/host:port/);
  assert.throws(() => parseAddress("ssl://example.org:1"), /known: tcp, tls, unix/);
  const info = transportInfo({});
  assert.equal(info.transports.find((x) => x.name === "tls"), { name: "tls", available: true });
});

t("a connection over tls://[::1] and tls://localhost: messages both ways, each end's address", async () => {
  const l6 = await echoListener("tls://[::1]:0", { tls: serverTls });
  assert.match(l6.address, /^tls:\/\/\[::1\]:\d+$/);
  const c6 = await dial(l6.address, { tls: clientTls });
  assert.is(c6.transport, "tls");
  assert.is(c6.remoteAddress, l6.address);
  assert.match(c6.localAddress, /^tls:\/\/\[::1\]:\d+$/);
  await echoes(c6, "over IPv6");
  // A host name is checked against the certificate's DNS names (and sent in SNI).
  const l4 = await echoListener("tls://127.0.0.1:0", { tls: serverTls });
  const byName = await dial(l4.address.replace("127.0.0.1", "localhost"), { tls: clientTls });
  await echoes(byName, "by name");
});

// ---- refused handshakes -----------------------------------------------------------------------

t("a server certificate the client does not trust: KOALA_ERR_TLS naming it, in time; the server keeps serving", async () => {
  await quietly(async () => {
    const l = await echoListener("tls://127.0.0.1:0", { tls: serverTls });
    const { err, ms } = await failure(dial(l.address, { tls: { ca: pem("other-ca.pem") } }));
    assert.is(err.code, "KOALA_ERR_TLS");
    assert.match(err.message, /UNABLE_TO_VERIFY_LEAF_SIGNATURE/);
    assert.ok(err.message.includes(l.address), err.message);
    assert.ok(ms < CONNECT_MS, `failed after ${ms} ms`);
    // Node's default CA list does not have the test CA either.
    assert.match((await failure(dial(l.address))).err.message, /UNABLE_TO_VERIFY_LEAF_SIGNATURE/);
    await echoes(await dial(l.address, { tls: clientTls }), "still serving");
  });
});

t("rejectUnauthorized: false connects to an untrusted server and says so in peerCertificate", async () => {
  const l = await echoListener("tls://127.0.0.1:0", { tls: serverTls });
  const c = await dial(l.address, { tls: { ca: pem("other-ca.pem"), rejectUnauthorized: false } });
  assert.is(c.peerCertificate?.authorized, false);
  assert.is(c.peerCertificate?.subject, "localhost");
  await echoes(c, "unverified");
});

t("a host the certificate is not for: KOALA_ERR_TLS with ERR_TLS_CERT_ALTNAME_INVALID; the server keeps serving", async () => {
  await quietly(async () => {
    const l = await echoListener("tls://0.0.0.0:0", { tls: serverTls });
    const port = l.address.slice(l.address.lastIndexOf(":") + 1);
    // The certificate names localhost, 127.0.0.1 and ::1: another name or IP of this machine is refused.
    for (const [address, options] of [
      [`tls://127.0.0.1:${port}`, { ...clientTls, servername: "koala.example" }],
      [`tls://127.0.0.2:${port}`, clientTls],
    ] as const) {
      const { err, ms } = await failure(dial(address, { tls: options }));
      assert.is(err.code, "KOALA_ERR_TLS", err.message);
      assert.match(err.message, /ERR_TLS_CERT_ALTNAME_INVALID/);
      assert.ok(ms < CONNECT_MS, `failed after ${ms} ms`);
    }
    await echoes(await dial(`tls://127.0.0.1:${port}`, { tls: clientTls }), "still serving");
  });
});

t("mutual TLS: a client with a certificate from the CA is accepted and identified; without one it is refused", async () => {
  await quietly(async () => {
    const l = await listen("tls://127.0.0.1:0", { tls: { ...serverTls, ca: pem("ca.pem"), requestCert: true } });
    open.push(l);
    const accepted: Connection[] = [];
    l.onConnection((c) => {
      open.push(c);
      accepted.push(c);
      c.onMessage((m) => c.send([m]));
    });

    const good = await dial(l.address, { tls: mutualClientTls });
    await echoes(good, "mutual");
    assert.is(accepted.length, 1);
    assert.equal(accepted[0]!.peerCertificate, { authorized: true, subject: "koala-test-client", altNames: ["DNS:koala-test-client"] });

    const none = await failure(dial(l.address, { tls: clientTls }));
    assert.is(none.err.code, "KOALA_ERR_TLS", none.err.message);
    assert.match(none.err.message, /certificate required/);
    assert.ok(none.ms < CONNECT_MS, `failed after ${none.ms} ms`);

    // A certificate from a CA the server does not trust: the server drops it after the handshake.
    const stranger = await failure(dial(l.address, { tls: { ca: pem("ca.pem"), key: pem("other-client.key"), cert: pem("other-client.pem") } }));
    assert.ok(["KOALA_ERR_PEER_CLOSED", "KOALA_ERR_CONNECTION_RESET", "KOALA_ERR_TLS"].includes(stranger.err.code), stranger.err.message);
    assert.match(stranger.err.message, /certificate/);
    assert.ok(stranger.ms < CONNECT_MS, `failed after ${stranger.ms} ms`);

    assert.is(accepted.length, 1, "neither refused client was handed out");
    await echoes(await dial(l.address, { tls: mutualClientTls }), "still serving");
  });
});

t("a plaintext client on a TLS port and a TLS client on a plaintext port both fail in time, naming the mismatch", async () => {
  await quietly(async () => {
    const secure = await echoListener("tls://127.0.0.1:0", { tls: serverTls });
    const plain = await echoListener("tcp://127.0.0.1:0", {});

    const plainOnTls = await failure(dial(secure.address.replace("tls:", "tcp:")));
    assert.ok(plainOnTls.ms < CONNECT_MS, `failed after ${plainOnTls.ms} ms`);
    assert.match(plainOnTls.err.message, /tls:\/\/ listener/);

    const tlsOnPlain = await failure(dial(plain.address.replace("tcp:", "tls:"), { tls: clientTls }));
    assert.is(tlsOnPlain.err.code, "KOALA_ERR_TLS");
    assert.match(tlsOnPlain.err.message, /does not speak TLS/);
    assert.ok(tlsOnPlain.ms < CONNECT_MS, `failed after ${tlsOnPlain.ms} ms`);

    await echoes(await dial(secure.address, { tls: clientTls }), "the TLS listener still serves");
    await echoes(await dial(plain.address), "the plaintext listener still serves");
  });
});

t("an RPC over tls: calls work; a client that does not trust the server fails UNAVAILABLE naming the reason", async () => {
  await quietly(async () => {
    const server = createServer({ transport: { tls: serverTls } });
    server.add(EchoService, echoImpl(observe()));
    const address = await server.listen("tls://127.0.0.1:0");
    const good = createClient(EchoService, address, { transport: { tls: clientTls } });
    const bad = createClient(EchoService, address, { transport: { tls: { ca: pem("other-ca.pem") } } });
    try {
      assert.is((await good.unary({ text: "over tls" })).text, "over tls");
      const err = await rejection(bad.unary({ text: "refused" }, { timeoutMs: CONNECT_MS }));
      assert.ok(err instanceof RpcError);
      assert.is(Code[err.code], "UNAVAILABLE", err.message);
      assert.match(err.message, /UNABLE_TO_VERIFY_LEAF_SIGNATURE/);
      assert.is((await good.unary({ text: "again" })).text, "again");
    } finally {
      closeClient(good);
      closeClient(bad);
      server.forceShutdown();
    }
  });
});

t("mutual TLS under RPC: the handler and a server interceptor see the client's certificate, a client interceptor the server's", async () => {
  const server = createServer({
    transport: { tls: { ...serverTls, ca: pem("ca.pem"), requestCert: true } },
    interceptors: [
      {
        name: "only-koala-test-client",
        onCall: (call) => (call.peerCertificate?.authorized === true && call.peerCertificate.subject === "koala-test-client" ? undefined : new RpcError(Code.PERMISSION_DENIED, "who are you?")),
      },
    ],
  });
  server.add(EchoService, { unary: (req, ctx) => ({ text: `${req.text} from ${ctx.peerCertificate?.subject ?? "nobody"}` }) });
  const address = await server.listen("tls://127.0.0.1:0");
  const serverSeen: (string | undefined)[] = [];
  const client = createClient(EchoService, address, {
    transport: { tls: mutualClientTls },
    interceptors: [{ name: "record", onEnd: (call) => void serverSeen.push(call.peerCertificate?.subject) }],
  });
  const plain = createServer();
  plain.add(EchoService, { unary: (req, ctx) => ({ text: `${req.text}: ${String(ctx.peerCertificate)}` }) });
  const plainAddress = await plain.listen("tcp://127.0.0.1:0");
  const overTcp = createClient(EchoService, plainAddress);
  try {
    assert.is((await client.unary({ text: "hello" })).text, "hello from koala-test-client");
    assert.equal(serverSeen, ["localhost"], "the client's call knows the server's certificate");
    assert.is((await overTcp.unary({ text: "tcp" })).text, "tcp: undefined", "no certificate over tcp");
  } finally {
    closeClient(client);
    closeClient(overTcp);
    server.forceShutdown();
    plain.forceShutdown();
  }
});

t("acl by certificate: a rule on peerSubject lets the client whose verified certificate names it through, and no other", async () => {
  const server = createServer({ transport: { tls: { ...serverTls, ca: pem("ca.pem"), requestCert: true, rejectUnauthorized: false } } });
  server.add(EchoService, echoImpl(observe()));
  const address = await server.listen("tls://127.0.0.1:0");
  policies.attach("acl", { default: "deny", rules: [{ action: "allow", peerSubject: "koala-test-client" }] }, { name: "by-cert", scope: { global: true, side: "server" } });
  const known = createClient(EchoService, address, { transport: { tls: mutualClientTls } });
  // Accepted by TLS (the server does not reject unverified certificates) but not verified: the rule needs a verified one.
  const stranger = createClient(EchoService, address, { transport: { tls: { ca: pem("ca.pem"), key: pem("other-client.key"), cert: pem("other-client.pem") } } });
  const anonymous = createClient(EchoService, address, { transport: { tls: clientTls } });
  try {
    assert.is((await known.unary({ text: "in" })).text, "in");
    assert.is(Code[(await rejection(stranger.unary({ text: "out" }))).code], "PERMISSION_DENIED");
    assert.is(Code[(await rejection(anonymous.unary({ text: "out" }))).code], "PERMISSION_DENIED");
    assert.throws(() => policies.configure("by-cert", { rules: [{ action: "allow", peerSubject: 7 }] }), /peerSubject/);
  } finally {
    policies.detach("by-cert");
    closeClient(known);
    closeClient(stranger);
    closeClient(anonymous);
    server.forceShutdown();
  }
});

// ---- options ----------------------------------------------------------------------------------

t("TLS options are checked: the error names the option", async () => {
  const code = async (p: Promise<unknown>, pattern: RegExp): Promise<void> => {
    const { err } = await failure(p);
    assert.is(err.code, "KOALA_ERR_INVALID_ARGUMENT", err.message);
    assert.match(err.message, pattern);
  };
  await code(listen("tls://127.0.0.1:0"), /"tls\.key" and "tls\.cert"/);
  await code(listen("tls://127.0.0.1:0", { tls: { ca: pem("ca.pem") } }), /"tls\.key" and "tls\.cert"/);
  await code(listen("tls://127.0.0.1:0", { tls: { key: pem("server.key") } }), /option "tls": "key" is given without "cert"/);
  await code(listen("tls://127.0.0.1:0", { tls: { cert: pem("server.pem") } }), /option "tls": "cert" is given without "key"/);
  await code(listen("tls://127.0.0.1:0", { tls: { ...serverTls, requestCrt: true } as never }), /unknown option "requestCrt" \(did you mean "requestCert"\?\)/);
  await code(listen("tls://127.0.0.1:0", { tls: { ...serverTls, requestCert: "yes" } as never }), /option "requestCert" must be a boolean/);
  await code(connect("tls://127.0.0.1:1", { tls: { ca: 5 } as never }), /option "ca" must be a non-empty PEM string or Buffer/);
  await code(connect("tls://127.0.0.1:1", { tls: { ca: [] } }), /option "ca"/);
  await code(connect("tls://127.0.0.1:1", { tls: { servername: "" } }), /option "servername"/);
  await code(connect("tls://127.0.0.1:1", { tls: { minVersion: "TLSv1" } as never }), /option "minVersion" must be one of "TLSv1.2", "TLSv1.3"/);
  await code(connect("tls://127.0.0.1:1", { tls: "on" } as never), /option "tls" must be an object/);
  // Well-formed but not a key: found when the listener loads it.
  await code(listen("tls://127.0.0.1:0", { tls: { key: "not a key", cert: pem("server.pem") } }), /"tls\.key", "tls\.cert" or "tls\.ca" cannot be loaded/);
  // Through createServer's "transport" option, checked when the server is created.
  try {
    createServer({ transport: { tls: { rejectUnauthorised: false } as never } });
    assert.unreachable("createServer accepted a misspelled TLS option");
  } catch (err) {
    assert.is((err as KoalaError).code, "KOALA_ERR_INVALID_ARGUMENT");
    assert.match((err as Error).message, /createServer\(\): option "transport": option "tls": unknown option "rejectUnauthorised"/);
  }
});

t("minVersion: a TLS 1.3-only listener refuses a TLS 1.2 client and goes on serving", async () => {
  await quietly(async () => {
    const l = await echoListener("tls://127.0.0.1:0", { tls: { ...serverTls, minVersion: "TLSv1.3" } });
    const port = Number(l.address.slice(l.address.lastIndexOf(":") + 1));
    // koala has no maxVersion: an older client is node:tls limited to TLS 1.2.
    const old = tls.connect({ host: "127.0.0.1", port, ca: pem("ca.pem"), maxVersion: "TLSv1.2" });
    const err = await new Promise<Error>((resolve, reject) => {
      old.once("error", resolve);
      old.once("secureConnect", () => reject(new Error("a TLS 1.2 client was accepted")));
    });
    old.destroy();
    assert.match((err as { code?: string }).code ?? "", /PROTOCOL_VERSION/);
    await echoes(await dial(l.address, { tls: { ...clientTls, minVersion: "TLSv1.3" } }), "a TLS 1.3 client");
  });
});

// ---- peer identity ----------------------------------------------------------------------------

t("peerCertificate: the client sees the server's verified certificate; undefined without one and on tcp", async () => {
  const l = await listen("tls://127.0.0.1:0", { tls: serverTls });
  open.push(l);
  const accepted = l.accept();
  const c = await dial(l.address, { tls: clientTls });
  const s = await accepted;
  open.push(s);
  assert.equal(c.peerCertificate, { authorized: true, subject: "localhost", altNames: ["DNS:localhost", "IP Address:127.0.0.1", "IP Address:0:0:0:0:0:0:0:1"] });
  assert.ok(Object.isFrozen(c.peerCertificate));
  assert.is(s.peerCertificate, undefined, "the server did not ask the client for a certificate");
  const tl = await echoListener("tcp://127.0.0.1:0", {});
  assert.is((await dial(tl.address)).peerCertificate, undefined);
});

// ---- KOALA_TRANSPORT=tls and the KOALA_TLS_* variables ----------------------------------------

const ENV_NAMES = ["KOALA_TRANSPORT", "KOALA_TLS_CERT", "KOALA_TLS_KEY", "KOALA_TLS_CA", "KOALA_TLS_SERVERNAME"] as const;

/** Runs `fn` with exactly `vars` of ENV_NAMES set in process.env (the rest unset), then puts them back. */
async function withEnv<T>(vars: Partial<Record<(typeof ENV_NAMES)[number], string>>, fn: () => Promise<T>): Promise<T> {
  const saved = ENV_NAMES.map((n) => [n, process.env[n]] as const);
  for (const n of ENV_NAMES) delete process.env[n];
  Object.assign(process.env, vars);
  try {
    return await fn();
  } finally {
    for (const [n, v] of saved) {
      if (v === undefined) delete process.env[n];
      else process.env[n] = v;
    }
  }
}

const serverEnv = { KOALA_TRANSPORT: "tls", KOALA_TLS_CERT: pemPath("server.pem"), KOALA_TLS_KEY: pemPath("server.key") };
const clientEnv = { KOALA_TRANSPORT: "tls", KOALA_TLS_CA: pemPath("ca.pem") };

t("KOALA_TRANSPORT=tls with the certificates from KOALA_TLS_* only: an RPC over TLS, the client seeing the server's verified certificate", async () => {
  const all = { ...serverEnv, ...clientEnv };
  await withEnv(all, async () => {
    const server = createServer();
    server.add(EchoService, echoImpl(observe()));
    const address = await server.listen("127.0.0.1:0");
    assert.match(address, /^tls:\/\/127\.0\.0\.1:\d+$/);
    const port = address.slice(address.lastIndexOf(":") + 1);
    const seen: unknown[] = [];
    const client = createClient(EchoService, `koala://127.0.0.1:${port}`, { interceptors: [{ name: "record", onEnd: (call) => void seen.push(call.peerCertificate) }] });
    try {
      assert.is((await client.unary({ text: "env only" })).text, "env only");
      assert.equal(seen, [{ authorized: true, subject: "localhost", altNames: ["DNS:localhost", "IP Address:127.0.0.1", "IP Address:0:0:0:0:0:0:0:1"] }]);
    } finally {
      closeClient(client);
      server.forceShutdown();
    }
  });
});

t("KOALA_TLS_*: a listener needs only CERT and KEY, a client only CA; a scheme-less address and tls:// both use them", async () => {
  const l = await withEnv(serverEnv, () => echoListener("127.0.0.1:0", {}));
  assert.match(l.address, /^tls:\/\//);
  const port = l.address.slice(l.address.lastIndexOf(":") + 1);
  await withEnv(clientEnv, async () => {
    for (const address of [`127.0.0.1:${port}`, `localhost:${port}`, l.address]) {
      const c = await dial(address);
      assert.is(c.transport, "tls", address);
      assert.is(c.peerCertificate?.authorized, true, address);
      await echoes(c, address);
    }
  });
});

t("KOALA_TLS_*: the transport option tls wins; a CA that did not sign the server's certificate fails as it does in options", async () => {
  await quietly(async () => {
    const l = await echoListener("tls://127.0.0.1:0", { tls: serverTls });
    await withEnv({ KOALA_TLS_CA: pemPath("other-ca.pem") }, async () => {
      const { err } = await failure(dial(l.address));
      assert.is(err.code, "KOALA_ERR_TLS");
      assert.match(err.message, /UNABLE_TO_VERIFY_LEAF_SIGNATURE/);
      await echoes(await dial(l.address, { tls: clientTls }), "the option's CA wins");
    });
    // The key and certificate go as a pair: an option's pair wins over the variables' pair.
    await withEnv({ KOALA_TLS_CERT: pemPath("other-client.pem"), KOALA_TLS_KEY: pemPath("other-client.key"), KOALA_TLS_CA: pemPath("ca.pem") }, async () => {
      const own = await echoListener("tls://127.0.0.1:0", { tls: serverTls });
      await echoes(await dial(own.address), "the server's certificate is the option's");
    });
    await withEnv({ KOALA_TLS_CA: pemPath("ca.pem"), KOALA_TLS_SERVERNAME: "koala.example" }, async () => {
      const { err } = await failure(dial(l.address));
      assert.match(err.message, /ERR_TLS_CERT_ALTNAME_INVALID/, "KOALA_TLS_SERVERNAME is the name checked");
      await echoes(await dial(l.address, { tls: { servername: "localhost" } }), "the option's servername wins");
    });
  });
});

t("KOALA_TLS_*: a missing, unreadable or non-PEM file, or CERT without KEY, is KOALA_ERR_INVALID_ARGUMENT naming the variable and path", async () => {
  const invalid = async (p: Promise<unknown>, pattern: RegExp): Promise<void> => {
    const { err } = await failure(p);
    assert.is(err.code, "KOALA_ERR_INVALID_ARGUMENT", err.message);
    assert.match(err.message, pattern);
  };
  const missing = "/nonexistent/koala/server.pem";
  await withEnv({ ...serverEnv, KOALA_TLS_CERT: missing }, () => invalid(listen("127.0.0.1:0"), /listen on tls:\/\/127\.0\.0\.1:0: KOALA_TLS_CERT="\/nonexistent\/koala\/server\.pem" cannot be read: no such file/));
  await withEnv({ ...serverEnv, KOALA_TLS_KEY: pemPath("") }, () => invalid(listen("127.0.0.1:0"), /KOALA_TLS_KEY=".*" cannot be read: is a directory/));
  await withEnv({ ...serverEnv, KOALA_TLS_KEY: pemPath("README.md") }, () => invalid(listen("127.0.0.1:0"), /KOALA_TLS_KEY=".*README\.md" is not a PEM file/));
  await withEnv({ KOALA_TRANSPORT: "tls", KOALA_TLS_CERT: pemPath("server.pem") }, () => invalid(listen("127.0.0.1:0"), /KOALA_TLS_CERT is set without KOALA_TLS_KEY/));
  await withEnv({ KOALA_TRANSPORT: "tls" }, () => invalid(listen("127.0.0.1:0"), /"tls\.key" and "tls\.cert".*KOALA_TLS_KEY and KOALA_TLS_CERT/));
  await withEnv({ KOALA_TRANSPORT: "tls", KOALA_TLS_CA: "/nonexistent/ca.pem" }, () => invalid(connect("127.0.0.1:1"), /connect to tls:\/\/127\.0\.0\.1:1: KOALA_TLS_CA="\/nonexistent\/ca\.pem" cannot be read/));
  // A call through a client: it fails, and the message still names the variable.
  await withEnv({ KOALA_TRANSPORT: "tls", KOALA_TLS_CA: "/nonexistent/ca.pem" }, async () => {
    const client = createClient(EchoService, "127.0.0.1:1");
    try {
      const err = await rejection(client.unary({ text: "x" }, { timeoutMs: CONNECT_MS }));
      assert.match(err.message, /KOALA_TLS_CA="\/nonexistent\/ca\.pem"/);
    } finally {
      closeClient(client);
    }
  });
});

t.run();
