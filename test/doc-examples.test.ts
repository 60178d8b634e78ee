// Every TypeScript code block in README.md and docs/*.md runs here, so the
// documentation cannot drift from the API: each block's `from 'kvm-gmem'`
// is pointed at lib/, the block is written to a temporary file and imported
// (vitest compiles it), and it must not throw. Where this file knows what a
// block prints, it checks that too.
//
// Two markers, on the last non-blank line before the opening fence, change that:
//   <!-- needs: KVM_CAP_X -->        run only where the kernel offers KVM_CAP_X
//                                     (several: "A or B"); skipped by name elsewhere
//   <!-- not runnable: why -->       a fragment shown for reading; listed with why
// Every block is run or marked: a new one cannot escape by its fence's name.
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, describe, expect, test, vi } from 'vitest';
import { type VmTypeName } from '../lib/index.js';
import { gate, type Need, needs, pickVmType } from './helpers.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const sources = [
  'README.md',
  ...readdirSync(path.join(root, 'docs'))
    .filter((f) => f.endsWith('.md'))
    .sort()
    .map((f) => `docs/${f}`),
];

// Fence names whose blocks are code a reader would paste into a .ts file.
const CODE = new Set(['ts', 'typescript', 'tsx', 'mts', 'cts', 'js', 'javascript', 'mjs']);
const MARKER = /^<!--\s*(not runnable|needs):\s*(.*?)\s*-->$/;

interface Block {
  /** `file:line` of the opening fence. */
  where: string;
  file: string;
  code: string;
  marker: { kind: 'not runnable' | 'needs'; text: string } | undefined;
}

const blocks: Block[] = [];
/** Markers on a line that is not right before a code block's fence: they mark nothing. */
const strayMarkers: string[] = [];

for (const file of sources) {
  const lines = readFileSync(path.join(root, file), 'utf8').split('\n');
  const used = new Set<number>();
  let open: { fence: string; start: number; lang: string } | undefined;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] ?? '';
    if (open === undefined) {
      // CommonMark: up to 3 spaces, 3+ backticks (no backtick in the info string) or tildes.
      const m = /^ {0,3}(`{3,}(?=[^`]*$)|~{3,})\s*([^\s`]*)/.exec(line);
      if (m) open = { fence: m[1] ?? '', start: i, lang: (m[2] ?? '').toLowerCase() };
      continue;
    }
    const close = /^ {0,3}(`{3,}|~{3,})\s*$/.exec(line);
    if (!close || close[1]?.[0] !== open.fence[0] || (close[1]?.length ?? 0) < open.fence.length) continue;
    if (CODE.has(open.lang)) {
      // The marker is the last non-blank line before the fence (Prettier puts
      // a blank line between an HTML comment and a fence).
      let at = open.start - 1;
      while (at > 0 && (lines[at] ?? '').trim() === '') at--;
      const m = MARKER.exec((lines[at] ?? '').trim());
      if (m) used.add(at);
      blocks.push({
        where: `${file}:${open.start + 1}`,
        file,
        code: lines.slice(open.start + 1, i).join('\n') + '\n',
        marker: m ? { kind: m[1] as 'not runnable' | 'needs', text: m[2] ?? '' } : undefined,
      });
    }
    open = undefined;
  }
  lines.forEach((l, i) => {
    if (MARKER.test(l.trim()) && !used.has(i)) strayMarkers.push(`${file}:${i + 1}: ${l.trim()}`);
  });
}

// The capabilities a `needs:` marker may name, and the requirement each
// stands for on one VM type (the block runs where some VM type meets it).
const NEEDS: Record<string, (t: VmTypeName) => Need> = {
  // Memslots v2 (KVM_SET_USER_MEMORY_REGION2; 6.1 has only v1).
  KVM_CAP_USER_MEMORY2: (t) => needs.userMemory2(t),
  // A VM type whose fd accepts guest_memfd memslots.
  KVM_CAP_GUEST_MEMFD: (t) => needs.cap('GUEST_MEMFD', t),
  // Private memory: a VM type with the PRIVATE attribute ('sw-protected').
  KVM_CAP_MEMORY_ATTRIBUTES: (t) => needs.memoryAttributes('private', t),
  // guest_memfd files the host can map (and so use as a memslot's shared memory).
  KVM_CAP_GUEST_MEMFD_FLAGS: (t) => needs.all('', needs.cap('GUEST_MEMFD', t), needs.gmemFlags(['mmap', 'init-shared'], t)),
};

