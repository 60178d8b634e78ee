// Tests of tools/testvm: kernel lookup, command quoting, console filtering,
// config checking, and a few real boots under QEMU TCG (skipped, with the
// reason in the test name, when qemu, busybox or a test kernel is missing).
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import {
  buildCommandScript,
  checkConfigAgainstFragment,
  ConsoleFilter,
  defaultCacheDir,
  findBusybox,
  findQemu,
  guestEnvironment,
  KERNEL_ENV_VAR,
  KernelChecksumError,
  KernelNotFoundError,
  parseConfigFragment,
  resolveKernel,
  runInTestVm,
  sha256File,
  shellQuote,
  checkOverlayDirs,
  findRepoRoot,
  TestVmTimeoutError,
  compareReleases,
  isReleaseSelector,
  listKernels,
  matrixKernels,
  matrixReleases,
  parseKernelImageName,
  readImageRelease,
  releaseMatches,
  releaseSeries,
  sharedKernelDirs,
  BUILDABLE_SERIES,
  checkConfigForRecipe,
  imageNames,
  isolatedAptOptions,
  kconfigDefines,
  KERNEL_RECIPES,
  kernelRecipe,
  recipePackages,
  qemuArgs,
} from '../tools/testvm/index.js';
import { linePrefixer, scheduleOrder } from '../tools/testvm/matrix.js';

// ---------------------------------------------------------------------------
// What a real boot needs

function missing(check: () => unknown): string | undefined {
  try {
    check();
    return undefined;
  } catch (e) {
    return (e as Error).message.split('\n')[0];
  }
}
const qemuMissing = missing(findQemu);
const busyboxMissing = missing(findBusybox);
let kernelMissing: string | undefined;
try {
  await resolveKernel();
} catch (e) {
  kernelMissing = (e as Error).message.split('\n')[0];
}
const insideVm = process.env.TESTVM === '1' ? 'already inside the test VM (no nested TCG boots)' : undefined;
const bootSkipReason = insideVm ?? qemuMissing ?? busyboxMissing ?? kernelMissing;
const canBoot = bootSkipReason === undefined;
if (!canBoot) console.warn(`testvm-tool.test.ts: skipping the real-boot tests: ${bootSkipReason}`);
const needs = canBoot ? '(needs qemu-system-x86_64, busybox, test kernel)' : `(SKIPPED: ${bootSkipReason})`;

// ---------------------------------------------------------------------------

