// npm run bench:selftests: the conformance suite's wall time against the
// kernel's C selftests on the kernel it runs on, including process start-up.
// Per round and test, the C binary (npm run selftest:c:build) and the port
// as its own program run back to back, in alternating order, so each pair is
// measured a moment apart; then the whole suite runs once in one process
// (`kvm-gmem selftest`), where Node and the addon load once and each file's
// `# time:` line gives its share. Reports medians over the rounds and the
// ratios, per test and in total, as a table and as JSON.
//
//   node dist/tools/bench/selftests.js [--rounds N] [--test NAME]... [--build 6.12|7.3] [--timeout S] [--json FILE]
//   node dist/tools/bench/selftests.js --testvm 6.1|6.12|7.3 [same options]   (boots the test VM, runs there)
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { release } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { ALL_TESTS, cacheRoot, repoRoot, runWithTimeout, type SourceSeries, seriesDirs, TEST_ARGS, testName } from '../selftests-c/common.js';
import { type PerfRow, perfRows, renderPerfText, type RunRecord, textTable } from '../selftests-c/parse.js';
import { median } from './stats.js';

const USAGE = `usage: selftests.js [--rounds N] [--test NAME]... [--build 6.12|7.3] [--timeout S] [--json FILE] [--testvm KERNEL]
  Runs each C selftest and its TypeScript port N times (default 3) side by side, then the suite in one process,
  and prints the medians and ratios. --build picks the C build (default: 7.3 on Linux 6.13 and newer, else 6.12).
  --testvm KERNEL boots the test VM with that kernel (6.1, 6.12, 7.3) and runs there.`;

/** A C run over one second must come within this ratio (the target); shorter ones report their overhead. */
export const TARGET_RATIO = 1.2;

export interface Options {
  rounds: number;
  tests: string[];
  build: SourceSeries | undefined;
  timeoutS: number;
  json: string | undefined;
  testvm: string | undefined;
}

