// Writes tests/fixtures/fossil_vectors.json: sources, targets and the deltas
// the reference fossil-delta npm package (the algorithm centrifuge-js
// applies) makes for them, which src/protocol/fossil.rs must apply; then
// scripts/fossil-vectors/ adds Centrifugo's encoder's deltas, which it must
// reproduce byte for byte.
//
//   npm install --prefix /tmp/fossilgen fossil-delta@2.0.0
//   NODE_PATH=/tmp/fossilgen/node_modules node scripts/fossil-vectors.mjs > /tmp/npm.json
//   (cd scripts/fossil-vectors && go run . < /tmp/npm.json) > tests/fixtures/fossil_vectors.json
import { createRequire } from "node:module";
const require = createRequire(process.env.NODE_PATH + "/");
const { createDelta, applyDelta } = await import(require.resolve("fossil-delta"));

let seed = 42;
const rand = (n) => {
  seed = (seed * 1103515245 + 12345) % 2147483648;
  return seed % n;
};
const enc = (s) => new TextEncoder().encode(s);
const bytes = (n, alphabet = 256) => Uint8Array.from({ length: n }, () => rand(alphabet));
const state = (tick) =>
  JSON.stringify({
    tick,
    players: Array.from({ length: 12 }, (_, i) => ({
      id: i,
      name: "player-" + i,
      x: (i * 37 + tick * (i % 3)) % 1000,
      y: (i * 91 + tick) % 1000,
      hp: 100 - ((tick + i) % 7),
    })),
    status: "running",
  });
const mutate = (src, edits) => {
  const out = Array.from(src);
  for (let e = 0; e < edits; e++) {
    const at = rand(out.length + 1);
    const kind = rand(3);
    if (kind === 0) out.splice(at, 1 + rand(4));
    else if (kind === 1) out.splice(at, 0, ...bytes(1 + rand(20)));
    else if (at < out.length) out[at] = rand(256);
  }
  return Uint8Array.from(out);
};

const cases = [
  ["empty to empty", new Uint8Array(), new Uint8Array()],
  ["empty to text", new Uint8Array(), enc("hello")],
  ["tiny source", enc("0123456789abcdef"), enc("0123456789abcdef!")],
  ["text to empty", enc("a longer source of more than sixteen bytes"), new Uint8Array()],
  ["identical", enc(state(1)), enc(state(1))],
  ["json tick", enc(state(1)), enc(state(2))],
  ["json ticks apart", enc(state(3)), enc(state(40))],
  ["appended", enc(state(5)), enc(state(5) + " and more")],
  ["prepended", enc(state(5)), enc("prefix " + state(5))],
  ["unrelated", enc(state(5)), bytes(900)],
  ["unicode", enc("ünïcödé ✓ ".repeat(20)), enc("ünïcödé ✓ ".repeat(19) + "ñ ✓")],
  ["repetitive", enc("ab".repeat(500)), enc("ab".repeat(250) + "c" + "ab".repeat(250))],
];
for (let i = 0; i < 16; i++) {
  const src = bytes(17 + rand(3000), i % 2 ? 256 : 8);
  cases.push(["random " + i, src, mutate(src, 1 + rand(30))]);
}
const hex = (a) => Buffer.from(a).toString("hex");
const out = cases.map(([name, source, target]) => {
  const delta = createDelta(source, target);
  const back = applyDelta(source, delta);
  if (hex(back) !== hex(target)) throw new Error("reference does not round-trip: " + name);
  return { name, source: hex(source), target: hex(target), delta: hex(delta) };
});
process.stdout.write(JSON.stringify(out, null, 1) + "\n");
