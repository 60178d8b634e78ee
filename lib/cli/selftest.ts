// `kvm-gmem selftest`: the conformance suite (the kernel's guest_memfd
// selftests ported to kvm-gmem/selftest, shipped in dist/selftests/) run as
// one KTAP stream. By default every file runs in this process, one after
// the other (Node and the addon load once); --isolate runs each as its own
// program, as kselftest's runner.sh does with C binaries.
//
// Output, default: KTAP with each file's own stream as a subtest, indented
// four spaces, and its wall time:
//
//   TAP version 13
//   1..2
//       TAP version 13
//       1..40
//       ok 1 GM-S4 [default] KVM_CREATE_VM(0) succeeds
//       ...
//   # time: 1.234 s
//   ok 1 guest_memfd_test
//
// --kernel-tap: exactly what `make -C tools/testing/selftests TARGETS=kvm
// run_tests` prints (runner.sh): each file's output behind '# ', then
// `ok N selftests: kvm: NAME`, `# SKIP` for exit 4, `# exit=N` otherwise.
// The exit status is kselftest's: 1 if a file failed, 4 if every file
// skipped, else 0. Each test runs with KVM_GMEM_SELFTEST_SUITE=1, so that a
// port whose C defaults take minutes (memslot_perf_test) can choose
// shorter ones when it is given no arguments.
import { spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { collectInto } from '../selftest/collect.js';
import { Harness, KSFT_FAIL, KSFT_PASS, KSFT_SKIP, ksftStatus, SelftestSkip } from '../selftest/harness.js';
import { type CliIo } from './output.js';

export const SELFTEST_USAGE = `usage: kvm-gmem selftest [NAME...] [--list] [--kernel-tap] [--isolate] [--dir DIR] [-- TEST ARGS...]
  Runs the guest_memfd conformance suite (every test, or the NAMEs given) against this
  host's /dev/kvm and prints KTAP; exit 0 pass, 1 fail, 4 every test skipped (kselftest's).
  --list        print the test names and exit
  --kernel-tap  print what kselftest's runner.sh prints (each test's output behind '# ')
  --isolate     run each test in its own process (default: all in this one)
  --dir DIR     run the selftest files (*.js, written with kvm-gmem/selftest) of DIR instead
  -- ARGS       arguments for the tests (e.g. -- -n 4 for private_mem_conversions_test)`;

const SUITE_DIR = fileURLToPath(new URL('../../selftests/', import.meta.url));

/** The suite's test names (dist/selftests/*.js), sorted. */
export function selftestNames(dir = SUITE_DIR): string[] {
  try {
    return readdirSync(dir)
      .filter((f) => f.endsWith('.js'))
      .map((f) => f.slice(0, -3))
      .sort();
  } catch {
    return [];
  }
}

interface Options {
  dir: string;
  names: string[];
  list: boolean;
  kernelTap: boolean;
  isolate: boolean;
  testArgs: string[];
}

function parse(argv: string[]): Options | string {
  const o: Options = { dir: SUITE_DIR, names: [], list: false, kernelTap: false, isolate: false, testArgs: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === '--') {
      o.testArgs = argv.slice(i + 1);
      break;
    }
    if (a === '--list') o.list = true;
    else if (a === '--kernel-tap') o.kernelTap = true;
    else if (a === '--isolate') o.isolate = true;
    else if (a === '--dir') {
      const d = argv[++i];
      if (d === undefined || d === '') return '--dir needs a directory';
      o.dir = `${resolve(d)}/`;
    } else if (a.startsWith('-')) return `unknown option '${a}'`;
    else o.names.push(a);
  }
  return o;
}

/** One file's result: its status and wall time. */
interface FileResult {
  status: number;
  seconds: number;
}

