// ESLint (flat config) for the TypeScript API, its tools, examples and tests.
// Type-aware: the TypeScript files are linted against tsconfig.check.json
// (the whole tree, tests included), so the rules that need types -- floating
// and misused promises above all, since most of the API is asynchronous --
// see the real types. The plain .js/.mjs files (bin/, test/fixtures/,
// tools/asan/) import the built dist/ and are linted without types, so a
// missing build cannot change what the lint says about them.
//
//   npm run lint
import js from '@eslint/js';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/', 'build/', 'node_modules/', 'native/', '.cache/'] },

  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      ecmaVersion: 2022,
      sourceType: 'module',
      globals: { ...globals.node },
      parserOptions: {
        project: './tsconfig.check.json',
        tsconfigRootDir: import.meta.dirname,
      },
    },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: {
      '@typescript-eslint/no-unused-vars': [
        'error',
        {
          args: 'after-used',
          argsIgnorePattern: '^_',
          varsIgnorePattern: '^_',
          caughtErrors: 'all',
          caughtErrorsIgnorePattern: '^_',
          destructuredArrayIgnorePattern: '^_',
          ignoreRestSiblings: true,
        },
      ],
      // `import { x, type Y }`; `typeof import('./m.js')` stays allowed for
      // the modules the CLI loads lazily.
      '@typescript-eslint/consistent-type-imports': ['error', { prefer: 'type-imports', fixStyle: 'inline-type-imports', disallowTypeAnnotations: false }],
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      eqeqeq: ['error', 'always'],
      'no-var': 'error',
      'prefer-const': 'error',

      // Off on purpose. The code writes `xs[i]!` / `xs[i] as T` for indexed
      // reads it knows are in range (tsconfig has no noUncheckedIndexedAccess,
      // so TypeScript calls them unnecessary); they are kept as markers.
      '@typescript-eslint/no-unnecessary-type-assertion': 'off',
      // Error messages print caller-supplied unknown values with String(v)
      // after narrowing (v: {} | null), which this rule flags wholesale.
      '@typescript-eslint/no-base-to-string': 'off',
    },
  },

  {
    // vitest types its asymmetric matchers (expect.stringMatching,
    // expect.any, ...) as returning any, so every `{ message:
    // expect.stringContaining(..) }` would be an unsafe assignment.
    files: ['test/**/*.ts'],
    rules: { '@typescript-eslint/no-unsafe-assignment': 'off' },
  },

  {
    files: ['**/*.js', '**/*.mjs', '**/*.cjs'],
    ...tseslint.configs.disableTypeChecked,
    rules: {
      ...tseslint.configs.disableTypeChecked.rules,
      '@typescript-eslint/consistent-type-imports': 'off',
    },
  },
);
