#!/usr/bin/env node
// Runs a command against the ASan+UBSan build of the addon (npm run
// build:asan -> build/asan/Release/kvm_gmem.node) and fails if a sanitizer
// reported anything in any process, even when the command itself passed.
//
//   node tools/asan/run.mjs <command> [args...]
//   node tools/asan/run.mjs vitest run                      (npm run test:asan)
//   node tools/asan/run.mjs npm run fuzz -- --calls 20000
//
// Node is not built with ASan, so the ASan runtime is preloaded into every
// process (LD_PRELOAD; UBSan's runtime is linked into the addon, see
// CMakeLists.txt, and needs none). The environment is inherited by everything the command
// starts (vitest's forks, the tests' child node processes, workers share the
// process), and each sanitized process writes its reports to its own file
// (log_path) in a fresh directory, which is scanned afterwards.
//
// Environment: KVM_GMEM_ADDON (the sanitized addon; default
// build/asan/Release/kvm_gmem.node), KVM_GMEM_ASAN_RUNTIME (the libasan.so
// to preload; default: asked of the compiler that built the addon),
// KVM_GMEM_ASAN_KEEP_LOGS=1 (keep the log directory even when it is empty).
// ASAN_OPTIONS / UBSAN_OPTIONS already set are appended to (later wins).
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { delimiter, dirname, join, resolve } from 'node:path';
import { constants } from 'node:os';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const argv = process.argv.slice(2);
if (argv.length === 0 || argv[0] === '--help' || argv[0] === '-h') {
  console.error('usage: node tools/asan/run.mjs <command> [args...]');
  process.exit(argv.length === 0 ? 2 : 0);
}

function fail(msg) {
  console.error(`asan/run: ${msg}`);
  process.exit(2);
}

const addon = resolve(root, process.env.KVM_GMEM_ADDON || 'build/asan/Release/kvm_gmem.node');
if (!existsSync(addon)) fail(`no sanitized addon at ${addon}: run \`npm run build:asan\` first`);
if (!readFileSync(addon).includes('__asan_init')) fail(`${addon} is not built with -fsanitize=address (npm run build:asan)`);

// The libasan that matches the addon: the one of the compiler CMake used.
function asanRuntime() {
  if (process.env.KVM_GMEM_ASAN_RUNTIME) return resolve(process.env.KVM_GMEM_ASAN_RUNTIME);
  let cxx = process.env.CXX || 'g++';
  const cache = join(dirname(dirname(addon)), 'CMakeCache.txt');
  if (existsSync(cache)) {
    const m = /^CMAKE_CXX_COMPILER:[A-Z]+=(.+)$/m.exec(readFileSync(cache, 'utf8'));
    if (m) cxx = m[1].trim();
  }
  let lib;
  try {
    lib = execFileSync(cxx, ['-print-file-name=libasan.so'], { encoding: 'utf8' }).trim();
  } catch (e) {
    fail(`cannot ask ${cxx} for libasan.so: ${e.message}`);
  }
  if (!lib.startsWith('/') || !existsSync(lib)) fail(`${cxx} -print-file-name=libasan.so gave '${lib}': install libasan (g++) or set KVM_GMEM_ASAN_RUNTIME`);
  return lib;
}
const runtime = asanRuntime();

const logRoot = join(root, 'build', 'asan', 'logs');
mkdirSync(logRoot, { recursive: true });
const logDir = mkdtempSync(join(logRoot, 'run-'));

