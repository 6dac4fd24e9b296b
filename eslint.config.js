// Lint for the whole project. The protocol core (node-agent/src/core) is deterministic and I/O-free:
// no Node built-ins, no timers, no clock, no Math.random, no promises/async. Those belong in adapters.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

const coreBannedGlobals = [
  'setTimeout', 'setInterval', 'setImmediate', 'clearTimeout', 'clearInterval', 'clearImmediate',
  'queueMicrotask', 'process', 'fetch', 'performance', 'Promise', 'Date', 'require', 'Buffer',
  'crypto', 'console',
].map((name) => ({ name, message: `node-agent/src/core is deterministic and I/O-free: '${name}' belongs in an adapter or the driver.` }));

export default tseslint.config(
  { ignores: ['node_modules/**', 'bench/results/**', 'native/build/**', '**/*.d.ts'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: {
      globals: {
        process: 'readonly', console: 'readonly', setTimeout: 'readonly', clearTimeout: 'readonly',
        setInterval: 'readonly', clearInterval: 'readonly', Buffer: 'readonly', URL: 'readonly',
      },
    },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/no-non-null-assertion': 'off',
    },
  },
  {
    files: ['node-agent/src/core/**/*.ts'],
    ignores: ['node-agent/src/core/**/*.test.ts'],
    rules: {
      'no-restricted-globals': ['error', ...coreBannedGlobals],
      'no-restricted-imports': ['error', {
        patterns: [
          { group: ['node:*', 'fs', 'net', 'http', 'https', 'dgram', 'child_process', 'os', 'timers', 'timers/*', 'worker_threads', 'crypto', 'perf_hooks', 'events'], message: 'The protocol core is I/O-free: no Node built-ins.' },
          { group: ['../*', '!./*'], message: 'The core imports only from itself.' },
        ],
      }],
      'no-restricted-syntax': ['error',
        { selector: 'FunctionDeclaration[async=true], ArrowFunctionExpression[async=true], FunctionExpression[async=true]', message: 'No async code in the protocol core.' },
        { selector: 'AwaitExpression', message: 'No await in the protocol core.' },
        { selector: "MemberExpression[object.name='Math'][property.name='random']", message: 'No Math.random in the core: take an injected Prng.' },
        { selector: "NewExpression[callee.name='Date']", message: 'No clock in the core: time is ticks.' },
      ],
    },
  },
);
