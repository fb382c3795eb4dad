// Native tests of filter.js: `node --test` (no component, no broker). weir-testing.js
// runs the filter as the broker would; it must load before the filter and the SDK, so
// those are imported dynamically (static imports would be resolved first).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { logged, run } from './weir-testing.js';

const { ParamError } = await import('./weir-filter.js');
const { filter } = await import('./filter.js');

test('keeps the messages with the value', () => {
  const verdicts = run(filter, { property: 'region', value: 'eu' }, [
    { properties: { region: 'eu' } },
    { properties: { region: 'us' } },
    { tags: 'TagA' },
    { properties: [['tier', 'gold'], ['region', 'eu']] },
  ]);
  assert.deepEqual(verdicts, [true, false, false, true]);
  assert.deepEqual(logged, [['info', 'keeping messages whose property "region" is "eu"']]);
});

test('refuses missing and unknown parameters', () => {
  assert.throws(() => run(filter, { property: 'region' }, []), (e) => e instanceof ParamError && /missing parameter "value"/.test(e.message));
  assert.throws(() => run(filter, { property: 'region', value: 'eu', valeu: 'x' }, []), /unknown parameter "valeu"/);
});
