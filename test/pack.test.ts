// The package a user installs: `npm pack` of a copy of this tree (so the
// prepare script's tsc writes into the copy, not into the dist/ other tests
// read), `npm install <tarball>` in a fresh directory (node-gyp builds the
// addon from the tarball's native/ and binding.gyp), then, from there: a
// plain ESM script drives /dev/kvm through `import 'kvm-gmem'`, a strict
// NodeNext type-check of a .ts file against the shipped .d.ts, and
// `npx kvm-gmem probe`. Also the tarball's file list: what a user needs and
// nothing else (no source maps, no tools, no tests).
import { spawn } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { gate, needs } from './helpers.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const hasKvm = gate(needs.env('dev-kvm'));

// The machines reach the npm registry but no download site: node-gyp must
// take the Node headers from the local Node install (as .ci/run does).
const env: NodeJS.ProcessEnv = { ...process.env, npm_config_fund: 'false', npm_config_audit: 'false' };
if (env.npm_config_nodedir === undefined) {
  const prefix = path.resolve(process.execPath, '..', '..');
  if (existsSync(path.join(prefix, 'include', 'node', 'node_api.h'))) env.npm_config_nodedir = prefix;
}
// vitest's own variables must not leak into the consumer's processes.
delete env.VITEST;
delete env.VITEST_POOL_ID;
delete env.VITEST_WORKER_ID;
delete env.NODE_OPTIONS;
// The consumer must load the addon its own install built: a KVM_GMEM_ADDON
// override (the sanitizer run sets one to its ASan build) would point it back
// at this checkout's build and defeat the test.
delete env.KVM_GMEM_ADDON;

interface Result {
  status: number | null;
  stdout: string;
  stderr: string;
}

// Asynchronous, so vitest's timers keep running while npm works.
function run(cmd: string, args: string[], cwd: string, timeoutMs = 300_000): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

function ok(r: Result, what: string): Result {
  if (r.status !== 0) throw new Error(`${what} exited with ${r.status}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`);
  return r;
}

let work = '';
let consumer = '';
let files: string[] = [];
let packed = { size: 0, unpackedSize: 0 };
const installed = (): string => path.join(consumer, 'node_modules', 'kvm-gmem');

