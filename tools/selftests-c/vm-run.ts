#!/usr/bin/env node
// Runs, on the kernel it is started on (a test VM's, or the host's), each built
// C selftest (6.12 and 7.3 builds) and the TypeScript port of each test, one
// after another, each with a timeout, and writes everything to one JSON file
// (rewritten after every run, so a VM that dies half-way leaves what was done).
// compare.ts starts it inside a test VM and renders the table on the host.
//
//   node dist/tools/selftests-c/vm-run.js --out FILE [--timeout S] [--test NAME]... [--cache DIR]
import { existsSync, readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { release } from 'node:os';
import path from 'node:path';
import { ALL_TESTS, cacheRoot, type BuildInfo, type KernelRunFile, repoRoot, runWithTimeout, SOURCE_SERIES, seriesDirs, TEST_ARGS } from './common.js';

interface Options {
  out: string;
  timeoutS: number;
  tests: string[];
  cache: string;
}

function parseArgs(argv: string[]): Options {
  const o: Options = { out: '', timeoutS: 150, tests: [], cache: cacheRoot() };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const v = argv[++i];
    if (v === undefined) throw new Error(`${a} needs a value`);
    if (a === '--out') o.out = v;
    else if (a === '--timeout') o.timeoutS = Number(v);
    else if (a === '--test') o.tests.push(v);
    else if (a === '--cache') o.cache = v;
    else throw new Error(`unknown option ${a}`);
  }
  if (!o.out) {
    const work = process.env.TESTVM_WORK;
    if (!work) throw new Error('--out FILE is needed (or $TESTVM_WORK, inside a test VM)');
    o.out = path.join(work, 'selftests-c.json');
  }
  if (!(o.timeoutS > 0)) throw new Error('--timeout needs a positive number of seconds');
  if (o.tests.length === 0) o.tests = [...ALL_TESTS];
  return o;
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const root = repoRoot();
  const res: KernelRunFile = {
    kernelRelease: release(),
    devKvm: existsSync('/dev/kvm'),
    startedAt: new Date().toISOString(),
    timeoutS: o.timeoutS,
    builds: {},
    c: {},
    port: {},
    noPort: [],
  };
  for (const s of SOURCE_SERIES) {
    const info = seriesDirs(s, o.cache).info;
    if (existsSync(info)) res.builds[s] = (JSON.parse(readFileSync(info, 'utf8')) as BuildInfo).version;
  }
  const save = (): Promise<void> => writeFile(o.out, `${JSON.stringify(res, null, 1)}\n`);
  const say = (s: string): void => {
    process.stdout.write(`[vm-run ${res.kernelRelease}] ${s}\n`);
  };
  say(`/dev/kvm ${res.devKvm ? 'present' : 'ABSENT'}; builds: ${JSON.stringify(res.builds)}; timeout ${o.timeoutS} s per run`);
  await save();
  for (const test of o.tests) {
    const args = TEST_ARGS[test] ?? [];
    for (const s of SOURCE_SERIES) {
      const bin = path.join(seriesDirs(s, o.cache).bin, test);
      if (!existsSync(bin)) continue;
      const r = await runWithTimeout([bin, ...args], o.timeoutS, '/tmp');
      (res.c[test] ??= {})[s] = r;
      say(`C ${s} ${test}: ${r.timedOut ? 'TIMEOUT' : `exit ${r.exitCode ?? r.signal}`} in ${(r.wallMs / 1000).toFixed(2)} s`);
      await save();
    }
    const port = path.join(root, 'dist', 'selftests', `${test}.js`);
    if (!existsSync(port)) {
      res.noPort.push(test);
      say(`port ${test}: none`);
      await save();
      continue;
    }
    const r = await runWithTimeout([process.execPath, port, ...args], o.timeoutS, root);
    res.port[test] = r;
    say(`port ${test}: ${r.timedOut ? 'TIMEOUT' : `exit ${r.exitCode ?? r.signal}`} in ${(r.wallMs / 1000).toFixed(2)} s`);
    await save();
  }
  res.finishedAt = new Date().toISOString();
  await save();
  say(`results in ${o.out}`);
}

main().catch((e: unknown) => {
  process.stderr.write(`vm-run: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(2);
});