describe('kernel lookup order', () => {
  let root: string;
  let sharedDir: string;
  let cacheDir: string;
  let explicitImage: string;
  let envImage: string;

  beforeAll(async () => {
    root = await mkdtemp(path.join(tmpdir(), 'testvm-lookup-'));
    sharedDir = path.join(root, 'shared', 'testvm');
    cacheDir = path.join(root, 'cache', 'kvm-gmem', 'testvm');
    await mkdir(sharedDir, { recursive: true });
    await mkdir(cacheDir, { recursive: true });
    explicitImage = path.join(root, 'explicit-bzImage');
    envImage = path.join(root, 'env-bzImage');
    await writeFile(explicitImage, 'explicit');
    await writeFile(envImage, 'env');
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  const lookup = (extra: { kernel?: string; env?: NodeJS.ProcessEnv } = {}) =>
    resolveKernel({ sharedDirs: [sharedDir], cacheDir, env: extra.env ?? {}, ...(extra.kernel ? { kernel: extra.kernel } : {}) });

  test('nothing anywhere: KernelNotFoundError names every place and the build command', async () => {
    const err = await lookup().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KernelNotFoundError);
    const msg = (err as Error).message;
    expect(msg).toContain('--kernel');
    expect(msg).toContain(KERNEL_ENV_VAR);
    expect(msg).toContain(path.join(sharedDir, 'bzImage-*'));
    expect(msg).toContain(path.join(cacheDir, 'bzImage-*'));
    expect(msg).toContain('build-kernel');
  });

  test('cache is used when nothing else is there; newest version wins; .sha256 is not an image', async () => {
    await writeFile(path.join(cacheDir, 'bzImage-6.12.9-gmem'), 'old');
    await writeFile(path.join(cacheDir, 'bzImage-6.12.117-gmem'), 'new');
    await writeFile(
      path.join(cacheDir, 'bzImage-6.12.117-gmem.sha256'),
      `${await sha256File(path.join(cacheDir, 'bzImage-6.12.117-gmem'))}  bzImage-6.12.117-gmem\n`,
    );
    const k = await lookup();
    expect(k.source).toBe('cache');
    expect(k.path).toBe(path.join(cacheDir, 'bzImage-6.12.117-gmem'));
    expect(k.checksum).toBe('verified');
  });

  test('the shared directory beats the cache', async () => {
    await writeFile(path.join(sharedDir, 'bzImage-6.12.117-gmem'), 'shared');
    const k = await lookup();
    expect(k.source).toBe('shared');
    expect(k.path).toBe(path.join(sharedDir, 'bzImage-6.12.117-gmem'));
    expect(k.checksum).toBe('no-checksum-file');
  });

  test('a shared image that does not match its .sha256 is an error, not skipped', async () => {
    const img = path.join(sharedDir, 'bzImage-6.12.117-gmem');
    await writeFile(`${img}.sha256`, `${'0'.repeat(64)}  bzImage-6.12.117-gmem\n`);
    try {
      await expect(lookup()).rejects.toBeInstanceOf(KernelChecksumError);
    } finally {
      await rm(`${img}.sha256`);
    }
  });

  test(`$${KERNEL_ENV_VAR} beats the shared directory`, async () => {
    const k = await lookup({ env: { [KERNEL_ENV_VAR]: envImage } });
    expect(k.source).toBe('env');
    expect(k.path).toBe(envImage);
  });

  test('the explicit option beats the environment', async () => {
    const k = await lookup({ kernel: explicitImage, env: { [KERNEL_ENV_VAR]: envImage } });
    expect(k.source).toBe('option');
    expect(k.path).toBe(explicitImage);
  });

  test('an explicit or env path that does not exist fails instead of falling back', async () => {
    await expect(lookup({ kernel: path.join(root, 'nope') })).rejects.toThrow(/does not exist/);
    await expect(lookup({ env: { [KERNEL_ENV_VAR]: path.join(root, 'nope') } })).rejects.toThrow(/does not exist/);
  });

  test('the cache directory follows XDG_CACHE_HOME, else ~/.cache', () => {
    expect(defaultCacheDir({ XDG_CACHE_HOME: '/x/cache', HOME: '/h' })).toBe('/x/cache/kvm-gmem/testvm');
    expect(defaultCacheDir({ HOME: '/h' })).toBe('/h/.cache/kvm-gmem/testvm');
    expect(defaultCacheDir({ XDG_CACHE_HOME: 'relative', HOME: '/h' })).toBe('/h/.cache/kvm-gmem/testvm');
  });
});

// ---------------------------------------------------------------------------

describe('kernel releases', () => {
  test('image names: bzImage-<release>-<flavour>', () => {
    expect(parseKernelImageName('bzImage-7.3.4-gmem')).toEqual({ release: '7.3.4', flavour: 'gmem' });
    expect(parseKernelImageName('/x/matrix/bzImage-6.1.192-nogmem')).toEqual({ release: '6.1.192', flavour: 'nogmem' });
    expect(parseKernelImageName('bzImage-6.12.117')).toEqual({ release: '6.12.117', flavour: '' });
    expect(parseKernelImageName('bzImage-6.12.117-rc1-gmem')).toEqual({ release: '6.12.117-rc1', flavour: 'gmem' });
    expect(parseKernelImageName('bzImage-custom')).toBeUndefined();
    expect(parseKernelImageName('bzImage')).toBeUndefined();
  });

  test('a release selector is digits and dots; anything else is a path', () => {
    for (const s of ['7', '7.3', '6.1', '6.12.117']) expect(isReleaseSelector(s)).toBe(true);
    for (const s of ['', '7.', '.7', 'v7.3', '7.3-gmem', './7.3', 'bzImage']) expect(isReleaseSelector(s)).toBe(false);
  });

  test('prefix match on whole dot-separated components: 6.1 is not 6.12', () => {
    expect(releaseMatches('6.1.192', '6.1')).toBe(true);
    expect(releaseMatches('6.12.117', '6.1')).toBe(false);
    expect(releaseMatches('6.12.117', '6.12')).toBe(true);
    expect(releaseMatches('6.12.117', '6')).toBe(true);
    expect(releaseMatches('7.3.4', '7.3.4')).toBe(true);
    expect(releaseMatches('7.3.4', '7.3.41')).toBe(false);
    expect(releaseMatches('7.3.41', '7.3.4')).toBe(false);
    expect(releaseMatches('7.3', '7.3.4')).toBe(false);
    expect(releaseMatches('6.12.117-rc1', '6.12.117')).toBe(true);
    expect(releaseMatches('6.12.1170', '6.12.117')).toBe(false);
  });

  test('releases order numerically; the series is major.minor', () => {
    expect(['7.3.4', '6.12.117', '6.1.192', '6.12.9'].sort(compareReleases)).toEqual(['6.1.192', '6.12.9', '6.12.117', '7.3.4']);
    expect(compareReleases('6.12', '6.12.0')).toBeLessThan(0);
    expect(compareReleases('7.3.4', '7.3.4')).toBe(0);
    expect(releaseSeries('6.1.192')).toBe('6.1');
    expect(releaseSeries('7.3.4-rc1')).toBe('7.3');
  });

  test('the shared directory and its matrix/ are both looked in, top first', () => {
    const dirs = sharedKernelDirs('/nonexistent-repo/main');
    expect(dirs.slice(0, 2)).toEqual(['/nonexistent-repo/shared/testvm', '/nonexistent-repo/shared/testvm/matrix']);
  });

  test('the release in a bzImage header (kernel_version), or empty for other files', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'testvm-hdr-'));
    try {
      const img = Buffer.alloc(0x1000);
      img.write('HdrS', 0x202, 'latin1');
      img.writeUInt16LE(0x300, 0x20e);
      img.write('6.12.117 (root@vm) #1 SMP\0', 0x500, 'latin1');
      await writeFile(path.join(dir, 'img'), img);
      await writeFile(path.join(dir, 'text'), 'not a kernel');
      expect(await readImageRelease(path.join(dir, 'img'))).toBe('6.12.117');
      expect(await readImageRelease(path.join(dir, 'text'))).toBe('');
      expect(await readImageRelease(path.join(dir, 'missing'))).toBe('');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('kernel lookup by release', () => {
  let root: string;
  let top: string;
  let matrix: string;
  let cacheDir: string;
  const opts = () => ({ sharedDirs: [top, matrix], cacheDir, env: {} });

  beforeAll(async () => {
    root = await mkdtemp(path.join(tmpdir(), 'testvm-release-'));
    top = path.join(root, 'shared', 'testvm');
    matrix = path.join(top, 'matrix');
    cacheDir = path.join(root, 'cache');
    for (const d of [top, matrix, cacheDir]) await mkdir(d, { recursive: true });
    const put = async (dir: string, name: string, sum: 'good' | 'bad' | 'none' = 'good'): Promise<void> => {
      const file = path.join(dir, name);
      await writeFile(file, name);
      if (sum !== 'none') await writeFile(`${file}.sha256`, `${sum === 'good' ? await sha256File(file) : 'f'.repeat(64)}  ${name}\n`);
    };
    await put(top, 'bzImage-6.12.117-gmem');
    await put(matrix, 'bzImage-7.3.4-gmem');
    await put(matrix, 'bzImage-6.1.192-nogmem');
    await put(cacheDir, 'bzImage-6.1.192-nogmem', 'none');
    await put(cacheDir, 'bzImage-7.3.9-gmem', 'bad');
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  test('nothing given: still the first shared dir with an image (the 6.12 at the top)', async () => {
    const k = await resolveKernel(opts());
    expect(k).toMatchObject({ path: path.join(top, 'bzImage-6.12.117-gmem'), source: 'shared', release: '6.12.117', flavour: 'gmem' });
  });

  test('6.1 picks 6.1.192, not 6.12; the shared copy before the cached one of the same release', async () => {
    const k = await resolveKernel({ ...opts(), kernel: '6.1' });
    expect(k).toMatchObject({ path: path.join(matrix, 'bzImage-6.1.192-nogmem'), source: 'option', release: '6.1.192', flavour: 'nogmem' });
    expect(k.reason).toMatch(/release 6\.1/);
    expect((await resolveKernel({ ...opts(), kernel: '6.12' })).release).toBe('6.12.117');
  });

  test('the newest matching release wins, and its checksum is still enforced', async () => {
    await expect(resolveKernel({ ...opts(), kernel: '7.3' })).rejects.toBeInstanceOf(KernelChecksumError);
    expect((await resolveKernel({ ...opts(), kernel: '7.3.4' })).path).toBe(path.join(matrix, 'bzImage-7.3.4-gmem'));
  });

  test(`$${KERNEL_ENV_VAR} takes a release too`, async () => {
    const k = await resolveKernel({ ...opts(), env: { [KERNEL_ENV_VAR]: '6.1' } });
    expect(k).toMatchObject({ source: 'env', release: '6.1.192' });
  });

  test('an unknown release lists what is available, where it looked, and how to build it', async () => {
    const err = await resolveKernel({ ...opts(), kernel: '6.6' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KernelNotFoundError);
    const e = err as KernelNotFoundError;
    expect(e.available).toEqual(['6.1.192', '6.12.117', '7.3.4', '7.3.9']);
    expect(e.message).toContain('6.1.192, 6.12.117, 7.3.4');
    expect(e.message).toContain(path.join(matrix, 'bzImage-*'));
    expect(e.message).toContain(path.join(cacheDir, 'bzImage-*'));
    expect(e.message).toMatch(/knows only 6\.1, 6\.12, 7\.3/);
    const buildable = (await resolveKernel({ ...opts(), sharedDirs: [], kernel: '6.12' }).catch((x: unknown) => x)) as Error;
    expect(buildable.message).toContain('build-kernel --version 6.12');
  });

  test('a value that is neither a file nor a release is a missing path', async () => {
    await expect(resolveKernel({ ...opts(), kernel: 'bzImage-nope' })).rejects.toThrow(/does not exist.*digits and dots/);
  });

  test('listKernels: every image with release, flavour, source, checksum state and the default marked', async () => {
    const all = await listKernels(opts());
    expect(all.map((k) => [path.relative(root, k.path), k.release, k.flavour, k.source, k.checksum, k.default])).toEqual([
      ['shared/testvm/bzImage-6.12.117-gmem', '6.12.117', 'gmem', 'shared', 'verified', true],
      ['shared/testvm/matrix/bzImage-7.3.4-gmem', '7.3.4', 'gmem', 'shared', 'verified', false],
      ['shared/testvm/matrix/bzImage-6.1.192-nogmem', '6.1.192', 'nogmem', 'shared', 'verified', false],
      ['cache/bzImage-7.3.9-gmem', '7.3.9', 'gmem', 'cache', 'mismatch', false],
      ['cache/bzImage-6.1.192-nogmem', '6.1.192', 'nogmem', 'cache', 'no-checksum-file', false],
    ]);
    expect(all[3]!.checksumDetail).toMatch(/does not match/);
    expect((await listKernels({ ...opts(), verify: false })).every((k) => k.checksum === 'not-checked')).toBe(true);
  });

  test('matrix: one image per series, ascending, the one resolveKernel picks for it', async () => {
    expect(await matrixReleases(opts())).toEqual(['6.1', '6.12', '7.3']);
    const m = await matrixKernels(opts());
    expect(m.map((k) => [k.series, k.release])).toEqual([
      ['6.1', '6.1.192'],
      ['6.12', '6.12.117'],
      ['7.3', '7.3.9'],
    ]);
    expect(m[0]!.path).toBe((await resolveKernel({ ...opts(), kernel: '6.1' })).path);
  });
});

describe('matrix runs side by side', () => {
  test('lanes take the newest kernel first (it runs the most tests), numerically: 6.12 after 7.3, before 6.1', () => {
    const order = scheduleOrder([{ release: '6.1.192' }, { release: '6.12.117' }, { release: '7.3.4' }, { release: '6.12.9' }]);
    expect(order.map((k) => k.release)).toEqual(['7.3.4', '6.12.117', '6.12.9', '6.1.192']);
  });

  test('every complete line gets its [release] prefix, chunks split anywhere; flush ends a partial line', () => {
    const out: string[] = [];
    const p = linePrefixer('7.3.4', (s) => out.push(s));
    p.write('ab');
    expect(out).toEqual([]);
    p.write('c\nde\n\nf');
    p.write('g');
    p.flush();
    p.flush();
    expect(out.join('')).toBe('[7.3.4] abc\n[7.3.4] de\n[7.3.4] \n[7.3.4] fg\n');
  });
});

// ---------------------------------------------------------------------------

describe('QEMU arguments', () => {
  test('--numa N: N RAM backends adding up to -m, every CPU on node 0; one node: no -numa at all', () => {
    const base = { kernel: '/k', init: '/i', workDir: '/w', memoryMiB: 2049, cpus: 2 };
    expect(qemuArgs(base).some((a) => a.includes('numa'))).toBe(false);
    const a = qemuArgs({ ...base, numaNodes: 2 });
    const pairs = a.flatMap((v, i) => (v === '-object' || v === '-numa' ? [`${v} ${a[i + 1]}`] : []));
    expect(pairs).toEqual([
      '-object memory-backend-ram,id=numa0,size=1024M',
      '-numa node,nodeid=0,memdev=numa0,cpus=0-1',
      '-object memory-backend-ram,id=numa1,size=1025M',
      '-numa node,nodeid=1,memdev=numa1',
    ]);
  });
});

describe('command and environment quoting into the share file', () => {
  const nasty = [
    'plain',
    '',
    'two words',
    "it's",
    "''",
    '"double"',
    '$HOME $(id) `id` ${PATH}',
    'back\\slash',
    'new\nline',
    '*; rm -rf / #',
    '-n',
    'ünïcødé ✓',
  ];

  test('shellQuote makes exactly one word with the same value', () => {
    for (const s of nasty) {
      const out = execFileSync('/bin/sh', ['-c', `printf '%s' ${shellQuote(s)}`], { encoding: 'utf8' });
      expect(out).toBe(s);
    }
  });

  test('the generated script passes argv, env and cwd through unchanged (run with the host sh)', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'testvm-quote-'));
    try {
      const env: Record<string, string> = {};
      nasty.forEach((v, i) => (env[`V${i}`] = v));
      const script = buildCommandScript(
        ['node', '-e', 'process.stdout.write(JSON.stringify({argv: process.argv.slice(1), cwd: process.cwd(), env: process.env}))', ...nasty],
        dir,
        { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env },
      );
      const file = path.join(dir, 'cmd.sh');
      await writeFile(file, script);
      // As init.sh runs it: a clean environment, /bin/sh.
      const out = JSON.parse(execFileSync('env', ['-i', '/bin/sh', file], { encoding: 'utf8' })) as {
        argv: string[];
        cwd: string;
        env: Record<string, string>;
      };
      expect(out.argv).toEqual(nasty);
      expect(out.cwd).toBe(dir);
      nasty.forEach((v, i) => expect(out.env[`V${i}`]).toBe(v));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('the script is cd + one export per variable + exec, nothing on the kernel command line', () => {
    const s = buildCommandScript(['true'], '/work/main', { A: "x'y" });
    expect(s.split('\n').filter(Boolean)).toEqual([expect.stringMatching(/^#/), "cd '/work/main' || exit 125", "A='x'\\''y'; export A", "exec 'true'"]);
  });

  test('bad input is refused', () => {
    expect(() => buildCommandScript([], '/', {})).toThrow(/empty/);
    expect(() => buildCommandScript(['true'], '/', { 'BAD-NAME': 'x' })).toThrow(/invalid environment variable name/);
    expect(() => buildCommandScript(['true'], '/', { '1X': 'x' })).toThrow(/invalid environment variable name/);
    expect(() => buildCommandScript(['a\0b'], '/', {})).toThrow(/NUL/);
  });

  test('overlay directories must be existing absolute paths usable as lowerdir', () => {
    // (Not the repo itself: a checkout under /tmp is a valid place to run the
    // suite, but not a valid overlay.)
    expect(checkOverlayDirs(['/usr', '/usr/share/'])).toEqual(['/usr', '/usr/share']);
    expect(() => checkOverlayDirs(['/nonexistent-testvm-dir'])).toThrow(/does not exist/);
    expect(() => checkOverlayDirs(['/'])).toThrow(/cannot overlay \//);
    expect(() => checkOverlayDirs(['/tmp'])).toThrow(/which the guest mounts itself/);
    expect(() => checkOverlayDirs(['/a,b'])).toThrow(/contains/);
  });

  test('guest environment: PATH from the host, HOME=/tmp, CI and TESTVM set, caller wins', () => {
    const e = guestEnvironment({ CI: '0', FOO: 'bar' }, { PATH: '/opt/x/bin:/usr/bin', SECRET: 'no' });
    expect(e).toMatchObject({ PATH: '/opt/x/bin:/usr/bin', HOME: '/tmp', TMPDIR: '/tmp', TESTVM: '1', CI: '0', FOO: 'bar' });
    expect(e.SECRET).toBeUndefined();
    expect(guestEnvironment({}, {}).CI).toBe('true');
  });
});

// ---------------------------------------------------------------------------

describe('console filter', () => {
  const M = 'TESTVM-0123456789abcdef';
  const run = (chunks: string[]) => {
    const seen: string[] = [];
    const f = new ConsoleFilter(M, (c) => seen.push(c));
    for (const c of chunks) f.push(c);
    f.finish();
    return { output: f.output, streamed: seen.join(''), tail: f.consoleTail() };
  };

  test('boot noise before the begin marker and the power-off after the end marker are dropped', () => {
    const r = run([`\x1bcSeaBIOS\r\n[ 1.9] kvm_intel: VMX not supported\r\n${M}-BEGIN\nhello\nworld\n${M}-END\n[ 8.0] reboot: Power down\r\n`]);
    expect(r.output).toBe('hello\nworld\n');
    expect(r.streamed).toBe(r.output);
    expect(r.tail).toContain('kvm_intel');
    expect(r.tail).not.toContain('\x1b');
  });

  test('markers split across chunks at every position', () => {
    const text = `noise ${M}-BEGIN\r\nab\r\ncd no newline${M}-END\r\nafter`;
    for (let i = 0; i <= text.length; i++) {
      for (const j of [i, Math.min(text.length, i + 7)]) {
        const r = run([text.slice(0, i), text.slice(i, j), text.slice(j)]);
        expect(r.output).toBe('ab\r\ncd no newline');
        expect(r.streamed).toBe(r.output);
      }
    }
  });

  test('output that merely resembles the end marker is passed on', () => {
    const r = run([`${M}-BEGIN\n${M}-EN`, `x TESTVM- ${M}`, `-END\n`]);
    expect(r.output).toBe(`${M}-ENx TESTVM- `);
  });

  test('without an end marker (guest crashed) everything after the begin marker is output', () => {
    const r = run([`${M}-BEGIN\nstarted\nKernel panic - not syncing`]);
    expect(r.output).toBe('started\nKernel panic - not syncing');
  });
});

// ---------------------------------------------------------------------------

describe('kernel config fragment check', () => {
  test('the project fragment has the settings of the shared one (when present)', () => {
    const ours = parseConfigFragment(readFileSync(new URL('../tools/testvm/gmem.config', import.meta.url), 'utf8'));
    expect(ours.get('CONFIG_KVM_SW_PROTECTED_VM')).toBe('y');
    const shared = '/work/shared/testvm/gmem.config';
    if (existsSync(shared)) expect(ours).toEqual(parseConfigFragment(readFileSync(shared, 'utf8')));
  });

  test('wanted n is met by "is not set" or absence; anything else must match', () => {
    const want = parseConfigFragment('CONFIG_A=y\nCONFIG_B=n\nCONFIG_C=n\nCONFIG_D=y\nCONFIG_E=n\n# comment\n');
    const got = parseConfigFragment('CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_D=m\nCONFIG_E=y\n');
    expect(checkConfigAgainstFragment(want, got)).toEqual([
      { name: 'CONFIG_D', wanted: 'y', got: 'm' },
      { name: 'CONFIG_E', wanted: 'n', got: 'y' },
    ]);
  });

  test('the prebuilt kernel.config (when present) satisfies our fragment', () => {
    const full = '/work/shared/testvm/kernel.config';
    if (!existsSync(full)) return;
    const ours = parseConfigFragment(readFileSync(new URL('../tools/testvm/gmem.config', import.meta.url), 'utf8'));
    expect(checkConfigAgainstFragment(ours, parseConfigFragment(readFileSync(full, 'utf8')))).toEqual([]);
  });
});

describe('kernel recipes per version', () => {
  const fragmentText = readFileSync(new URL('../tools/testvm/gmem.config', import.meta.url), 'utf8');
  const fragment = (): Map<string, string> => {
    const f = parseConfigFragment(fragmentText);
    f.set('CONFIG_WERROR', 'n');
    f.set('CONFIG_KVM_WERROR', 'n');
    return f;
  };

  test('one recipe per buildable series; 6.1 is nogmem, the others gmem; 7.3 is downloaded, not installed', () => {
    expect(Object.keys(KERNEL_RECIPES).sort()).toEqual([...BUILDABLE_SERIES].sort());
    expect(kernelRecipe('6.1')).toMatchObject({ sourcePackage: 'linux-source-6.1', flavour: 'nogmem', fetch: { kind: 'install' } });
    expect(kernelRecipe('6.12')).toMatchObject({ sourcePackage: 'linux-source-6.12', flavour: 'gmem', fetch: { kind: 'install' } });
    const r73 = kernelRecipe('7.3');
    expect(r73).toMatchObject({ sourcePackage: 'linux-source-7.3', flavour: 'gmem', fetch: { kind: 'download', suite: 'trixie-backports' } });
    expect(recipePackages(r73)).not.toContain('linux-source-7.3');
    expect(recipePackages(kernelRecipe('6.1'))).toContain('linux-source-6.1');
    expect(() => kernelRecipe('6.6')).toThrow(/one of 6\.1, 6\.12, 7\.3/);
    expect(() => kernelRecipe('6.12.117')).toThrow(/--version/);
  });

  test('image and config names carry the flavour', () => {
    expect(imageNames('6.1.192', 'nogmem')).toEqual({ image: 'bzImage-6.1.192-nogmem', config: 'config-6.1.192-nogmem' });
    expect(parseKernelImageName(imageNames('7.3.4', 'gmem').image)).toEqual({ release: '7.3.4', flavour: 'gmem' });
  });

  test('the 7.3 download reads only its own sources file, lists and cache', () => {
    const o = isolatedAptOptions('/c/fetch');
    expect(o.filter((x) => x !== '-o')).toEqual([
      'Dir::Etc::sourcelist=/c/fetch/sources.list',
      'Dir::Etc::sourceparts=-',
      'Dir::State::Lists=/c/fetch/lists',
      'Dir::Cache=/c/fetch/cache',
    ]);
    const f = kernelRecipe('7.3').fetch;
    expect(f.kind === 'download' && f.sourcesLine).toBe(
      'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie-backports main',
    );
  });

  test('only 6.1 expects settings absent, and only symbols 6.1 lacks', () => {
    expect(Object.keys(kernelRecipe('6.1').expectedAbsent)).toEqual(['CONFIG_KVM_SW_PROTECTED_VM']);
    expect(kernelRecipe('6.12').expectedAbsent).toEqual({});
    expect(kernelRecipe('7.3').expectedAbsent).toEqual({});
  });

  test('an expected-absent setting is excused only while unset and undefined in the tree; everything else still fails', () => {
    const want = parseConfigFragment('CONFIG_KVM=y\nCONFIG_KVM_SW_PROTECTED_VM=y\nCONFIG_MODULES=n\n');
    const absent = { CONFIG_KVM_SW_PROTECTED_VM: 'not in 6.1' };
    const old = parseConfigFragment('CONFIG_KVM=y\n');
    expect(checkConfigForRecipe(want, old, absent, new Set())).toEqual({ bad: [], absentAsExpected: ['CONFIG_KVM_SW_PROTECTED_VM'] });
    // Without the excuse the same config fails.
    expect(checkConfigForRecipe(want, old, {}, new Set()).bad.map((b) => b.name)).toEqual(['CONFIG_KVM_SW_PROTECTED_VM']);
    // The tree defines it after all (a dependency failed): not excused.
    const defined = checkConfigForRecipe(want, old, absent, new Set(['CONFIG_KVM_SW_PROTECTED_VM']));
    expect(defined.bad).toHaveLength(1);
    expect(defined.bad[0]!.got).toMatch(/Kconfig defines it/);
    // Set to something else than wanted: not excused.
    expect(checkConfigForRecipe(want, parseConfigFragment('CONFIG_KVM=y\nCONFIG_KVM_SW_PROTECTED_VM=m\n'), absent, new Set()).bad).toHaveLength(1);
    // Other mismatches are never excused.
    const r = checkConfigForRecipe(want, parseConfigFragment('CONFIG_KVM=m\nCONFIG_MODULES=y\n'), absent, new Set());
    expect(r.bad.map((b) => b.name)).toEqual(['CONFIG_KVM', 'CONFIG_MODULES']);
    expect(r.absentAsExpected).toEqual(['CONFIG_KVM_SW_PROTECTED_VM']);
  });

  test('kconfigDefines finds config and menuconfig entries in Kconfig files only', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'testvm-kconfig-'));
    try {
      await mkdir(path.join(dir, 'arch', 'x86', 'kvm'), { recursive: true });
      await writeFile(path.join(dir, 'arch', 'x86', 'kvm', 'Kconfig'), 'menuconfig VIRTUALIZATION\n\tbool\nconfig KVM_AMD\n\ttristate\n');
      await writeFile(path.join(dir, 'Kconfig.debug'), 'config KVM_SW_PROTECTED_VM_X\n');
      await writeFile(path.join(dir, 'README'), 'config KVM_SW_PROTECTED_VM\n');
      const names = ['CONFIG_VIRTUALIZATION', 'CONFIG_KVM_AMD', 'CONFIG_KVM_SW_PROTECTED_VM', 'CONFIG_KVM_SW_PROTECTED_VM_X'];
      expect([...(await kconfigDefines(dir, names))].sort()).toEqual(['CONFIG_KVM_AMD', 'CONFIG_KVM_SW_PROTECTED_VM_X', 'CONFIG_VIRTUALIZATION']);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  const matrixConfig = (name: string): string => path.join('/work/shared/testvm/matrix', name);
  test.skipIf(!existsSync(matrixConfig('config-6.1.192-nogmem')))('the shared 6.1 config passes the 6.1 check, and only with its excuse', () => {
    const got = parseConfigFragment(readFileSync(matrixConfig('config-6.1.192-nogmem'), 'utf8'));
    expect(checkConfigForRecipe(fragment(), got, kernelRecipe('6.1').expectedAbsent, new Set())).toEqual({
      bad: [],
      absentAsExpected: ['CONFIG_KVM_SW_PROTECTED_VM'],
    });
    expect(checkConfigForRecipe(fragment(), got, kernelRecipe('7.3').expectedAbsent, new Set()).bad.map((b) => b.name)).toEqual(['CONFIG_KVM_SW_PROTECTED_VM']);
  });

  test.skipIf(!existsSync(matrixConfig('config-7.3.4-gmem')))('the shared 7.3 config has every fragment setting', () => {
    const got = parseConfigFragment(readFileSync(matrixConfig('config-7.3.4-gmem'), 'utf8'));
    expect(checkConfigForRecipe(fragment(), got, kernelRecipe('7.3').expectedAbsent, new Set())).toEqual({ bad: [], absentAsExpected: [] });
  });
});

// ---------------------------------------------------------------------------

describe('real boots under QEMU TCG', () => {
  test.skipIf(!canBoot)(
    `true, false and exit 7 propagate; output streams; TESTVM is set; overlay writes stay in the guest ${needs}`,
    async () => {
      const chunks: string[] = [];
      const repo = findRepoRoot();
      const probe = `.testvm-overlay-probe-${process.pid}`;
      const [t, f, seven] = await Promise.all([
        runInTestVm({ command: ['true'], cpus: 1 }),
        runInTestVm({ command: ['false'], cpus: 1 }),
        runInTestVm({
          command: ['sh', '-c', `echo "in guest: $TESTVM $(uname -r) $(pwd)"; echo x > "$1/${probe}" && cat "$1/${probe}"; exit 7`, 'sh', repo],
          cwd: '/',
          cpus: 1,
          overlay: [repo],
          onOutput: (c) => chunks.push(c),
        }),
      ]);
      expect(t.exitCode).toBe(0);
      expect(f.exitCode).toBe(1);
      expect(seven.exitCode).toBe(7);
      expect(seven.output).toMatch(/^in guest: 1 \S+ \/\nx\n$/);
      // The write went to the guest's copy-on-write overlay, not to the host.
      expect(existsSync(path.join(repo, probe))).toBe(false);
      expect(chunks.join('')).toBe(seven.output);
      expect(t.output).toBe('');
      for (const r of [t, f, seven]) expect(r.wallMs).toBeGreaterThan(r.bootMs);
    },
    180_000,
  );

  test.skipIf(!canBoot)(
    `a guest still running at the time limit is killed: TestVmTimeoutError, no qemu left ${needs}`,
    async () => {
      const err = await runInTestVm({ command: ['sleep', '600'], timeoutMs: 20_000 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TestVmTimeoutError);
      const te = err as TestVmTimeoutError;
      // Killed only once the limit passed (how long after is the machine's
      // business: no timing thresholds in tests).
      expect(te.message).toMatch(/ran \d+\.\d s \(limit 20\.0 s\)/);
      expect(te.elapsedMs).toBeGreaterThanOrEqual(20_000);
      // (Normally the guest is running `sleep` by then and the console tail
      // shows '--- testvm: command starts ---'; not asserted, since a very
      // loaded host can still be booting after 20 s.)
      expect(te.consoleTail.length).toBeGreaterThan(0);
      expect(te.qemuPid).toBeGreaterThan(0);
      expect(() => process.kill(te.qemuPid!, 0)).toThrow(/ESRCH/);
    },
    120_000,
  );
});
