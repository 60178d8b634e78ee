#!/usr/bin/env node
// The kvm-gmem command: runs the compiled CLI in dist/ (built by `npm install`
// through the prepare script, or by `npm run build:ts`).
import { existsSync } from 'node:fs';

const entry = new URL('../dist/lib/cli/main.js', import.meta.url);
if (!existsSync(entry)) {
  process.stderr.write('kvm-gmem: the compiled CLI (dist/lib/cli/main.js) is missing: run npm install, or npm run build:ts\n');
  process.exit(2);
}
const { main } = await import(entry.href);
process.exitCode = await main(process.argv.slice(2));
