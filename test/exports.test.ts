// The public API is what lib/index.ts names, and nothing else. The lists
// below are that promise written out: adding or removing an export means
// changing this file on purpose (and docs/api.md and CHANGELOG.md with it).
// The declaration emit is checked too: with stripInternal, nothing marked
// @internal in lib/ reaches the .d.ts a user compiles against.
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { describe, expect, test } from 'vitest';
import * as errors from '../lib/errors.js';
import * as lib from '../lib/index.js';
import * as selftest from '../lib/selftest/index.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

const RUNTIME_EXPORTS = [
  'Mempolicy',
  'Memfd',
  'InternalErrorSuberror',
  'KVM_MEMORY_EXIT_FLAG_PRIVATE',
  'Falloc',
  'Mmap',
  'errno',
  'AddonLoadError',
  'AlignmentError',
  'AsmError',
  'Assembler',
  'AttributeRuleError',
  'Cap',
  'CapSince',
  'ClosedError',
  'ConversionError',
  'ExitReason',
  'Guest',
  'GuestAssertError',
  'GuestExceptionError',
  'GuestMapError',
  'PhysPages',
  'PhysPagesExhaustedError',
  'EXCEPTION_NAMES',
  'UCALL_ARG_REGS',
  'formatGuestPrintf',
  'GuestIo',
  'GuestMemfd',
  'GuestMemfdBindingOverlapError',
  'GuestMemfdFlag',
  'GuestMemfdRuleError',
  'GuestTimeoutError',
  'KVM_HC_MAP_GPA_RANGE',
  'KVM_MAP_GPA_RANGE_ENCRYPTED',
  'Kvm',
  'KvmApiVersionError',
  'KvmError',
  'KvmGmemError',
  'KvmRuleError',
  'Layout',
  'Mapping',
  'MemFlag',
  'MemoryAttribute',
  'Memslot',
  'MemslotChangeError',
  'MemslotFlagsError',
  'MemslotIdError',
  'MemslotOverlapError',
  'MissingCapabilityError',
  'PAGE_SIZE',
  'PRE_FAULT_TIMEOUT_MS',
  'RangeWrapError',
  'Selector',
  'UCALL_PORT',
  'Ucall',
  'UnexpectedExitError',
  'UserAddressError',
  'Vcpu',
  'VcpuBusyError',
  'MappingInUseError',
  'Vm',
  'VmType',
  'emitUcall',
  'mem',
  'offset',
  'raw',
];

const RAW_EXPORTS = [
  'RawFd',
  'checkExtension',
  'createGuestMemfd',
  'createVm',
  'enableCap',
  'fallocate',
  'fstat',
  'isCloexec',
  'probeMemory',
  'memfdCreate',
  'read',
  'write',
  'pread',
  'pwrite',
  'ftruncate',
  'getMempolicy',
  'setMempolicy',
  'setNrMmuPages',
  'setMemoryAttributes',
  'setUserMemoryRegion',
  'setUserMemoryRegion2',
  'withInterrupts',
];

/** Exports that exist only as types (erased at run time). */
const TYPE_EXPORTS = [
  'ProbeAccess',
  'ProbeResult',
  'AssembleResult',
  'AttributeRange',
  'BoundRange',
  'CapName',
  'Capabilities',
  'Cond',
  'ConversionOptions',
  'ConversionRecord',
  'CpuidEntry',
  'CreateVmOptions',
  'DescriptorTable',
  'DiscardStep',
  'GpaRange',
  'GuestMemfdFlagName',
  'GuestMemfdOptions',
  'GuestMemoryOptions',
  'GuestOptions',
  'AddVcpuOptions',
  'GuestAssertValues',
  'PhysAllocOptions',
  'MapOptions',
  'PageSize',
  'CmpOp',
  'HypercallExit',
  'IoExit',
  'Mem',
  'MemoryFaultExit',
  'MemslotBacking',
  'MemslotOptions',
  'MmioExit',
  'Reg',
  'Regs',
  'RunOptions',
  'RunResult',
  'RunUntilDoneOptions',
  'Segment',
  'SyncUcall',
  'Sregs',
  'U64Input',
  'VcpuExit',
  'VmTypeName',
];

const byName = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

// kvm-gmem/selftest (lib/selftest/index.ts): the KTAP harness and its assertions.
const SELFTEST_EXPORTS = [
  'Harness',
  'KSFT_FAIL',
  'KSFT_PASS',
  'KSFT_SKIP',
  'SelftestAssertionError',
  'SelftestSkip',
  'SelftestUsageError',
  'assert',
  'assertEq',
  'assertErrno',
  'assertNe',
  'assertThrows',
  'configure',
  'diag',
  'openKvm',
  'requires',
  'run',
  'skip',
  'test',
];