function markerNeed(text: string): Need {
  const alternatives = text.split(/\s+or\s+/).map((name) => {
    const has = NEEDS[name];
    if (has === undefined) throw new Error(`unknown capability '${name}' in a needs: marker (known: ${Object.keys(NEEDS).join(', ')})`);
    return pickVmType(`${name} on some VM type`, has).need;
  });
  return needs.any(text, ...alternatives);
}

// What some blocks print (console.log's arguments, one array per call),
// found by a line of their code. Each must match exactly one block.
const prints: { file: string; contains: string; check: (logged: unknown[][]) => void }[] = [
  {
    file: 'README.md',
    contains: 'slot.view(0x100000, 5).set(',
    check: (logged) => {
      // It wrote through the memslot's shared view and read it back, and saw
      // the guest_memfd binding; then one line about private memory.
      expect(logged[0]?.[0]).toBe('hello');
      expect(logged[0]?.[1]).toEqual([{ slot: 0, addressSpace: 0, offset: 0, size: 0x200000, gpa: 0x100000 }]);
      expect(logged).toHaveLength(2);
    },
  },
  {
    file: 'docs/guide.md',
    contains: "a.label('loop')",
    check: (logged) => expect(logged).toEqual([[[5050n]]]),
  },
  {
    file: 'docs/guide.md',
    contains: "'K' to the serial port",
    check: (logged) => expect(logged).toEqual([[['out 0x3f8 K']]]),
  },
  {
    file: 'docs/rules.md',
    contains: 'MemslotOverlapError',
    check: (logged) => expect(logged).toEqual([['memslot-gfn-overlap', 17], [1], ['EEXIST', 'ioctl(KVM_SET_USER_MEMORY_REGION2)']]),
  },
];

const lib = path.join(root, 'lib', 'index.js');
const dir = mkdtempSync(path.join(tmpdir(), 'kvm-gmem-doc-examples-'));

describe('documentation code blocks', () => {
  afterEach(() => {
    vi.restoreAllMocks();
  });
  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  test('the README and docs have code blocks, every marker marks one, every expected output has its block', () => {
    expect(blocks.filter((b) => b.file === 'README.md')).toHaveLength(1);
    expect(strayMarkers).toEqual([]);
    for (const p of prints) {
      expect(
        blocks.filter((b) => b.file === p.file && b.code.includes(p.contains)).map((b) => b.where),
        `${p.file}: ${p.contains}`,
      ).toHaveLength(1);
    }
    // "Not runnable" is for a handful of fragments, not a way out.
    expect(blocks.filter((b) => b.marker?.kind === 'not runnable').length).toBeLessThanOrEqual(5);
  });

  for (const block of blocks) {
    const { marker } = block;
    if (marker?.kind === 'not runnable') {
      test(`${block.where} is not runnable on purpose: ${marker.text}`, () => {
        expect(marker.text).not.toBe('');
      });
      continue;
    }
    gate(...(marker?.kind === 'needs' ? [markerNeed(marker.text)] : [])).test(`${block.where} runs`, async () => {
      // An absolute path: vitest transforms the TypeScript sources it points at.
      const source = block.code.replace(/(\bfrom\s*|\bimport\s*\(\s*)(['"])kvm-gmem\2/g, `$1'${lib}'`);
      const file = path.join(dir, `${block.where.replace(/[/:.]/g, '-')}.ts`);
      writeFileSync(file, source);
      const logged: unknown[][] = [];
      vi.spyOn(console, 'log').mockImplementation((...args: unknown[]) => void logged.push(args));
      await import(file);
      for (const p of prints) if (p.file === block.file && block.code.includes(p.contains)) p.check(logged);
    });
  }
});