const asanOptions = [
  'detect_leaks=0', // node's own allocations are never freed at exit
  'abort_on_error=1',
  'halt_on_error=1',
  `log_path=${join(logDir, 'asan')}`, // + .<exe>.<pid>
  'log_exe_name=1',
  'print_summary=1',
  // Freed memory held back to catch use-after-free: 64 MiB, not 256. Every
  // process's RSS grows with it, and with RSS the cost of each fork() (node
  // forks for every child process): with 256 MiB a spawn took 31 ms here
  // against 17 ms, 3 ms without ASan, and the suite's 1,500-child
  // close-on-exec test ran about twice as long.
  'quarantine_size_mb=64',
];
const ubsanOptions = [
  'print_stacktrace=1',
  'halt_on_error=1',
  'abort_on_error=1',
  `log_path=${join(logDir, 'ubsan')}`,
  'log_exe_name=1',
  // The addon's UBSan runtime would install its own SIGSEGV/SIGBUS/SIGFPE
  // handlers over node's when it loads; ASan's (installed first, chained to
  // by V8's) reports those.
  'handle_segv=0',
  'handle_sigbus=0',
  'handle_sigfpe=0',
];
const join2 = (ours, theirs) => [...ours, ...(theirs ? [theirs] : [])].join(':');
const env = {
  ...process.env,
  KVM_GMEM_ADDON: addon,
  LD_PRELOAD: [runtime, ...(process.env.LD_PRELOAD ? [process.env.LD_PRELOAD] : [])].join(' '),
  ASAN_OPTIONS: join2(asanOptions, process.env.ASAN_OPTIONS),
  UBSAN_OPTIONS: join2(ubsanOptions, process.env.UBSAN_OPTIONS),
  PATH: [join(root, 'node_modules', '.bin'), process.env.PATH ?? '/usr/bin:/bin'].join(delimiter),
};

// Loads at all, and answers, before a long run says the same thing per test.
try {
  execFileSync(
    process.execPath,
    [
      '-e',
      `
    const a = require(${JSON.stringify(addon)});
    if (!require('fs').existsSync('/dev/kvm')) process.exit(0); // loads; nothing to ask
    const fd = a.openDevice('/dev/kvm');
    try { if (a.getApiVersion(fd) !== 12) throw new Error('KVM_GET_API_VERSION'); } finally { a.close(fd); }
  `,
    ],
    { env, stdio: ['ignore', 'inherit', 'inherit'] },
  );
} catch {
  scan();
  fail(`the sanitized addon does not load or answer under LD_PRELOAD=${runtime}`);
}

console.error(`asan/run: ${addon}\nasan/run: LD_PRELOAD=${runtime}\nasan/run: logs in ${logDir}\nasan/run: ${argv.join(' ')}`);
const started = Date.now();
const child = spawn(argv[0], argv.slice(1), { env, stdio: 'inherit' });
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, () => child.kill(sig));
child.on('error', (e) => {
  console.error(`asan/run: cannot start ${argv[0]}: ${e.message}`);
  process.exit(2);
});
child.on('exit', (code, signal) => {
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  const reports = scan();
  const status = signal ? 128 + (constants.signals[signal] ?? 0) : (code ?? 1);
  console.error(`asan/run: command ${signal ? `killed by ${signal}` : `exited ${code}`} after ${seconds}s; ${reports} sanitizer report(s)`);
  if (reports > 0) {
    console.error(`asan/run: FAILED: sanitizer reports above (kept in ${logDir})`);
    process.exit(status === 0 ? 1 : status);
  }
  if (!process.env.KVM_GMEM_ASAN_KEEP_LOGS) rmSync(logDir, { recursive: true, force: true });
  process.exit(status);
});

// Lines a sanitized process may log that are no report: ASan's notice that a
// program switches stacks with swapcontext (QEMU's coroutines do, in the
// testvm tests: the preload reaches every program the tests start).
const BENIGN = [
  /^==(?:[^=\s]+==)?\d+==WARNING: ASan doesn't fully support makecontext\/swapcontext functions and may produce false positives in some cases!$/,
  /^==(?:[^=\s]+==)?\d+==WARNING: ASan is ignoring requested __asan_handle_no_return: stack type: .*$/,
  /^False positive error reports may follow$/,
  /^For details see https:\/\/github\.com\/google\/sanitizers\/issues\/189$/,
];

/**
 * Prints every non-empty log file; returns how many hold a report, i.e.
 * anything but the BENIGN lines (those files get a one-line note).
 */
function scan() {
  let n = 0;
  for (const name of readdirSync(logDir).sort()) {
    const file = join(logDir, name);
    if (!statSync(file).isFile() || statSync(file).size === 0) continue;
    const text = readFileSync(file, 'utf8');
    const rest = text.split('\n').filter((l) => l.trim() !== '' && !BENIGN.some((re) => re.test(l)));
    if (rest.length === 0) {
      console.error(`asan/run: ${name}: only the swapcontext warning (not a report)`);
      continue;
    }
    n++;
    console.error(`\n==== asan/run: ${file} ====\n${text}`);
  }
  return n;
}