describe('the package exports', () => {
  test('runtime exports of the package entry, by name', () => {
    expect(Object.keys(lib).sort(byName)).toEqual([...RUNTIME_EXPORTS].sort(byName));
  });

  test('kvm-gmem/selftest: its runtime exports by name, published in package.json, its errors extending KvmGmemError', () => {
    expect(Object.keys(selftest).sort(byName)).toEqual([...SELFTEST_EXPORTS].sort(byName));
    const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { exports: Record<string, { types: string; default: string }> };
    expect(pkg.exports['./selftest']).toEqual({ types: './dist/lib/selftest/index.d.ts', default: './dist/lib/selftest/index.js' });
    for (const cls of [selftest.SelftestAssertionError, selftest.SelftestSkip, selftest.SelftestUsageError])
      expect(cls.prototype).toBeInstanceOf(lib.KvmGmemError);
  });

  test('the raw layer (export * as raw) is public: its runtime exports, by name', () => {
    expect(Object.keys(lib.raw).sort(byName)).toEqual([...RAW_EXPORTS].sort(byName));
  });

  test('no internal helper leaks: formatting, retry and request helpers stay in lib/errors.ts', () => {
    for (const helper of ['hex', 'fmtGfns', 'fmtPages', 'withRequest', 'retryOnEintr', 'errnoName', 'toU64', 'argError', 'native']) {
      expect(Object.keys(lib), helper).not.toContain(helper);
    }
  });

  test('every error class of lib/errors.ts is exported, and every exported error class extends KvmGmemError', () => {
    const errorClasses = (m: Record<string, unknown>): string[] =>
      Object.keys(m).filter((k) => typeof m[k] === 'function' && (m[k] as { prototype: unknown }).prototype instanceof Error);
    expect(errorClasses(lib)).toEqual(expect.arrayContaining(errorClasses(errors)));
    for (const name of errorClasses(lib)) {
      const cls = (lib as Record<string, unknown>)[name] as { prototype: object };
      expect(cls === lib.KvmGmemError || cls.prototype instanceof lib.KvmGmemError, name).toBe(true);
    }
  });

  test('type-only exports of the package entry, by name (what a TypeScript user can import besides the values)', () => {
    const program = ts.createProgram([join(root, 'lib/index.ts')], { ...compilerOptions(), noEmit: true });
    const checker = program.getTypeChecker();
    const source = program.getSourceFile(join(root, 'lib/index.ts')) as ts.SourceFile;
    const moduleSymbol = checker.getSymbolAtLocation(source) as ts.Symbol;
    const names = checker.getExportsOfModule(moduleSymbol).map((s) => s.name);
    const typeOnly = names.filter((n) => !RUNTIME_EXPORTS.includes(n));
    expect(typeOnly.sort(byName)).toEqual([...TYPE_EXPORTS].sort(byName));
    expect(names.filter((n) => RUNTIME_EXPORTS.includes(n)).sort(byName)).toEqual([...RUNTIME_EXPORTS].sort(byName));
  });
});

// ---- stripInternal ------------------------------------------------------------

function compilerOptions(): ts.CompilerOptions {
  const file = join(root, 'tsconfig.json');
  const parsed = ts.parseJsonConfigFileContent(ts.readConfigFile(file, (p) => ts.sys.readFile(p)).config, ts.sys, root);
  return parsed.options;
}

function libFiles(dir = join(root, 'lib')): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((d) =>
    d.isDirectory() ? libFiles(join(dir, d.name)) : d.name.endsWith('.ts') && !d.name.endsWith('.d.ts') ? [join(dir, d.name)] : [],
  );
}

function hasInternalTag(node: ts.Node, text: string): boolean {
  return (ts.getLeadingCommentRanges(text, node.pos) ?? []).some((r) => text.slice(r.pos, r.end).includes('@internal'));
}

function memberName(node: ts.Node, sf: ts.SourceFile): string | null {
  if (ts.isConstructorDeclaration(node)) return 'constructor';
  const name = (node as { name?: ts.Node }).name;
  return name !== undefined ? name.getText(sf) : null;
}

/** "Class.member" (or "member" at the top level) for every declaration marked @internal. */
function internalDeclarations(sf: ts.SourceFile): string[] {
  const text = sf.getFullText();
  const out: string[] = [];
  const visit = (node: ts.Node, owner: string | null): void => {
    const isMember = ts.isClassElement(node) || ts.isTypeElement(node) || (ts.isParameter(node) && ts.isConstructorDeclaration(node.parent));
    if ((isMember || ts.isFunctionDeclaration(node) || ts.isVariableStatement(node) || ts.isClassDeclaration(node)) && hasInternalTag(node, text)) {
      const n = ts.isVariableStatement(node) ? (node.declarationList.declarations[0]?.name.getText(sf) ?? null) : memberName(node, sf);
      if (n !== null) out.push(owner === null || ts.isFunctionDeclaration(node) || ts.isVariableStatement(node) ? n : `${owner}.${n}`);
    }
    const nextOwner = ts.isClassDeclaration(node) || ts.isInterfaceDeclaration(node) ? (node.name?.getText(sf) ?? owner) : owner;
    ts.forEachChild(node, (c) => visit(c, nextOwner));
  };
  visit(sf, null);
  return out;
}

