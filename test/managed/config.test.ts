/** The `[daemon]` table (src/managed/config.ts): defaults, scopes by pid / uid, and errors that name the key. */
import { test } from "uvu";
import * as assert from "uvu/assert";
import { parseDaemonConfig } from "../../src/managed/config.js";
import { parseConfig } from "../../src/policy/config.js";

const err = (text: string): string => {
  try {
    parseDaemonConfig(text, "k.toml");
  } catch (e) {
    return (e as Error).message;
  }
  return "no error";
};

test("defaults, engines with their scopes; the library's parser accepts the [daemon] key", () => {
  const c = parseDaemonConfig(`[daemon]\nsocket = "/tmp/d.sock"\n[[daemon.engines]]\nkind = "acl"\n[[daemon.engines]]\nkind = "ratelimit"\nscope = { pid = 42 }\n[[daemon.engines]]\nkind = "null"\nname = "n"\nscope = { service = "a.B" }\n`);
  assert.is(c.socket, "/tmp/d.sock");
  assert.is(c.pollUs, 200, "adaptive polling, at most 200 µs, by default");
  assert.is(c.pollMode, "adaptive");
  assert.is(parseDaemonConfig(`[daemon]\npollUs = 0\npollMode = "fixed"\n`).pollMode, "fixed");
  assert.is(c.control, true);
  assert.equal(c.engines.map((e) => [e.name, e.scope]), [["acl", { global: true }], ["ratelimit", { global: true, side: "server", backend: "pid:42" }], ["n", { service: "a.B" }]]);
  assert.is(parseConfig(`[daemon]\npollUs = 5\n`).engines.length, 0);
  assert.is(parseDaemonConfig("").engines.length, 0, "no [daemon] table: the defaults");
});

test("a mistyped key, a bad scope, a bad engine option: errors naming the file and the key", () => {
  assert.match(err(`[daemon]\nsokcet = "x"\n`), /^k\.toml: daemon: unknown option "sokcet" \(did you mean "socket"\?\)/);
  assert.match(err(`[daemon]\npollUs = -1\n`), /k\.toml: daemon.*pollUs/);
  assert.match(err(`[daemon]\npollMode = "spin"\n`), /k\.toml: daemon.*pollMode.*"adaptive", "fixed"/);
  assert.match(err(`[[daemon.engines]]\nkind = "acl"\nscope = { pid = "me" }\n`), /k\.toml: daemon\.engines\[0\]\.scope\.pid: must be a non-negative integer/);
  assert.match(err(`[[daemon.engines]]\nkind = "acl"\nscope = { pid = 1, uid = 2 }\n`), /exactly one of/);
  assert.match(err(`[[daemon.engines]]\nkind = "ratelimit"\noptions = { burts = 1 }\n`), /k\.toml: daemon\.engines\[0\]\.options.*burts/);
  assert.match(err(`[[daemon.engines]]\nkind = "nope"\n`), /daemon\.engines\[0\]\.options: unknown engine "nope"/);
  assert.match(err(`[[daemon.engines]]\nkind = "acl"\n[[daemon.engines]]\nkind = "acl"\n`), /daemon\.engines\[1\]\.name: "acl" is taken/);
});

test.run();
