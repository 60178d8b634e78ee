#!/usr/bin/env node
// Compares the kernel's C selftests (built by build.ts from 6.12 and 7.3) with
// the TypeScript ports in dist/selftests/, per kernel: the host's (only if it
// has /dev/kvm) and each test-VM kernel, in ONE VM boot per kernel (vm-run.js
// runs every binary and port inside and writes JSON into the VM's work share).
// Prints one table per kernel; --out writes the tables as Markdown and all
// results as JSON.
//
//   npm run selftest:compare [-- --kernel host|6.1|6.12|7.3]... [--timeout S] [--test NAME]... [--out FILE] [--rerender]
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import {
  ALL_TESTS,
  cacheRoot,
  type KernelRunFile,
  repoRoot,
  runWithTimeout,
  SOURCE_RECIPES,
  SOURCE_SERIES,
  type SourceSeries,
  seriesDirs,
  TEST_ARGS,
  testName,
  X86_TESTS,
} from './common.js';
import {
  classifyC,
  classifyPort,
  enclosingFunction,
  makeRow,
  type PerfRow,
  perfRows,
  renderMarkdown,
  renderPerfMarkdown,
  renderPerfText,
  renderText,
  type Row,
} from './parse.js';
import { runInTestVm } from '../testvm/vm.js';

const KERNELS = ['host', '6.1', '6.12', '7.3'] as const;

const USAGE = `usage: compare.js [--kernel host|6.1|6.12|7.3]... [--timeout S] [--test NAME]... [--out FILE] [--rerender]
  Runs each C selftest (6.12 and 7.3 builds, from npm run selftest:c:build) and its TypeScript port on each
  kernel (default: host, 6.1, 6.12, 7.3; the host only if it has /dev/kvm), one test-VM boot per kernel, and
  prints a table per kernel.
  --timeout S   per run (default 150); a run past it is killed and reported as a hang
  --test NAME   only these tests (default all: ${ALL_TESTS.join(', ')})
  --out FILE    also write the tables as Markdown to FILE and every result as JSON to FILE with .json
                (FILE.md -> FILE.json; FILE.json -> FILE.md)
  --rerender    no runs: render the results saved by the last run of each kernel (${path.join(cacheRoot(), 'results')})`;

interface Options {
  kernels: string[];
  timeoutS: number;
  tests: string[];
  out: string | undefined;
  rerender: boolean;
}

