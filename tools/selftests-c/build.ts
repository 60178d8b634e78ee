#!/usr/bin/env node
// Builds the kernel's own KVM selftests (C) from Debian's kernel sources, for
// comparison with the TypeScript ports (compare.ts). As root on Debian:
//
//   npm run selftest:c:build [-- --series 6.12|7.3]... [--jobs N] [--force]
//
// Per series (6.12: linux-source-6.12 from the host's bookworm-security; 7.3:
// linux-source-7.3 from trixie-backports, read through a separate sources file
// with its own Dir::State::Lists and Dir::Cache, so the host's apt state is
// untouched) in <repo>/.cache/selftests-c/<series>/:
//   1. packages: make gcc libc6-dev xz-utils libnuma-dev (apt-get install what is missing)
//   2. apt-get download the source package (nothing installed), keep the .deb
//   3. unpack the tarball from the .deb into tree/
//   4. make headers (usr/include, which the selftests' Makefile uses)
//   5. make -C tools/testing/selftests/kvm <the tests>; copy them to bin/
// A stage whose result is present is skipped (--force redoes them all); each
// stage's time is printed.
import { existsSync } from 'node:fs';
import { copyFile, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import path from 'node:path';
import { isolatedAptOptions } from '../testvm/build-kernel.js';
import {
  type BuildInfo,
  cacheRoot,
  fmtSeconds,
  makeTarget,
  mustRun,
  runCommand,
  SOURCE_RECIPES,
  SOURCE_SERIES,
  type SourceRecipe,
  type SourceSeries,
  seriesDirs,
} from './common.js';

/** Build packages (checked with dpkg-query first). libnuma-dev: 7.3's guest_memfd_test and lib include numa.h / -lnuma. */
export const BUILD_PACKAGES = ['make', 'gcc', 'libc6-dev', 'xz-utils', 'libnuma-dev', 'binutils'];

const aptEnv = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
const log = (s: string): void => {
  process.stderr.write(`${s}\n`);
};

/** Runs one stage and prints its time; a stage returns null when its result was already there (skipped). */
async function timed<T>(label: string, fn: () => Promise<T | null>): Promise<T | null> {
  const t0 = performance.now();
  log(`[selftests-c] ${label} ...`);
  const r = await fn();
  log(`[selftests-c] ${label}: ${r === null ? 'already done, skipped' : 'done'} (${fmtSeconds(performance.now() - t0)})`);
  return r;
}

async function missingPackages(pkgs: string[]): Promise<string[]> {
  const r = await runCommand('dpkg-query', ['-W', '-f=${Package} ${db:Status-Abbrev}\\n', ...pkgs]);
  const ok = new Set(
    r.output
      .split('\n')
      .map((l) => /^(\S+) ii/.exec(l)?.[1]?.replace(/:.*$/, ''))
      .filter((x): x is string => !!x),
  );
  return pkgs.filter((p) => !ok.has(p));
}

async function aptCandidate(pkg: string, aptOpts: string[] = []): Promise<string | undefined> {
  const r = await runCommand('apt-cache', [...aptOpts, 'policy', pkg]);
  const m = /Candidate:\s*(\S+)/.exec(r.output);
  return m && m[1] !== '(none)' ? m[1] : undefined;
}

async function installPackages(): Promise<string[] | null> {
  const missing = await missingPackages(BUILD_PACKAGES);
  if (missing.length === 0) return null;
  if (process.getuid?.() !== 0)
    throw new Error(`missing packages ${missing.join(' ')}; as root run: apt-get install -y --no-install-recommends ${missing.join(' ')}`);
  if (!(await aptCandidate(missing[0]!))) {
    log(`[selftests-c]   apt knows no ${missing[0]}: apt-get update`);
    await mustRun('apt-get', ['update'], { env: aptEnv });
  }
  log(`[selftests-c]   installing ${missing.join(' ')}`);
  await mustRun('apt-get', ['install', '-y', '--no-install-recommends', ...missing], { env: aptEnv });
  return missing;
}

/** Downloads the source package's .deb into fetch/; returns its path. */
async function download(recipe: SourceRecipe, fetchDir: string): Promise<string | null> {
  const existing = existsSync(fetchDir) ? (await readdir(fetchDir)).filter((n) => n.startsWith(`${recipe.sourcePackage}_`) && n.endsWith('.deb')) : [];
  if (existing.length === 1) return null;
  await rm(fetchDir, { recursive: true, force: true });
  await mkdir(fetchDir, { recursive: true });
  let aptOpts: string[] = [];
  if (recipe.fetch === 'host' && (await aptCandidate(recipe.sourcePackage))) {
    log(`[selftests-c]   ${recipe.sourcePackage} from the host's apt sources`);
  } else {
    const apt = path.join(fetchDir, 'apt');
    for (const d of ['lists/partial', 'cache/archives/partial']) await mkdir(path.join(apt, d), { recursive: true });
    await writeFile(path.join(apt, 'sources.list'), `${recipe.fallbackLine}\n`);
    aptOpts = isolatedAptOptions(apt);
    log(`[selftests-c]   ${recipe.sourcePackage} from ${recipe.fallbackSuite} (own sources file and lists in ${apt}; the host's apt state is untouched)`);
    await mustRun('apt-get', [...aptOpts, 'update'], { env: aptEnv });
  }
  const version = await aptCandidate(recipe.sourcePackage, aptOpts);
  if (!version) throw new Error(`${recipe.sourcePackage} has no candidate in ${aptOpts.length ? recipe.fallbackSuite : "the host's apt sources"}`);
  log(`[selftests-c]   apt-get download ${recipe.sourcePackage}=${version}`);
  await mustRun('apt-get', [...aptOpts, 'download', `${recipe.sourcePackage}=${version}`], { cwd: fetchDir, env: aptEnv });
  await rm(path.join(fetchDir, 'apt'), { recursive: true, force: true });
  const debs = (await readdir(fetchDir)).filter((n) => n.endsWith('.deb'));
  if (debs.length !== 1) throw new Error(`expected one .deb in ${fetchDir}, found ${debs.join(', ') || 'none'}`);
  return path.join(fetchDir, debs[0]!);
}

/** The kernel tree's top directory under tree/ (linux-source-X.Y), or undefined. */
async function treeTop(treeDir: string): Promise<string | undefined> {
  if (!existsSync(treeDir)) return undefined;
  const tops = (await readdir(treeDir)).filter((n) => n.startsWith('linux-source-'));
  return tops.length === 1 ? path.join(treeDir, tops[0]!) : undefined;
}

async function unpack(recipe: SourceRecipe, fetchDir: string, treeDir: string): Promise<string | null> {
  const stamp = path.join(treeDir, '.unpacked');
  if (existsSync(stamp)) return null;
  await rm(treeDir, { recursive: true, force: true });
  await mkdir(treeDir, { recursive: true });
  const deb = (await readdir(fetchDir)).find((n) => n.endsWith('.deb'))!;
  // The .deb holds one tarball of the whole tree: take it out, then unpack it.
  await mustRun('sh', ['-c', `dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" "./${recipe.tarball}"`, 'sh', path.join(fetchDir, deb), treeDir]);
  const tarball = path.join(treeDir, recipe.tarball);
  await mustRun('tar', ['-xf', tarball, '-C', treeDir]);
  await rm(path.join(treeDir, 'usr'), { recursive: true, force: true });
  const version = (await mustRun('dpkg-deb', ['-f', path.join(fetchDir, deb), 'Version'])).trim();
  await writeFile(stamp, `${version}\n`);
  return version;
}

async function makeHeaders(src: string, jobs: number): Promise<string | null> {
  const stamp = path.join(src, '.headers-done');
  if (existsSync(stamp)) return null;
  await mustRun('make', [`-j${jobs}`, 'headers'], { cwd: src });
  await writeFile(stamp, 'ok\n');
  return 'ok';
}

async function makeTests(recipe: SourceRecipe, src: string, binDir: string, infoFile: string, version: string, jobs: number): Promise<string[] | null> {
  if (existsSync(infoFile) && recipe.tests.every((t) => existsSync(path.join(binDir, t)))) return null;
  const kvmDir = path.join(src, 'tools', 'testing', 'selftests', 'kvm');
  // lib.mk prefixes every program with $(OUTPUT)/ (the kvm directory itself): targets are absolute paths.
  const targets = recipe.tests.map((t) => path.join(kvmDir, makeTarget(recipe, t)));
  await mustRun('make', [`-j${jobs}`, '-C', kvmDir, ...targets]);
  await mkdir(binDir, { recursive: true });
  for (const t of recipe.tests) await copyFile(path.join(kvmDir, makeTarget(recipe, t)), path.join(binDir, t));
  const info: BuildInfo = { series: recipe.series, sourcePackage: recipe.sourcePackage, version, builtAt: new Date().toISOString(), tests: recipe.tests };
  await writeFile(infoFile, `${JSON.stringify(info, null, 2)}\n`);
  return recipe.tests;
}

export async function buildSeries(series: SourceSeries, o: { jobs: number; force: boolean; root: string }): Promise<BuildInfo> {
  const recipe = SOURCE_RECIPES[series];
  const dirs = seriesDirs(series, o.root);
  if (o.force) await rm(dirs.base, { recursive: true, force: true });
  await mkdir(dirs.base, { recursive: true });
  const t0 = performance.now();
  await timed(`${series}: download ${recipe.sourcePackage}`, () => download(recipe, dirs.fetch));
  await timed(`${series}: unpack`, () => unpack(recipe, dirs.fetch, dirs.tree));
  const version = (await readFile(path.join(dirs.tree, '.unpacked'), 'utf8')).trim();
  const src = await treeTop(dirs.tree);
  if (!src) throw new Error(`no linux-source-* directory in ${dirs.tree}; remove ${dirs.tree} and rerun`);
  await timed(`${series}: make headers`, () => makeHeaders(src, o.jobs));
  await timed(`${series}: make -C tools/testing/selftests/kvm ${recipe.tests.map((t) => makeTarget(recipe, t)).join(' ')}`, () =>
    makeTests(recipe, src, dirs.bin, dirs.info, version, o.jobs),
  );
  log(
    `[selftests-c] ${series}: ${recipe.sourcePackage} ${version}: ${recipe.tests.length} tests in ${dirs.bin} (${fmtSeconds(performance.now() - t0)} for this series)`,
  );
  return JSON.parse(await readFile(dirs.info, 'utf8')) as BuildInfo;
}

const USAGE = `usage: build.js [--series 6.12|7.3]... [--jobs N] [--force]
  Downloads Debian's linux-source-6.12 (host suite bookworm-security) and linux-source-7.3
  (trixie-backports, own apt sources and lists) and builds their KVM selftests into
  ${cacheRoot()}/<series>/bin. Stages already done are skipped; --force starts over.`;

async function main(argv: string[]): Promise<void> {
  const series: SourceSeries[] = [];
  let jobs = availableParallelism();
  let force = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--series') {
      const s = argv[++i];
      if (!(SOURCE_SERIES as readonly string[]).includes(s ?? '')) throw new Error(`--series takes ${SOURCE_SERIES.join(' or ')}\n${USAGE}`);
      series.push(s as SourceSeries);
    } else if (a === '--jobs' || a === '-j') jobs = Number(argv[++i]);
    else if (a === '--force') force = true;
    else if (a === '-h' || a === '--help') {
      process.stdout.write(`${USAGE}\n`);
      return;
    } else throw new Error(`unknown option ${a}\n${USAGE}`);
  }
  if (!Number.isInteger(jobs) || jobs < 1) throw new Error('--jobs needs a positive integer');
  const root = cacheRoot();
  const t0 = performance.now();
  await timed('packages', installPackages);
  for (const s of series.length ? series : SOURCE_SERIES) await buildSeries(s, { jobs, force, root });
  log(`[selftests-c] all done in ${fmtSeconds(performance.now() - t0)}`);
}

main(process.argv.slice(2)).catch((e: unknown) => {
  process.stderr.write(`selftest:c:build: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