export async function runSelftest(argv: string[], io: CliIo): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    io.out(`${SELFTEST_USAGE}\n`);
    return 0;
  }
  const o = parse(argv);
  if (typeof o === 'string') {
    io.err(`kvm-gmem selftest: ${o}\n${SELFTEST_USAGE}\n`);
    return 2;
  }
  const all = selftestNames(o.dir);
  if (all.length === 0) {
    io.err(`kvm-gmem selftest: no tests in ${o.dir}${o.dir === SUITE_DIR ? ' (run npm run build:ts)' : ''}\n`);
    return 2;
  }
  const unknown = o.names.filter((n) => !all.includes(n));
  if (unknown.length > 0) {
    io.err(`kvm-gmem selftest: no test named ${unknown.join(', ')}; the tests are: ${all.join(', ')}\n`);
    return 2;
  }
  if (o.list) {
    io.out(`${all.join('\n')}\n`);
    return 0;
  }
  const names = o.names.length > 0 ? [...new Set(o.names)] : all;
  // For every test, in this process and in the --isolate children (which inherit it).
  process.env.KVM_GMEM_SELFTEST_SUITE = '1';
  io.out(`TAP version 13\n1..${names.length}\n`);
  const counts = { pass: 0, fail: 0, skip: 0 };
  for (const [i, name] of names.entries()) {
    const n = i + 1;
    const prefix = o.kernelTap ? '# ' : '    ';
    const write = (text: string): void => io.out(indent(text, prefix));
    if (o.kernelTap) io.out(`# selftests: kvm: ${name}\n`);
    const file = `${o.dir}${name}.js`;
    const r = o.isolate ? await runIsolated(file, o.testArgs, write) : await runInProcess(name, file, o.testArgs, write);
    if (r.status === KSFT_PASS) counts.pass++;
    else if (r.status === KSFT_SKIP) counts.skip++;
    else counts.fail++;
    io.out(resultLine(n, name, r, o.kernelTap));
  }
  io.out(`# Totals: pass:${counts.pass} fail:${counts.fail} xfail:0 xpass:0 skip:${counts.skip} error:0\n`);
  return ksftStatus(counts);
}

function resultLine(n: number, name: string, r: FileResult, kernelTap: boolean): string {
  const title = kernelTap ? `selftests: kvm: ${name}` : name;
  const time = kernelTap ? '' : `# time: ${r.seconds.toFixed(3)} s\n`;
  if (r.status === KSFT_PASS) return `${time}ok ${n} ${title}\n`;
  if (r.status === KSFT_SKIP) return `${time}ok ${n} ${title} # SKIP\n`;
  return `${time}not ok ${n} ${title} # exit=${r.status}\n`;
}

/** Prefixes every line of `text` (which ends in a newline) with `prefix`; '# ' lines stay diagnostics. */
function indent(text: string, prefix: string): string {
  return text
    .split('\n')
    .map((l, i, all) => (i === all.length - 1 && l === '' ? '' : `${prefix}${l}`.trimEnd()))
    .join('\n');
}

// In this process: the file registers its tests into a harness of its own
// while it loads (a top-level requires() that fails throws SelftestSkip out
// of the import), then the harness runs them. process.argv is the test's
// for the time of the import, as if it had been started as a program.
async function runInProcess(name: string, file: string, testArgs: string[], write: (text: string) => void): Promise<FileResult> {
  const started = performance.now();
  const h = new Harness({}, { collected: true, write, times: true });
  const argv = process.argv;
  collectInto(h);
  try {
    process.argv = [argv[0] as string, file, ...testArgs];
    try {
      await import(pathToFileURL(file).href);
    } finally {
      process.argv = argv;
    }
    const counts = await h.runTests();
    return { status: ksftStatus(counts), seconds: (performance.now() - started) / 1000 };
  } catch (e) {
    if (e instanceof SelftestSkip || (e as { code?: unknown } | null)?.code === 'ERR_KVM_SELFTEST_SKIP') {
      const reason = (e as SelftestSkip).reason;
      write(`TAP version 13\n1..0 # SKIP ${reason.replace(/\s*\n\s*/g, ' ')}\n`);
      return { status: KSFT_SKIP, seconds: (performance.now() - started) / 1000 };
    }
    const err = e as Error;
    write(`${`${name}: ${err.stack ?? String(e)}`.replace(/^/gm, '# ')}\nBail out! ${name} could not be loaded or run\n`);
    return { status: KSFT_FAIL, seconds: (performance.now() - started) / 1000 };
  } finally {
    collectInto(null);
  }
}

// As its own program (--isolate): its stdout streamed as it comes, stderr
// as diagnostics; the exit status is the result, a signal a failure.
function runIsolated(file: string, testArgs: string[], write: (text: string) => void): Promise<FileResult> {
  const started = performance.now();
  return new Promise((resolve) => {
    const env = { ...process.env, KVM_GMEM_SELFTEST_TIMES: '1' };
    const child = spawn(process.execPath, [file, ...testArgs], { stdio: ['ignore', 'pipe', 'pipe'], env });
    let pending = '';
    const flush = (chunk: string, last = false): void => {
      pending += chunk;
      const cut = last ? pending.length : pending.lastIndexOf('\n') + 1;
      if (cut > 0) {
        const text = pending.slice(0, cut);
        pending = pending.slice(cut);
        write(text.endsWith('\n') ? text : `${text}\n`);
      }
    };
    child.stdout.setEncoding('utf8').on('data', (c: string) => flush(c));
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    child.on('close', (code, signal) => {
      flush('', true);
      if (stderr !== '') write(`${stderr.trimEnd().replace(/^/gm, '# ')}\n`);
      const status = code ?? (signal === null ? KSFT_FAIL : 128 + osConstants.signals[signal]);
      resolve({ status, seconds: (performance.now() - started) / 1000 });
    });
  });
}