function parseArgs(argv: string[]): Options {
  const o: Options = { kernels: [], timeoutS: 150, tests: [], out: undefined, rerender: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value\n${USAGE}`);
      return v;
    };
    if (a === '--kernel') {
      const k = value();
      if (!(KERNELS as readonly string[]).includes(k)) throw new Error(`--kernel takes ${KERNELS.join(', ')}, got ${k}`);
      o.kernels.push(k);
    } else if (a === '--timeout') o.timeoutS = Number(value());
    else if (a === '--test') o.tests.push(testName(value()));
    else if (a === '--out') o.out = value();
    else if (a === '--rerender') o.rerender = true;
    else if (a === '-h' || a === '--help') {
      process.stdout.write(`${USAGE}\n`);
      process.exit(0);
    } else throw new Error(`unknown option ${a}\n${USAGE}`);
  }
  if (!(o.timeoutS > 0)) throw new Error('--timeout needs a positive number of seconds');
  if (o.kernels.length === 0) o.kernels = [...KERNELS];
  if (o.tests.length === 0) o.tests = [...ALL_TESTS];
  return o;
}

/** A source-line -> C function lookup over the built trees (for failures that come without frames). */
function sourceLookup(series: SourceSeries): (file: string, line: number) => string | undefined {
  const cache = new Map<string, string | null>();
  const recipe = SOURCE_RECIPES[series];
  const kvm = path.join(seriesDirs(series).tree, `linux-source-${series}`, 'tools', 'testing', 'selftests', 'kvm');
  const dirs = [kvm, path.join(kvm, recipe.x86Dir), path.join(kvm, 'lib'), path.join(kvm, 'lib', recipe.x86Dir), path.join(kvm, 'include')];
  const read = (file: string): string | null => {
    if (cache.has(file)) return cache.get(file)!;
    let text: string | null = null;
    for (const d of [path.dirname(path.join(kvm, file)), ...dirs]) {
      const p = path.join(d, path.basename(file));
      if (existsSync(p)) {
        text = readFileSync(p, 'utf8');
        break;
      }
    }
    cache.set(file, text);
    return text;
  };
  return (file, line) => {
    const src = read(file);
    return src === null ? undefined : enclosingFunction(src, line);
  };
}

/** The table rows of one kernel's results. */
export function rowsOf(kernel: string, res: KernelRunFile, tests: readonly string[]): Row[] {
  const rows: Row[] = [];
  for (const test of tests) {
    const portRun = res.port[test];
    const port = classifyPort(portRun);
    for (const s of SOURCE_SERIES) {
      if (!SOURCE_RECIPES[s].tests.includes(test)) continue;
      const cRun = res.c[test]?.[s];
      const c = classifyC(test, cRun, sourceLookup(s));
      rows.push(makeRow(kernel, test, s, c, port, cRun?.wallMs, portRun?.wallMs));
    }
  }
  return rows;
}

/** memslot_perf_test's per-iteration figures, C builds and port side by side (empty when it did not run). */
export function perfRowsOf(res: KernelRunFile): PerfRow[] {
  const test = 'memslot_perf_test';
  const c = Object.fromEntries(SOURCE_SERIES.map((s) => [s, res.c[test]?.[s]?.output]));
  const port = res.port[test]?.output;
  if (port === undefined && Object.values(c).every((o) => o === undefined)) return [];
  return perfRows(c, port);
}

const PERF_HEADING = `memslot_perf_test, best time per iteration per phase (arguments: ${(TEST_ARGS.memslot_perf_test ?? []).join(' ')}; the C test's printed figures and the port's, same words):`;

interface KernelOutcome {
  kernel: string;
  /** Why it was not run, or why its run failed. */
  problem?: string;
  results?: KernelRunFile;
  vmWallMs?: number;
  rows: Row[];
}

async function runOnHost(o: Options, resultFile: string): Promise<KernelRunFile> {
  const runner = path.join(repoRoot(), 'dist', 'tools', 'selftests-c', 'vm-run.js');
  const args = [runner, '--out', resultFile, '--timeout', String(o.timeoutS), ...o.tests.flatMap((t) => ['--test', t])];
  const r = await runWithTimeout([process.execPath, ...args], o.timeoutS * (o.tests.length * 3 + 1), repoRoot());
  process.stderr.write(r.output);
  return JSON.parse(await readFile(resultFile, 'utf8')) as KernelRunFile;
}

async function runInVm(kernel: string, o: Options): Promise<{ results: KernelRunFile; wallMs: number }> {
  const root = repoRoot();
  const runner = path.join(root, 'dist', 'tools', 'selftests-c', 'vm-run.js');
  const runs = o.tests.length * (SOURCE_SERIES.length + 1);
  const res = await runInTestVm({
    kernel,
    cpus: 1,
    cwd: root,
    keepWorkDir: true,
    timeoutMs: (240 + runs * (o.timeoutS + 15)) * 1000,
    command: [process.execPath, runner, '--timeout', String(o.timeoutS), ...o.tests.flatMap((t) => ['--test', t])],
    onOutput: (chunk) => process.stderr.write(chunk),
  });
  const file = path.join(res.workDir!, 'selftests-c.json');
  try {
    if (!existsSync(file)) throw new Error(`the VM wrote no ${path.basename(file)} (exit code ${res.exitCode}); output:\n${res.output.slice(-3000)}`);
    return { results: JSON.parse(await readFile(file, 'utf8')) as KernelRunFile, wallMs: res.wallMs };
  } finally {
    await rm(res.workDir!, { recursive: true, force: true });
  }
}

function kernelHeading(k: KernelOutcome): string {
  const where = k.kernel === 'host' ? 'this host' : `test VM (--kernel ${k.kernel}, QEMU TCG, 1 vCPU)`;
  const rel = k.results ? `Linux ${k.results.kernelRelease}` : `kernel ${k.kernel}`;
  const when = k.results ? `, run ${k.results.startedAt.replace(/\.\d+Z$/, 'Z')}` : '';
  const vm = k.vmWallMs !== undefined ? `, whole VM ${(k.vmWallMs / 1000).toFixed(0)} s` : '';
  return `${rel} (${where}${when}${vm})`;
}

function buildsLine(all: KernelOutcome[]): string {
  const b = all.find((k) => k.results)?.results?.builds ?? {};
  return Object.entries(b)
    .map(([s, v]) => `${s}: linux-source-${s} ${v}`)
    .join('; ');
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const root = repoRoot();
  const resultsDir = path.join(cacheRoot(), 'results');
  await mkdir(resultsDir, { recursive: true });
  if (!o.rerender) {
    const built = SOURCE_SERIES.filter((s) => existsSync(seriesDirs(s).info));
    if (built.length === 0) throw new Error(`no C selftests built in ${cacheRoot()}: run npm run selftest:c:build first`);
    if (!existsSync(path.join(root, 'dist', 'tools', 'selftests-c', 'vm-run.js'))) throw new Error('dist/ is not built: npx tsc -p tsconfig.json');
  }
  const outcomes: KernelOutcome[] = [];
  for (const kernel of o.kernels) {
    const saved = path.join(resultsDir, `${kernel}.json`);
    const outcome: KernelOutcome = { kernel, rows: [] };
    outcomes.push(outcome);
    try {
      if (o.rerender) {
        if (!existsSync(saved)) throw new Error(`no saved results (${saved})`);
        const s = JSON.parse(await readFile(saved, 'utf8')) as KernelRunFile & { vmWallMs?: number };
        outcome.results = s;
        if (s.vmWallMs !== undefined) outcome.vmWallMs = s.vmWallMs;
      } else if (kernel === 'host') {
        if (!existsSync('/dev/kvm')) throw new Error('this host has no /dev/kvm: skipped (the test VMs have one)');
        outcome.results = await runOnHost(o, saved);
      } else {
        process.stderr.write(`[compare] booting the test VM with --kernel ${kernel} (one boot for all ${o.tests.length} tests)\n`);
        const r = await runInVm(kernel, o);
        outcome.results = r.results;
        outcome.vmWallMs = r.wallMs;
        await writeFile(saved, `${JSON.stringify({ ...r.results, vmWallMs: r.wallMs }, null, 1)}\n`);
      }
      outcome.rows = rowsOf(kernel, outcome.results, o.tests);
    } catch (e) {
      outcome.problem = e instanceof Error ? e.message : String(e);
    }
    const head = kernelHeading(outcome);
    process.stdout.write(`\n== ${head}\n`);
    if (outcome.problem) process.stdout.write(`   ${outcome.problem}\n`);
    else {
      if (!outcome.results!.devKvm) process.stdout.write('   (no /dev/kvm there: every run skips)\n');
      process.stdout.write(`${renderText(outcome.rows)}\n`);
      const perf = perfRowsOf(outcome.results!);
      if (perf.length > 0) process.stdout.write(`\n${PERF_HEADING}\n${renderPerfText(perf, SOURCE_SERIES)}\n`);
    }
  }
  if (o.out) {
    const ext = path.extname(o.out);
    const base = ext === '.md' || ext === '.json' ? o.out.slice(0, -ext.length) : o.out;
    const md = [
      `# C selftests vs TypeScript ports (${new Date().toISOString().slice(0, 10)})`,
      '',
      `C builds: ${buildsLine(outcomes)}. Per-run timeout ${o.timeoutS} s. x86 tests (${[...X86_TESTS].join(', ')}) are built from x86_64/ (6.12) and x86/ (7.3).`,
      '',
      ...outcomes.flatMap((k) => {
        const perf = k.results ? perfRowsOf(k.results) : [];
        const figures = perf.length > 0 ? [PERF_HEADING, '', renderPerfMarkdown(perf, SOURCE_SERIES), ''] : [];
        return [`## ${kernelHeading(k)}`, '', k.problem ? k.problem : renderMarkdown(k.rows), '', ...(k.problem ? [] : figures)];
      }),
    ].join('\n');
    await writeFile(`${base}.md`, md);
    const json = outcomes.map((k) => ({
      kernel: k.kernel,
      problem: k.problem,
      kernelRelease: k.results?.kernelRelease,
      builds: k.results?.builds,
      startedAt: k.results?.startedAt,
      vmWallMs: k.vmWallMs,
      memslotPerfFigures: k.results ? perfRowsOf(k.results) : [],
      rows: k.rows.map((r) => ({
        test: r.test,
        build: r.build,
        c: r.c,
        port: r.port,
        agreement: r.agreement,
        cWallMs: r.cWallMs,
        portWallMs: r.portWallMs,
      })),
    }));
    await writeFile(`${base}.json`, `${JSON.stringify(json, null, 1)}\n`);
    process.stdout.write(`\nwrote ${base}.md and ${base}.json\n`);
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`selftest:compare: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(2);
});