/** The same names, as declared in an emitted .d.ts (public constructors only: a private one is not callable). */
function declaredMembers(sf: ts.SourceFile): Set<string> {
  const out = new Set<string>();
  const visit = (node: ts.Node, owner: string | null): void => {
    if (ts.isClassElement(node) || ts.isTypeElement(node) || (ts.isParameter(node) && ts.isConstructorDeclaration(node.parent))) {
      const isPrivateCtor = ts.isConstructorDeclaration(node) && (ts.getCombinedModifierFlags(node) & ts.ModifierFlags.Private) !== 0;
      const n = memberName(node, sf);
      if (n !== null && !isPrivateCtor && owner !== null) out.add(`${owner}.${n}`);
    } else if (ts.isFunctionDeclaration(node) || ts.isVariableDeclaration(node)) {
      const n = node.name?.getText(sf);
      if (n !== undefined) out.add(n);
    }
    const nextOwner = ts.isClassDeclaration(node) || ts.isInterfaceDeclaration(node) ? (node.name?.getText(sf) ?? owner) : owner;
    ts.forEachChild(node, (c) => visit(c, nextOwner));
  };
  visit(sf, null);
  return out;
}

// One declaration-only program over lib/ for the tests below (under QEMU TCG
// in the test VM each program takes about a minute).
let built: { program: ts.Program; emitted: Map<string, string> } | undefined;
function declarations(): { program: ts.Program; emitted: Map<string, string> } {
  if (built) return built;
  const program = ts.createProgram(libFiles(), {
    ...compilerOptions(),
    declaration: true,
    emitDeclarationOnly: true,
    noEmit: false,
    sourceMap: false,
    declarationMap: false,
  });
  const emitted = new Map<string, string>();
  // Written to memory only: nothing is built or left behind.
  program.emit(undefined, (name, text) => {
    if (name.endsWith('.d.ts')) emitted.set(name, text);
  });
  return (built = { program, emitted });
}
const TSC_MS = process.env.TESTVM === '1' ? 300_000 : 60_000;

describe('declarations (stripInternal)', () => {
  test('tsconfig.json strips @internal members from the emitted .d.ts', () => {
    expect(compilerOptions().stripInternal).toBe(true);
  });

  test(
    'no declaration marked @internal in lib/ appears in the emitted lib/**/*.d.ts',
    () => {
      const files = libFiles();
      const { program, emitted } = declarations();
      let checked = 0;
      const leaks: string[] = [];
      for (const file of files) {
        const src = program.getSourceFile(file) as ts.SourceFile;
        const internal = internalDeclarations(src);
        if (internal.length === 0) continue;
        const rel = relative(root, file).replace(/\.ts$/, '.d.ts');
        const dtsName = [...emitted.keys()].find((k) => k.endsWith(rel));
        expect(dtsName, `${rel} emitted`).toBeDefined();
        const dts = ts.createSourceFile(rel, emitted.get(dtsName as string) as string, ts.ScriptTarget.ES2022, true);
        const declared = declaredMembers(dts);
        for (const name of internal) {
          checked++;
          if (declared.has(name)) leaks.push(`${relative(root, file)}: ${name}`);
        }
      }
      expect(leaks).toEqual([]);
      // The walk found the package's @internal members (a regex that matched none would pass vacuously).
      expect(checked).toBeGreaterThan(5);
    },
    TSC_MS,
  );

  test(
    'the emitted declarations typecheck on their own, without skipLibCheck (a stripped member no longer satisfies an interface, say)',
    () => {
      const dir = mkdtempSync(join(tmpdir(), 'kvm-gmem-dts-'));
      try {
        for (const [name, text] of declarations().emitted) {
          const rel = relative(join(root, 'dist'), name);
          if (rel.startsWith('..')) continue;
          mkdirSync(dirname(join(dir, rel)), { recursive: true });
          writeFileSync(join(dir, rel), text);
        }
        const check = ts.createProgram([join(dir, 'lib/index.d.ts')], {
          ...compilerOptions(),
          noEmit: true,
          skipLibCheck: false,
          typeRoots: [join(root, 'node_modules/@types')],
        });
        const diagnostics = ts.getPreEmitDiagnostics(check).filter((d) => d.file === undefined || d.file.fileName.startsWith(dir));
        expect(diagnostics.map((d) => `${d.file ? relative(dir, d.file.fileName) : ''}: ${ts.flattenDiagnosticMessageText(d.messageText, '\n')}`)).toEqual([]);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
    TSC_MS,
  );

  test('lib/index.ts has no export * (except the raw layer as a namespace)', () => {
    const src = readFileSync(join(root, 'lib/index.ts'), 'utf8');
    expect(src.match(/^export \*(?! as raw from)/gm)).toBeNull();
  });
});