// npm install fetches the dependencies (bindings, node-addon-api, node-gyp)
// from the registry: the test VM has no network.
gate(needs.env('network')).describe('the packed package', () => {
  beforeAll(async () => {
    work = mkdtempSync(path.join(tmpdir(), 'kvm-gmem-pack-'));
    // A copy of the working tree without its build products; node_modules is
    // linked, for the prepare script's tsc and @types/node.
    const stage = path.join(work, 'stage');
    const skip = new Set(['node_modules', 'build', 'dist', '.git', '.cache'].map((d) => path.join(root, d)));
    cpSync(root, stage, { recursive: true, filter: (src) => !skip.has(src) && !src.endsWith('.log') });
    symlinkSync(path.join(root, 'node_modules'), path.join(stage, 'node_modules'), 'dir');

    const dest = path.join(work, 'pack');
    mkdirSync(dest);
    const pack = ok(await run('npm', ['pack', '--json', '--pack-destination', dest], stage), 'npm pack');
    // The prepare script's output comes first; the JSON report is the rest.
    const report = JSON.parse(pack.stdout.slice(pack.stdout.search(/^\[/m))) as {
      filename: string;
      size: number;
      unpackedSize: number;
      files: { path: string }[];
    }[];
    const entry = report[0];
    if (entry === undefined) throw new Error(`npm pack reported nothing:\n${pack.stdout}`);
    files = entry.files.map((f) => f.path).sort();
    packed = { size: entry.size, unpackedSize: entry.unpackedSize };

    consumer = path.join(work, 'consumer');
    mkdirSync(consumer);
    writeFileSync(path.join(consumer, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }, null, 2));
    ok(await run('npm', ['install', '--no-package-lock', path.join(dest, entry.filename)], consumer, 600_000), 'npm install <tarball>');
  }, 900_000);

  afterAll(() => {
    if (work !== '') rmSync(work, { recursive: true, force: true });
  });

  test('ships dist/lib (JS + .d.ts), bin, native, the build files, README, LICENSE and docs; no maps, tools or tests', () => {
    for (const f of [
      'package.json',
      'README.md',
      'LICENSE',
      'binding.gyp',
      'CMakeLists.txt',
      'bin/kvm-gmem.js',
      'native/vm.cc',
      'native/uapi.h',
      'dist/lib/index.js',
      'dist/lib/index.d.ts',
      'dist/lib/binding/native.js',
      'dist/lib/cli/main.js',
      'dist/selftests/guest_memfd_test.js',
      'docs/api.md',
    ]) {
      expect(files, f).toContain(f);
    }
    expect(files.filter((f) => f.endsWith('.map'))).toEqual([]);
    expect(files.filter((f) => /^(dist\/(tools|examples)|test|tools|lib|examples|build|node_modules)\//.test(f))).toEqual([]);
    // Nothing outside the list in package.json's "files" (npm adds package.json and README/LICENSE itself).
    expect(
      files.filter(
        (f) => !/^(bin|dist\/lib|dist\/selftests|native|docs)\/|^(package\.json|binding\.gyp|CMakeLists\.txt|README\.md|LICENSE|CHANGELOG\.md)$/.test(f),
      ),
    ).toEqual([]);
    console.log(`npm pack: ${files.length} files, ${packed.size} bytes packed, ${packed.unpackedSize} unpacked`);
  });

  test('npm install built the addon from the tarball', () => {
    expect(existsSync(path.join(installed(), 'build', 'Release', 'kvm_gmem.node'))).toBe(true);
    expect(existsSync(path.join(installed(), 'dist', 'lib', 'index.d.ts'))).toBe(true);
  });

  test("the installed package's suite: `kvm-gmem selftest` lists the ports, and a port finds 'kvm-gmem' from its installed copy", async () => {
    const cli = path.join(installed(), 'bin', 'kvm-gmem.js');
    const list = ok(await run(process.execPath, [cli, 'selftest', '--list'], consumer, 60_000), 'kvm-gmem selftest --list');
    expect(list.stdout.split('\n')).toEqual(expect.arrayContaining(['guest_memfd_test', 'vm_types_test']));
    // Exit 0 with /dev/kvm (every type checked), 4 without it (the requirement names it): never a load error.
    const r = await run(process.execPath, [cli, 'selftest', 'vm_types_test'], consumer, 120_000);
    expect([0, 4], r.stdout + r.stderr).toContain(r.status);
    expect(r.stdout).toMatch(/^ok 1 vm_types_test( # SKIP)?$/m);
  }, 180_000);

  hasKvm.test("an ESM script imports 'kvm-gmem' and drives /dev/kvm", async () => {
    // Plain JavaScript for Node 20, which has no `using`: try/finally closes.
    const script = `
import { readFileSync } from 'node:fs';
import { Kvm, KvmError, MemslotOverlapError } from 'kvm-gmem';

const kvm = Kvm.open();
const out = {};
try {
  const vm = kvm.createVm();
  try {
    const caps = vm.capabilities();
    out.guestMemfd = caps.guestMemfd;
    const gmem = caps.guestMemfd ? vm.createGuestMemfd({ size: 0x200000 }) : undefined;
    const slot = vm.addMemslot({ gpa: 0x100000, size: 0x200000, ...(gmem ? { guestMemfd: gmem } : {}) });
    slot.view(0x100000, 2).set([0x6b, 0x76]);
    out.read = new TextDecoder().decode(slot.view(0x100000, 2));
    out.memslots = vm.memslots().map((m) => ({ slot: m.slot, gpa: m.gpa, size: m.size, backing: m.backing, guestMemfd: m.guestMemfd === gmem }));
    out.bound = gmem ? gmem.boundRanges() : [];
    try {
      vm.addMemslot({ gpa: 0x100000, size: 0x1000 });
    } catch (e) {
      out.overlap = { isRuleError: e instanceof MemslotOverlapError, rule: e.rule, kernelErrno: e.kernelErrno };
    }
    out.isKvmError = new KvmError(22, 'ioctl(X)').code;
  } finally {
    vm.close();
  }
  out.vmClosed = vm.closed;
} finally {
  kvm.close();
}
// The addon this process loaded: the one node-gyp built in the installed copy.
out.addon = readFileSync('/proc/self/maps', 'utf8').split('\\n').map((l) => l.split(/\\s+/)[5]).find((p) => p && p.endsWith('kvm_gmem.node'));
console.log(JSON.stringify(out));
`;
    writeFileSync(path.join(consumer, 'use.mjs'), script);
    const r = ok(await run(process.execPath, ['use.mjs'], consumer, 60_000), 'node use.mjs');
    const out = JSON.parse(r.stdout) as Record<string, unknown>;
    expect(out).toEqual({
      guestMemfd: out.guestMemfd,
      read: 'kv',
      memslots: [{ slot: 0, gpa: 0x100000, size: 0x200000, backing: 'anonymous', guestMemfd: out.guestMemfd }],
      bound: out.guestMemfd === true ? [{ slot: 0, addressSpace: 0, offset: 0, size: 0x200000, gpa: 0x100000 }] : [],
      overlap: { isRuleError: true, rule: 'memslot-gfn-overlap', kernelErrno: 17 },
      isKvmError: 'EINVAL',
      vmClosed: true,
      addon: path.join(installed(), 'build', 'Release', 'kvm_gmem.node'),
    });
  });

  test('a strict NodeNext TypeScript file type-checks against the shipped .d.ts', async () => {
    const source = `
import { Kvm, Guest, MemslotOverlapError, type Capabilities, type VcpuExit, type MemslotOptions } from 'kvm-gmem';

export function slots(): number[] {
  using kvm = Kvm.open();
  using vm = kvm.createVm({ type: 'default' });
  const caps: Capabilities = vm.capabilities();
  const options: MemslotOptions = { gpa: 0x100000, size: 0x1000 };
  if (caps.guestMemfd) vm.addMemslot({ ...options, guestMemfd: vm.createGuestMemfd({ size: 0x1000 }) });
  return vm.memslots().map((m) => m.slot);
}

export function describeExit(exit: VcpuExit): string {
  return exit.kind === 'io' ? \`\${exit.direction} port \${exit.port}\` : exit.kind;
}

export const ruleOf = (e: unknown): string | undefined => (e instanceof MemslotOverlapError ? e.rule : undefined);
export const build: typeof Guest.realMode = Guest.realMode;

// The types are real, not any: each of these must be an error.
// @ts-expect-error no such VM type
Kvm.open().createVm({ type: 'no-such-type' });
// @ts-expect-error size is required
Kvm.open().createVm().createGuestMemfd({});
`;
    writeFileSync(path.join(consumer, 'check.ts'), source);
    const tsc = path.join(root, 'node_modules', 'typescript', 'bin', 'tsc');
    const r = await run(
      process.execPath,
      [
        tsc,
        '--noEmit',
        '--strict',
        '--module',
        'nodenext',
        '--moduleResolution',
        'nodenext',
        '--target',
        'es2022',
        '--lib',
        'es2022,esnext.disposable',
        '--typeRoots',
        path.join(root, 'node_modules', '@types'),
        '--types',
        'node',
        'check.ts',
      ],
      consumer,
      120_000,
    );
    expect(r.stdout + r.stderr).toBe('');
    expect(r.status).toBe(0);
  });

  hasKvm.test('npx kvm-gmem probe runs the installed command', async () => {
    const r = ok(await run('npx', ['--no-install', 'kvm-gmem', 'probe'], consumer, 120_000), 'npx kvm-gmem probe');
    expect(r.stdout).toContain('KVM_GET_API_VERSION 12');
    expect(r.stdout).toMatch(/guest_memfd memslots +(yes|no)/);
    const json = ok(await run('npx', ['--no-install', 'kvm-gmem', 'probe', '--json'], consumer, 120_000), 'npx kvm-gmem probe --json');
    expect(JSON.parse(json.stdout)).toHaveProperty('host');
  });
});
