/**
 * Draws the SVG charts of a bench:rpc JSON file again (bench/lib/plot.ts), without running the
 * benchmark: `node --import tsx bench/plot.ts [bench/results/rpc.json] [DIR]` (DIR: the JSON's folder).
 */
import { readFileSync } from "node:fs";
import { dirname } from "node:path";
import { writeCharts, type RpcResults } from "./lib/plot.js";

const file = process.argv[2] ?? new URL("./results/rpc.json", import.meta.url).pathname;
const dir = process.argv[3] ?? dirname(file);
const results = JSON.parse(readFileSync(file, "utf8")) as RpcResults;
for (const f of writeCharts(results, dir)) console.log(`chart written to ${f}`);