export function parseArgs(argv: string[]): Options {
  const o: Options = { rounds: 3, tests: [], build: undefined, timeoutS: 150, json: undefined, testvm: undefined };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value\n${USAGE}`);
      return v;
    };
    if (a === '--rounds') o.rounds = Number(value());
    else if (a === '--test') o.tests.push(testName(value()));
    else if (a === '--build') {
      const b = value();
      if (b !== '6.12' && b !== '7.3') throw new Error(`--build takes 6.12 or 7.3, got ${b}`);
      o.build = b;
    } else if (a === '--timeout') o.timeoutS = Number(value());
    else if (a === '--json') o.json = value();
    else if (a === '--testvm') o.testvm = value();
    else if (a === '-h' || a === '--help') {
      process.stdout.write(`${USAGE}\n`);
      process.exit(0);
    } else throw new Error(`unknown option ${a}\n${USAGE}`);
  }
  if (!Number.isInteger(o.rounds) || o.rounds < 1) throw new Error('--rounds needs a positive integer');
  if (!(o.timeoutS > 0)) throw new Error('--timeout needs a positive number of seconds');
  if (o.tests.length === 0) o.tests = [...ALL_TESTS];
  return o;
}

/** The C build whose tests match a kernel: 7.3's from Linux 6.13 on (its forms: MMAP flags, 7.x errnos), else 6.12's. */
export function buildFor(kernelRelease: string): SourceSeries {
  const m = /^(\d+)\.(\d+)/.exec(kernelRelease);
  const [maj, min] = m ? [Number(m[1]), Number(m[2])] : [0, 0];
  return maj > 6 || (maj === 6 && min > 12) ? '7.3' : '6.12';
}

/**
 * The arguments both sides of a test get: the comparison's (TEST_ARGS,
 * TCG-sized), and for memslot_perf_test with the 7.3 build its `-t 120` too,
 * so that the RW test's host wait (10 s by default, which the guest misses
 * under QEMU TCG) does not end either side; the 6.12 build has no -t.
 */
export function benchArgs(test: string, build: SourceSeries): string[] {
  const args = [...(TEST_ARGS[test] ?? [])];
  if (test === 'memslot_perf_test' && build === '7.3') args.push('-t', '120');
  return args;
}

/** pass / skip / fail (exit N) / hang, from a run's record. */
export function outcome(r: RunRecord): string {
  if (r.timedOut) return 'hang';
  if (r.exitCode === 0) return 'pass';
  if (r.exitCode === 4) return 'skip';
  return `fail (${r.exitCode ?? r.signal})`;
}

/**
 * Each file's `# time: S s` before its `ok N NAME` line in the suite's KTAP,
 * in seconds. Only unindented lines: a file's own tests (and their times)
 * are its subtest, indented.
 */
export function suiteFileTimes(ktap: string): Record<string, number> {
  const out: Record<string, number> = {};
  let last: number | undefined;
  for (const line of ktap.split('\n')) {
    const t = /^# time: ([\d.]+) s$/.exec(line);
    const ok = /^(?:not )?ok \d+ (\S+)/.exec(line);
    if (t) last = Number(t[1]);
    else if (ok) {
      if (last !== undefined) out[ok[1]!] = last;
      last = undefined;
    }
  }
  return out;
}

export interface TestRow {
  test: string;
  c: { outcome: string; medianS: number };
  port: { outcome: string; medianS: number };
  inSuite: { medianS: number };
  /** port (own process) / C, and port's in-suite share / C. */
  ratio: number;
  inSuiteRatio: number;
  /** C over one second: the target applies, to the port as its own program (start-up included). */
  target: 'met' | 'missed' | 'n/a (C < 1 s)';
}

export interface BenchResult {
  kernel: string;
  build: SourceSeries;
  rounds: number;
  rows: TestRow[];
  totals: { cS: number; portS: number; suiteS: number; suiteOutcome: string; nodeStartS: number };
  /** memslot_perf_test's best time per iteration per phase over all rounds, C and port (the test's own figures). */
  memslotPerf: PerfRow[];
}

export function makeRow(test: string, c: RunRecord[], port: RunRecord[], inSuiteS: number[]): TestRow {
  const cS = median(c.map((r) => r.wallMs / 1000));
  const pS = median(port.map((r) => r.wallMs / 1000));
  const sS = median(inSuiteS);
  const ratio = pS / cS;
  return {
    test,
    c: { outcome: outcome(c[c.length - 1]!), medianS: cS },
    port: { outcome: outcome(port[port.length - 1]!), medianS: pS },
    inSuite: { medianS: sS },
    ratio,
    inSuiteRatio: sS / cS,
    // Judged on the port as its own program: start-up included, as the C run's is.
    target: cS > 1 ? (ratio <= TARGET_RATIO ? 'met' : 'missed') : 'n/a (C < 1 s)',
  };
}

const f = (s: number): string => (Number.isFinite(s) ? `${s.toFixed(2)} s` : '—');
const x = (r: number): string => (Number.isFinite(r) ? `${r.toFixed(2)}x` : '—');

export function renderTable(res: BenchResult): string {
  const head = ['test', `C ${res.build}`, 'port', 'port/C', 'in suite', 'in suite/C', 'over C', `target <= ${TARGET_RATIO}`];
  const rows = res.rows.map((r) => [
    r.test,
    `${f(r.c.medianS)} ${r.c.outcome}`,
    `${f(r.port.medianS)} ${r.port.outcome}`,
    x(r.ratio),
    f(r.inSuite.medianS),
    x(r.inSuiteRatio),
    f(r.inSuite.medianS - r.c.medianS),
    r.target,
  ]);
  const t = res.totals;
  rows.push(['total', f(t.cS), f(t.portS), x(t.portS / t.cS), `${f(t.suiteS)} ${t.suiteOutcome}`, x(t.suiteS / t.cS), f(t.suiteS - t.cS), '']);
  return [
    textTable(head, rows),
    `(medians of ${res.rounds} rounds; "in suite" is the file's time in one \`kvm-gmem selftest\` process, whose total includes Node's start-up and module load once: ${f(t.nodeStartS)})`,
  ].join('\n');
}

async function bench(o: Options): Promise<BenchResult> {
  const root = repoRoot();
  const build = o.build ?? buildFor(release());
  const bins = seriesDirs(build).bin;
  if (!existsSync(bins)) throw new Error(`no C selftests built for ${build} in ${cacheRoot()}: run npm run selftest:c:build first`);
  if (!existsSync('/dev/kvm')) throw new Error('no /dev/kvm here: every run would skip (run it in a test VM: --testvm 7.3)');
  // Both sides get the same memslot_perf_test arguments (TCG-sized); the suite reads them from here.
  process.env.MEMSLOT_PERF_TEST_ARGS = benchArgs('memslot_perf_test', build).join(' ');
  const tests = o.tests.filter((t) => existsSync(path.join(bins, t)));
  const c = new Map<string, RunRecord[]>(tests.map((t) => [t, []]));
  const port = new Map<string, RunRecord[]>(tests.map((t) => [t, []]));
  const inSuite = new Map<string, number[]>(tests.map((t) => [t, []]));
  const suite: RunRecord[] = [];
  const say = (s: string): void => void process.stderr.write(`[bench:selftests] ${s}\n`);
  for (let round = 0; round < o.rounds; round++) {
    for (const t of tests) {
      const args = benchArgs(t, build);
      const runC = async (): Promise<void> => void c.get(t)!.push(await runWithTimeout([path.join(bins, t), ...args], o.timeoutS, '/tmp'));
      const runPort = async (): Promise<void> =>
        void port.get(t)!.push(await runWithTimeout([process.execPath, path.join(root, 'dist', 'selftests', `${t}.js`), ...args], o.timeoutS, root));
      // Alternate which side goes first, so a drift of the machine falls on both.
      if (round % 2 === 0) {
        await runC();
        await runPort();
      } else {
        await runPort();
        await runC();
      }
      say(`round ${round + 1}: ${t}: C ${f(c.get(t)!.at(-1)!.wallMs / 1000)}, port ${f(port.get(t)!.at(-1)!.wallMs / 1000)}`);
    }
    const s = await runWithTimeout([process.execPath, path.join(root, 'bin', 'kvm-gmem.js'), 'selftest', ...tests], o.timeoutS * tests.length, root);
    suite.push(s);
    const times = suiteFileTimes(s.output);
    for (const t of tests) if (times[t] !== undefined) inSuite.get(t)!.push(times[t]);
    say(`round ${round + 1}: suite in one process ${f(s.wallMs / 1000)} (${outcome(s)})`);
  }
  const rows = tests.map((t) => makeRow(t, c.get(t)!, port.get(t)!, inSuite.get(t)!));
  const mp = 'memslot_perf_test';
  const all = (rs: RunRecord[] | undefined): string | undefined => (rs && rs.length > 0 ? rs.map((r) => r.output).join('\n') : undefined);
  const memslotPerf = tests.includes(mp) ? perfRows({ [build]: all(c.get(mp)) }, all(port.get(mp))) : [];
  const suiteS = median(suite.map((r) => r.wallMs / 1000));
  const filesS = rows.reduce((a, r) => a + (Number.isFinite(r.inSuite.medianS) ? r.inSuite.medianS : 0), 0);
  return {
    kernel: release(),
    build,
    rounds: o.rounds,
    rows,
    totals: {
      cS: rows.reduce((a, r) => a + r.c.medianS, 0),
      portS: rows.reduce((a, r) => a + r.port.medianS, 0),
      suiteS,
      suiteOutcome: outcome(suite[suite.length - 1]!),
      nodeStartS: suiteS - filesS,
    },
    memslotPerf,
  };
}

async function inTestVm(o: Options, argv: string[]): Promise<void> {
  const { runInTestVm } = await import('../testvm/vm.js');
  const root = repoRoot();
  const inner = argv.filter((a, i) => a !== '--testvm' && argv[i - 1] !== '--testvm');
  const r = await runInTestVm({
    kernel: o.testvm!,
    cpus: 1,
    cwd: root,
    keepWorkDir: true,
    timeoutMs: (300 + o.rounds * o.tests.length * 3 * o.timeoutS) * 1000,
    command: [process.execPath, path.join(root, 'dist', 'tools', 'bench', 'selftests.js'), ...inner, '--json', '/run/testvm/selftests-bench.json'],
    onOutput: (chunk) => process.stdout.write(chunk),
  });
  const file = path.join(r.workDir!, 'selftests-bench.json');
  if (existsSync(file)) {
    const out = o.json ?? path.join(root, 'build', 'bench', `selftests-${o.testvm}.json`);
    mkdirSync(path.dirname(out), { recursive: true });
    writeFileSync(out, readFileSync(file));
    process.stdout.write(`JSON: ${out}\n`);
  }
  process.exitCode = r.exitCode;
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const o = parseArgs(argv);
  if (o.testvm !== undefined) return inTestVm(o, argv);
  const res = await bench(o);
  process.stdout.write(`\nselftests: C ${res.build} build vs the TypeScript ports, Linux ${res.kernel}\n${renderTable(res)}\n`);
  if (res.memslotPerf.length > 0)
    process.stdout.write(`\nmemslot_perf_test, best time per iteration over the rounds:\n${renderPerfText(res.memslotPerf, [res.build])}\n`);
  const out = o.json ?? path.join(repoRoot(), 'build', 'bench', 'selftests.json');
  mkdirSync(path.dirname(out), { recursive: true });
  writeFileSync(out, `${JSON.stringify(res, null, 1)}\n`);
  process.stdout.write(`JSON: ${out}\n`);
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((e: unknown) => {
    process.stderr.write(`bench:selftests: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(2);
  });
}
